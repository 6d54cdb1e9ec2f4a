// Package uml runs programs inside a user-mode Linux guest. The lab needs it
// where the host kernel lacks a feature a proxy mode uses (ip_vs here).
//
// The guest boots Debian's user-mode-linux kernel with the host's root file
// system mounted read-only through hostfs under a tmpfs overlay, so any host
// binary (a test binary, the proxier) runs in the guest unchanged. A boot,
// run and power-off cycle takes about a second.
//
// Debian bookworm's UML 6.1 cannot boot on hosts whose CPUs have AVX-512:
// its fixed-size FPU buffer makes PTRACE_SETREGSET fail with EFAULT ("ptrace
// set fp regs failed, errno = 14"). Newer UML kernels size that buffer from
// the host, so the harness takes user-mode-linux from Debian forky, with
// forky's libc6 beside it (bookworm's is too old), through a private apt
// configuration that verifies Debian's signatures and never touches the
// host's package state. The binary's ELF interpreter is rewritten to a
// relative path so it loads that libc without installing anything.
package uml

import (
	"bytes"
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

// Suite is the Debian suite the kernel comes from.
const Suite = "forky"

// loaderLink is the relative ELF interpreter written into linux.uml; Run
// starts the kernel in its directory.
const loaderLink = "./.pm-ld.so"

// Kernel is an unpacked, runnable UML kernel.
type Kernel struct {
	Dir       string `json:"dir"`
	Binary    string `json:"binary"`  // patched linux.uml
	LibDir    string `json:"libDir"`  // the libc it loads
	ModDir    string `json:"modDir"`  // lib/modules/<version>
	Version   string `json:"version"` // kernel release, e.g. 7.2.7
	Package   string `json:"package"` // e.g. user-mode-linux 7.2um1 (Debian forky)
	Initrd    string `json:"initrd"`
	BusyBox   string `json:"busybox"`
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
		if json.Unmarshal(b, &k) == nil && exists(k.Binary, k.Initrd, k.ModDir, filepath.Join(k.Dir, loaderLink)) {
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
	log.Logf("proxymodes: fetching user-mode-linux and its libc6 from Debian %s into %s (once, about 40 MB)", Suite, dir)
	debs, err := download(ctx, dir)
	if err != nil {
		return nil, err
	}
	k, err := unpack(dir, debs)
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

// download fetches the two packages with apt, configured to use only a
// private source list, list directory and cache under dir.
func download(ctx context.Context, dir string) (map[string]string, error) {
	apt := filepath.Join(dir, "apt")
	dl := filepath.Join(dir, "debs")
	for _, d := range []string{filepath.Join(apt, "lists", "partial"), filepath.Join(apt, "cache", "archives", "partial"), dl} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	src := filepath.Join(apt, "sources.list")
	line := "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian " + Suite + " main\n"
	if err := os.WriteFile(src, []byte(line), 0o644); err != nil {
		return nil, err
	}
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + src, "-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(apt, "lists"), "-o", "Dir::Cache=" + filepath.Join(apt, "cache"),
		"-o", "APT::Get::List-Cleanup=0", "-o", "APT::Sandbox::User=root",
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", append(opts, args...)...)
		cmd.Dir = dl
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("update"); err != nil {
		return nil, err
	}
	old, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	for _, f := range old {
		os.Remove(f)
	}
	if err := run("download", "user-mode-linux", "libc6"); err != nil {
		return nil, err
	}
	debs := map[string]string{}
	for _, name := range []string{"user-mode-linux", "libc6"} {
		m, _ := filepath.Glob(filepath.Join(dl, name+"_*.deb"))
		if len(m) != 1 {
			return nil, fmt.Errorf("apt-get download left %d files for %s in %s", len(m), name, dl)
		}
		debs[name] = m[0]
	}
	return debs, nil
}

func unpack(dir string, debs map[string]string) (*Kernel, error) {
	pkgVer := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(debs["user-mode-linux"]), "user-mode-linux_"), "_amd64.deb")
	kdir := filepath.Join(dir, pkgVer)
	os.RemoveAll(kdir)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, err
	}
	for name, into := range map[string]string{"user-mode-linux": "root", "libc6": "libc"} {
		if out, err := exec.Command("dpkg-deb", "-x", debs[name], filepath.Join(kdir, into)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[name], err, out)
		}
	}
	mods, _ := filepath.Glob(filepath.Join(kdir, "root", "usr", "lib", "uml", "modules", "*"))
	if len(mods) != 1 {
		return nil, fmt.Errorf("expected one module tree in %s, found %v", kdir, mods)
	}
	k := &Kernel{
		Dir:     kdir,
		Binary:  filepath.Join(kdir, "linux.uml"),
		LibDir:  filepath.Join(kdir, "libc", "usr", "lib", "x86_64-linux-gnu"),
		ModDir:  mods[0],
		Version: filepath.Base(mods[0]),
		Package: "Debian " + Suite + " user-mode-linux " + pkgVer,
	}
	if err := patchInterpreter(filepath.Join(kdir, "root", "usr", "bin", "linux.uml"), k.Binary, loaderLink); err != nil {
		return nil, err
	}
	if err := os.Symlink(filepath.Join(k.LibDir, "ld-linux-x86-64.so.2"), filepath.Join(kdir, loaderLink)); err != nil {
		return nil, err
	}
	return k, nil
}

// patchInterpreter copies an ELF executable and rewrites its PT_INTERP
// path in place; the new path must fit in the old one's space.
func patchInterpreter(src, dst, interp string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		if uint64(len(interp)+1) > p.Filesz {
			return fmt.Errorf("interpreter %q does not fit in %d bytes", interp, p.Filesz)
		}
		seg := b[p.Off : p.Off+p.Filesz]
		for i := range seg {
			seg[i] = 0
		}
		copy(seg, interp)
		return os.WriteFile(dst, b, 0o755)
	}
	return fmt.Errorf("%s has no PT_INTERP header", src)
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
