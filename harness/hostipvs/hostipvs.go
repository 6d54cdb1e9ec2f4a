// Package hostipvs says whether the running kernel has IPVS. The local lab,
// kind, the benchmark and the nightly dry run each ask; they ask one probe
// so that their answers cannot drift apart.
package hostipvs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Probe reads a kernel's proc and module trees. The roots are fields so
// tests can point them at a fake tree.
type Probe struct {
	Proc, LibModules string
}

// Host probes the running kernel.
var Host = Probe{Proc: "/proc", LibModules: "/lib/modules"}

// Loaded reports whether ip_vs is in the kernel now: built in or loaded.
// kind needs this much: its nodes share the kernel but cannot load modules
// into it.
func (p Probe) Loaded() bool {
	if _, err := os.Stat(filepath.Join(p.Proc, "net/ip_vs")); err == nil {
		return true
	}
	b, err := os.ReadFile(filepath.Join(p.Proc, "modules"))
	return err == nil && bytes.Contains(b, []byte("ip_vs "))
}

// Missing says why ip_vs is not available, or "" when it is loaded, built
// in, or a module the kernel could load (the proxier loads it).
func (p Probe) Missing() string {
	if p.Loaded() {
		return ""
	}
	rel, err := os.ReadFile(filepath.Join(p.Proc, "sys/kernel/osrelease"))
	if err != nil {
		return fmt.Sprintf("the kernel's release is unknown (%v), so no ip_vs module can be found", err)
	}
	r := strings.TrimSpace(string(rel))
	dir := filepath.Join(p.LibModules, r, "kernel/net/netfilter/ipvs")
	if m, _ := filepath.Glob(filepath.Join(dir, "ip_vs.ko*")); len(m) > 0 {
		return ""
	}
	return fmt.Sprintf("kernel %s has no ip_vs: not built in (no %s), not loaded, and no module in %s", r, filepath.Join(p.Proc, "net/ip_vs"), dir)
}

// Available reports whether the running kernel has ip_vs or can load it.
func Available() bool { return Host.Missing() == "" }
