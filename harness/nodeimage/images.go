package nodeimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/docker"
)

// Base returns proxymodes/base:bookworm-<hash>, the debootstrap root file
// system with every mode's rule tools (iptables, nftables, ipset, ipvsadm,
// conntrack, iproute2, kmod), importing it into d when missing. Images
// that program rules build FROM it with no network.
func Base(ctx context.Context, d *docker.Daemon, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	tar, err := ensureRootfs(ctx, "base", basePackages, progress)
	if err != nil {
		return "", err
	}
	tag := "proxymodes/base:" + strings.TrimPrefix(strings.TrimSuffix(filepath.Base(tar), ".tar"), "base-")
	if d.HasImage(ctx, tag) {
		return tag, nil
	}
	fmt.Fprintf(progress, "proxymodes: importing %s\n", tag)
	return tag, d.ImportOnto(ctx, tag, tar, nil,
		"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

// Proxier returns proxymodes/proxier:<hash>: clusters/proxier/Dockerfile
// built on Base with a static build of ./proxier/cmd/proxier.
func Proxier(ctx context.Context, d *docker.Daemon, progress io.Writer) (string, error) {
	return onBase(ctx, d, progress, "proxier", "proxier/cmd/proxier", "proxier")
}

// Echo returns proxymodes/echo:<hash>: clusters/echo/Dockerfile built on
// Base with a static build of the proxymodes CLI, playing the lab pods'
// echo backend (PROXYMODES_ROLE=backend; its flags are
// harness/backend.Config.Args) and the node agent on existing clusters.
func Echo(ctx context.Context, d *docker.Daemon, progress io.Writer) (string, error) {
	return onBase(ctx, d, progress, "echo", "harness/cmd/proxymodes", "proxymodes")
}

// onBase builds clusters/<name>/Dockerfile on Base with the static build
// of pkg as bin in the context. The tag's hash covers the binary, the
// Dockerfile and the base, so a code change makes a new tag and an
// unchanged tree reuses the image.
func onBase(ctx context.Context, d *docker.Daemon, progress io.Writer, name, pkg, bin string) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	base, err := Base(ctx, d, progress)
	if err != nil {
		return "", err
	}
	root, err := binaries.ModuleRoot()
	if err != nil {
		return "", err
	}
	built, err := binaries.Static(pkg, progress)
	if err != nil {
		return "", err
	}
	dockerfile := filepath.Join(root, "clusters", name, "Dockerfile")
	h := sha256.New()
	fmt.Fprintln(h, recipeVersion, base)
	for _, f := range []string{built, dockerfile} {
		if err := hashFile(h, f); err != nil {
			return "", err
		}
	}
	tag := "proxymodes/" + name + ":" + hex.EncodeToString(h.Sum(nil))[:12]
	if d.HasImage(ctx, tag) {
		return tag, nil
	}
	dir, err := os.MkdirTemp("", "pm-"+name+"-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	if err := copyFile(built, filepath.Join(dir, bin)); err != nil {
		return "", err
	}
	fmt.Fprintf(progress, "proxymodes: building %s\n", tag)
	// The Debian CLI's classic builder: the context is this directory
	// alone, and FROM resolves the local base without a registry.
	if err := d.Run(ctx, nil, "build", "--build-arg", "BASE="+base, "-f", dockerfile, "-t", tag, dir); err != nil {
		return "", err
	}
	return tag, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
