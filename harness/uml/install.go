// Package uml runs programs inside a user-mode Linux guest. The lab needs it
// where the host kernel lacks a feature a proxy mode uses (ip_vs here).
//
// The guest boots Debian's user-mode-linux kernel (bookworm, 6.1: it has
// ip_vs, dummy, veth and legacy iptables) with the host's root file system
// mounted read-only through hostfs under a tmpfs overlay, so any host binary
// (a test binary, the proxier) runs in the guest unchanged. A boot, run and
// power-off cycle takes about a second.
//
// On CPUs with AVX-512 that kernel panics at boot ("ptrace set fp regs
// failed, errno = 14"): it reads the host's XSAVE state into a fixed
// 832-byte buffer, and the host rejects writing that back. The harness
// therefore starts it under a seccomp filter that fails
// PTRACE_GETREGSET(NT_X86_XSTATE), which makes UML fall back to the
// 512-byte FXSAVE format. That format does not carry the upper halves of
// AVX registers, so every guest program is told not to use AVX: glibc
// through GLIBC_TUNABLES, Go through GODEBUG=cpu.all=off (see guestEnv).
// Debian forky's UML 7.2 boots without this but is built without legacy
// iptables and without nf_tables for IPv4, so it cannot masquerade.
package uml

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/binaries"
)

// Kernel is an unpacked, runnable UML kernel.
type Kernel struct {
	Dir     string `json:"dir"`
	Binary  string `json:"binary"`  // patched linux.uml
	LibDir  string `json:"libDir"`  // the libc it loads
	ModDir  string `json:"modDir"`  // lib/modules/<version>
	Version string `json:"version"` // kernel release, e.g. 7.2.7
	Package string `json:"package"` // e.g. user-mode-linux 7.2um1 (Debian forky)
	Initrd  string `json:"initrd"`
	BusyBox string `json:"busybox"`
}

// String names the kernel for result records.
func (k *Kernel) String() string {
	return fmt.Sprintf("Linux %s (user-mode Linux, %s)", k.Version, k.Package)
}

// Logger receives what Ensure does.
type Logger interface {
	Logf(format string, args ...any)
}

func cacheDir() string {
	if d := os.Getenv(binaries.CacheEnv); d != "" {
		return filepath.Join(d, "uml")
	}
	return "/var/cache/proxymodes/uml"
}

// Ensure returns the cached kernel, downloading and unpacking it first if
// needed (about 40 MB, once).
func Ensure(ctx context.Context, log Logger) (*Kernel, error) {
	dir := cacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Test binaries of several packages may get here at once.
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, err
	}
	meta := filepath.Join(dir, "kernel.json")
	if b, err := os.ReadFile(meta); err == nil {
		var k Kernel
		if json.Unmarshal(b, &k) == nil && exists(k.Binary, k.Initrd, k.ModDir) {
			return &k, nil
		}
	}
	for _, tool := range []string{"apt-get", "dpkg-deb", "modprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the user-mode Linux lab needs %s: install it (on Debian: apt-get install -y kmod dpkg apt)", tool)
		}
	}
	bb, err := staticBusybox()
	if err != nil {
		return nil, err
	}
	log.Logf("proxymodes: fetching Debian's user-mode-linux into %s (once, about 40 MB)", dir)
	deb, err := download(ctx, dir)
	if err != nil {
		return nil, err
	}
	k, err := unpack(dir, deb)
	if err != nil {
		return nil, err
	}
	k.BusyBox = bb
	k.Initrd = filepath.Join(k.Dir, "initrd.gz")
	if err := writeInitrd(k.Initrd, bb); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	b, _ := json.MarshalIndent(k, "", "  ")
	if err := os.WriteFile(meta, b, 0o644); err != nil {
		return nil, err
	}
	log.Logf("proxymodes: user-mode Linux ready: %s", k)
	return k, nil
}

// download fetches the package with apt-get download (verified by apt),
// refreshing the package lists once if the mirror no longer has the
// version they name.
func download(ctx context.Context, dir string) (string, error) {
	dl := filepath.Join(dir, "debs")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	old, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	for _, f := range old {
		os.Remove(f)
	}
	get := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "-o", "APT::Sandbox::User=root", "download", "user-mode-linux")
		cmd.Dir = dl
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get download user-mode-linux: %v\n%s", err, out)
		}
		return nil
	}
	if err := get(); err != nil {
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("%v; apt-get update also failed: %v\n%s", err, uerr, out)
		}
		if err := get(); err != nil {
			return "", err
		}
	}
	m, _ := filepath.Glob(filepath.Join(dl, "user-mode-linux_*.deb"))
	if len(m) != 1 {
		return "", fmt.Errorf("apt-get download left %d user-mode-linux packages in %s", len(m), dl)
	}
	return m[0], nil
}

func unpack(dir, deb string) (*Kernel, error) {
	pkgVer := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(deb), "user-mode-linux_"), "_amd64.deb")
	kdir := filepath.Join(dir, pkgVer)
	os.RemoveAll(kdir)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.Command("dpkg-deb", "-x", deb, kdir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, out)
	}
	mods, _ := filepath.Glob(filepath.Join(kdir, "usr", "lib", "uml", "modules", "*"))
	if len(mods) != 1 {
		return nil, fmt.Errorf("expected one module tree in %s, found %v", kdir, mods)
	}
	return &Kernel{
		Dir:     kdir,
		Binary:  filepath.Join(kdir, "usr", "bin", "linux.uml"),
		ModDir:  mods[0],
		Version: filepath.Base(mods[0]),
		Package: "Debian user-mode-linux " + pkgVer,
	}, nil
}

// staticBusybox finds a statically linked busybox for the initramfs.
func staticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return p, nil
		}
	}
	return "", errors.New("the user-mode Linux lab needs a static busybox for its initramfs: apt-get install -y busybox-static")
}

func exists(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}
