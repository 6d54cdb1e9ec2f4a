package nodeimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
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
// built on Base with a static build of ./proxier/cmd/proxier. The hash
// covers the binary, the Dockerfile and the base, so a code change makes
// a new tag and an unchanged tree reuses the image.
func Proxier(ctx context.Context, d *docker.Daemon, progress io.Writer) (string, error) {
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
	dir, err := os.MkdirTemp("", "pm-proxier-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "proxier")
	if err := staticBuild(ctx, root, "./proxier/cmd/proxier", bin); err != nil {
		return "", err
	}
	dockerfile := filepath.Join(root, "clusters", "proxier", "Dockerfile")
	h := sha256.New()
	fmt.Fprintln(h, recipeVersion, base)
	for _, f := range []string{bin, dockerfile} {
		if err := hashFile(h, f); err != nil {
			return "", err
		}
	}
	tag := "proxymodes/proxier:" + hex.EncodeToString(h.Sum(nil))[:12]
	if d.HasImage(ctx, tag) {
		return tag, nil
	}
	fmt.Fprintf(progress, "proxymodes: building %s\n", tag)
	// The Debian CLI's classic builder: the context is this directory
	// alone, and FROM resolves the local base without a registry.
	if err := d.Run(ctx, nil, "build", "--build-arg", "BASE="+base, "-f", dockerfile, "-t", tag, dir); err != nil {
		return "", err
	}
	return tag, nil
}

// Echo returns proxymodes/echo:<hash>: a static build of the proxymodes
// CLI alone in an image, playing the lab pods' echo backend
// (PROXYMODES_ROLE=backend; its flags are harness/backend.Config.Args).
func Echo(ctx context.Context, d *docker.Daemon, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	root, err := binaries.ModuleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "pm-echo-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "proxymodes")
	if err := staticBuild(ctx, root, "./harness/cmd/proxymodes", bin); err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintln(h, recipeVersion)
	if err := hashFile(h, bin); err != nil {
		return "", err
	}
	tag := "proxymodes/echo:" + hex.EncodeToString(h.Sum(nil))[:12]
	if d.HasImage(ctx, tag) {
		return tag, nil
	}
	fmt.Fprintf(progress, "proxymodes: building %s\n", tag)
	return tag, d.Import(ctx, tag, append(minimalEtc(), docker.File{Path: "/proxymodes", Src: bin, Mode: 0o755}),
		"ENV PROXYMODES_ROLE=backend", `ENTRYPOINT ["/proxymodes"]`)
}

func staticBuild(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("CGO_ENABLED=0 go build %s: %v: %s", pkg, err, b)
	}
	return nil
}
