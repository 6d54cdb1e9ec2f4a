package nodeimage

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Suite is the Debian release of every root file system built here; it is
// the host's release on these machines, so binaries linked against the
// host's glibc run in it.
const Suite = "bookworm"

// DebianKeyring verifies the Debian archive; Debian has it installed, and
// Ubuntu's package debian-archive-keyring puts it there too.
const DebianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// basePackages are what a proxy's image needs: the rule tools of every
// mode. minbase already has bash, coreutils, util-linux and mount.
var basePackages = []string{"iptables", "nftables", "ipset", "ipvsadm", "conntrack", "iproute2", "kmod", "procps"}

// nodePackages are kind v0.33's base image packages (images/base/Dockerfile)
// that bookworm has, plus containerd 1.6, runc and the CNI plugins, which
// kind builds from source and Debian packages.
var nodePackages = append([]string{
	"systemd", "containerd", "runc", "containernetworking-plugins",
	"ethtool", "util-linux", "mount", "libseccomp2", "ca-certificates", "jq", "bash",
}, basePackages...)

// rootfsKey names a root file system by its package list.
func rootfsKey(name string, pkgs []string) string {
	h := sha256.Sum256([]byte(recipeVersion + "\n" + Suite + "\n" + strings.Join(pkgs, ",")))
	return name + "-" + Suite + "-" + hex.EncodeToString(h[:])[:12]
}

// ensureRootfs returns a tar of a debootstrap root file system with pkgs,
// built once and kept under the cache.
func ensureRootfs(ctx context.Context, name string, pkgs []string, progress io.Writer) (string, error) {
	key := rootfsKey(name, pkgs)
	out := filepath.Join(CacheDir(), "rootfs", key+".tar")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	mirror, err := debianMirror()
	if err != nil {
		return "", err
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", fmt.Errorf("debootstrap is not installed: run `make deps` with the kind provider (proxymodes preflight --install --kind) or apt-get install debootstrap")
	}
	debs := filepath.Join(CacheDir(), "debs")
	work := filepath.Join(CacheDir(), "work", key)
	for _, d := range []string{debs, filepath.Dir(out)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	// A killed earlier build may have left a half-made tree.
	os.RemoveAll(work)
	defer os.RemoveAll(work)
	fmt.Fprintf(progress, "proxymodes: debootstrap %s root file system %s (%d packages, a few minutes)\n", Suite, key, len(pkgs))
	start := time.Now()
	// Its own mount and PID namespaces: the /proc and /sys that debootstrap
	// mounts in the tree, and any daemon a maintainer script starts, end
	// with it even when this run is killed.
	// Debian's keyring named outright: on an Ubuntu host (a hosted CI
	// runner) debootstrap would otherwise look for Ubuntu's.
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--pid", "--fork", "--kill-child",
		"debootstrap", "--variant=minbase", "--include="+strings.Join(pkgs, ","),
		"--keyring="+DebianKeyring, "--cache-dir="+debs, Suite, work, mirror)
	logPath := filepath.Join(CacheDir(), "rootfs", key+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("debootstrap %s failed: %w (log: %s; it needs apt's Debian mirror %s)", key, err, logPath, mirror)
	}
	// Package lists, docs and manuals are dead weight in every image.
	for _, g := range []string{"var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "var/log/*"} {
		ms, _ := filepath.Glob(filepath.Join(work, g))
		for _, m := range ms {
			os.RemoveAll(m)
		}
	}
	tmp := out + ".tmp"
	if b, err := exec.CommandContext(ctx, "tar", "--numeric-owner", "--xattrs", "-C", work, "-cf", tmp, ".").CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("tar of %s: %v: %s", work, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	fmt.Fprintf(progress, "proxymodes: built root file system %s in %s\n", key, time.Since(start).Round(time.Second))
	return out, nil
}

// debianMirror is the Debian archive apt already uses here, so the build
// reaches the same mirror as apt-get and no other host.
func debianMirror() (string, error) {
	if m := os.Getenv("PROXYMODES_DEBIAN_MIRROR"); m != "" {
		return m, nil
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		if m := mirrorFromDeb822(f); m != "" {
			return m, nil
		}
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		if m := mirrorFromList(f); m != "" {
			return m, nil
		}
	}
	return "", fmt.Errorf("no Debian %s mirror in apt's sources (an Ubuntu host has none): set PROXYMODES_DEBIAN_MIRROR to one, e.g. http://deb.debian.org/debian", Suite)
}

// mirrorFromDeb822 reads a .sources file for a stanza with Suites: <Suite>
// and Components: main.
func mirrorFromDeb822(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, stanza := range strings.Split(string(b), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if hasWord(fields["suites"], Suite) && hasWord(fields["components"], "main") && hasWord(fields["types"], "deb") {
			if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
				return uris[0]
			}
		}
	}
	return ""
}

func mirrorFromList(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		// deb [options] URI suite components...
		if len(w) < 4 || w[0] != "deb" {
			continue
		}
		w = w[1:]
		if strings.HasPrefix(w[0], "[") {
			for len(w) > 0 && !strings.HasSuffix(w[0], "]") {
				w = w[1:]
			}
			if len(w) > 0 {
				w = w[1:]
			}
		}
		if len(w) >= 3 && w[1] == Suite && hasWord(strings.Join(w[2:], " "), "main") {
			return w[0]
		}
	}
	return ""
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}
