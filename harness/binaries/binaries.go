// Package binaries finds the programs a lab runs: the pinned Kubernetes
// binaries (built into the cache by clusters/k8s/build.sh) and this
// project's own commands (built with go build into the cache). Both build
// on first use and are reused afterwards.
package binaries

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// K8sDirEnv, when set, names a directory that already holds the Kubernetes
// binaries; `make` sets it after building them.
const K8sDirEnv = "PROXYMODES_K8S_BIN"

// CacheEnv overrides the cache directory (default /var/cache/proxymodes).
const CacheEnv = "PROXYMODES_CACHE"

const modulePath = "github.com/proxymodes/proxymodes"

// Kubernetes returns the path of a binary built by clusters/k8s/build.sh
// (for example "controlplane"). Build progress goes to progress.
func Kubernetes(name string, progress io.Writer) (string, error) {
	if dir := os.Getenv(K8sDirEnv); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s but %s is missing: unset it or run `clusters/k8s/build.sh %s`", K8sDirEnv, dir, name, name)
		}
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "clusters", "k8s", "build.sh")
	var out bytes.Buffer
	cmd := exec.Command(script, name)
	cmd.Stdout = &out
	cmd.Stderr = orDiscard(progress)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s with %s failed: %w (rerun it by hand to see the whole output)", name, script, err)
	}
	return filepath.Join(strings.TrimSpace(out.String()), name), nil
}

// KubernetesDir builds the named binaries with clusters/k8s/build.sh (each
// once per version and source hash) and returns the directory that holds
// them; the directory's name carries that hash, so it keys caches built
// from the binaries.
func KubernetesDir(progress io.Writer, names ...string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "clusters", "k8s", "build.sh")
	var out bytes.Buffer
	cmd := exec.Command(script, names...)
	cmd.Stdout = &out
	cmd.Stderr = orDiscard(progress)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s with %s failed: %w (rerun it by hand to see the whole output)", strings.Join(names, " "), script, err)
	}
	return strings.TrimSpace(out.String()), nil
}

// Project builds one of this module's commands (for example
// "proxier/cmd/proxier") into the cache and returns its path. go build is
// incremental, so this costs about a second when nothing changed.
func Project(pkg string, progress io.Writer) (string, error) {
	return build(pkg, filepath.Base(pkg), false, progress)
}

// CacheDir is the cache directory: $PROXYMODES_CACHE or
// /var/cache/proxymodes.
func CacheDir() string { return cacheDir() }

func cacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return "/var/cache/proxymodes"
}

// ModuleRoot walks up from the working directory, which is inside the
// checkout both for `go test` and for the CLI run from the repository.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the proxymodes checkout above the working directory: run from inside it, or set " + K8sDirEnv + " to a directory holding the built Kubernetes binaries")
		}
		dir = parent
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// Static builds one of this module's commands without cgo into the cache
// (as <name>-static) and returns its path: for containers whose libc may
// differ from the host's.
func Static(pkg string, progress io.Writer) (string, error) {
	return build(pkg, filepath.Base(pkg)+"-static", true, progress)
}

// SelftestTag is the build tag that gives the proxier its
// --selftest-fault flag (proxier/fault).
const SelftestTag = "pm_selftest"

// Selftest builds one of this module's commands with SelftestTag into the
// cache (as <name>-selftest): a proxier that can break a promise on
// purpose, for make selftest. The shipped binary is never built this way.
func Selftest(pkg string, progress io.Writer) (string, error) {
	return build(pkg, filepath.Base(pkg)+"-selftest", false, progress, "-tags", SelftestTag)
}

// CheckoutKey names a checkout's own directory of built commands under
// the cache's bin/: the first 12 hex digits of the SHA-256 of its root
// path (the Makefile derives the same from $(CURDIR)). Two checkouts that
// run at once (a clean clone's make test beside a working tree) must not
// replace each other's binaries: a proxier restarted in the middle of a
// run would be another checkout's.
func CheckoutKey(root string) string {
	sum := sha256.Sum256([]byte(root))
	return hex.EncodeToString(sum[:])[:12]
}

func build(pkg, name string, static bool, progress io.Writer, flags ...string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir(), "bin", CheckoutKey(root), name)
	args := append(append([]string{"build", "-o", out}, flags...), "./"+pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if static {
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	var stderr bytes.Buffer
	cmd.Stderr = io.MultiWriter(&stderr, orDiscard(progress))
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./%s (static %v) failed: %w\n%s", pkg, static, err, stderr.String())
	}
	return out, nil
}
