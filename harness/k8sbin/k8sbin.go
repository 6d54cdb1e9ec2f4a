// Package k8sbin finds the pinned Kubernetes binaries, building them into
// the cache outside the checkout when they are missing.
package k8sbin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DirEnv, when set, names a directory that already holds the binaries;
// `make` sets it after building them.
const DirEnv = "PROXYMODES_K8S_BIN"

// Path returns the path of a binary built by clusters/k8s/build.sh (for
// example "controlplane"). Build progress goes to progress.
func Path(name string, progress io.Writer) (string, error) {
	if dir := os.Getenv(DirEnv); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s but %s is missing: unset it or run `clusters/k8s/build.sh %s`", DirEnv, dir, name, name)
		}
		return p, nil
	}
	script, err := findBuildScript()
	if err != nil {
		return "", err
	}
	if progress == nil {
		progress = io.Discard
	}
	var out bytes.Buffer
	cmd := exec.Command(script, name)
	cmd.Stdout = &out
	cmd.Stderr = progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s with %s failed: %w (rerun it by hand to see the whole output)", name, script, err)
	}
	return filepath.Join(strings.TrimSpace(out.String()), name), nil
}

// findBuildScript walks up from the working directory, which is inside the
// checkout for both `go test` and the CLI run from the repository.
func findBuildScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "clusters", "k8s", "build.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find clusters/k8s/build.sh above the working directory: run from the proxymodes checkout, or set " + DirEnv + " to a directory holding the built Kubernetes binaries")
		}
		dir = parent
	}
}
