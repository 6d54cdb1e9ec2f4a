package ipvs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Sysctl reads and writes kernel parameters by their /proc/sys path, e.g.
// "net/ipv4/ip_forward". ProcSysctl is the real one; FakeSysctl is a map.
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// requiredSysctls are the node-namespace settings IPVS mode depends on
// (the same ones kube-proxy sets).
var requiredSysctls = []struct{ name, value, why string }{
	{"net/ipv4/ip_forward", "1", "forward traffic to real servers"},
	{"net/ipv4/vs/conntrack", "1", "keep conntrack entries for IPVS connections, so iptables can masquerade them"},
	{"net/ipv4/vs/expire_nodest_conn", "1", "drop connections whose real server was deleted instead of blackholing them"},
	{"net/ipv4/vs/expire_quiescent_template", "1", "expire persistence templates of weight-0 real servers"},
	{"net/ipv4/conf/all/arp_ignore", "1", "do not answer ARP for VIPs bound to the dummy device"},
	{"net/ipv4/conf/all/arp_announce", "2", "do not announce VIPs as ARP sources"},
}

// ProcSysctl writes under /proc/sys. Network sysctls apply to the network
// namespace of the calling thread.
type ProcSysctl struct{}

var _ Sysctl = ProcSysctl{}

func procPath(name string) string { return filepath.Join("/proc/sys", filepath.Clean("/"+name)) }

// Get implements Sysctl.
func (ProcSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile(procPath(name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Set implements Sysctl.
func (ProcSysctl) Set(name, value string) error {
	return os.WriteFile(procPath(name), []byte(value+"\n"), 0o644)
}

// FakeSysctl is an in-memory Sysctl. Get of an unset name fails like a
// missing /proc file.
type FakeSysctl struct {
	mu     sync.Mutex
	Values map[string]string
}

// NewFakeSysctl returns an empty FakeSysctl.
func NewFakeSysctl() *FakeSysctl { return &FakeSysctl{Values: map[string]string{}} }

// Get implements Sysctl.
func (f *FakeSysctl) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.Values[name]
	if !ok {
		return "", fmt.Errorf("fake sysctl: %s: %w", name, os.ErrNotExist)
	}
	return v, nil
}

// Set implements Sysctl.
func (f *FakeSysctl) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Values[name] = value
	return nil
}

// EnsureSysctls sets every sysctl IPVS mode needs that is not already
// right. Settings that are right are only read: in an unprivileged
// container /proc/sys is read-only, so `proxier --init-only` sets them from
// a privileged init container and the long-running proxier just checks.
func EnsureSysctls(s Sysctl) error {
	for _, want := range requiredSysctls {
		if cur, err := s.Get(want.name); err == nil && cur == want.value {
			continue
		}
		if err := s.Set(want.name, want.value); err != nil {
			hint := ""
			if strings.HasPrefix(want.name, "net/ipv4/vs/") && errors.Is(err, fs.ErrNotExist) {
				hint = " (the kernel has no IPVS yet: load the ip_vs module on the host, modprobe ip_vs)"
			} else if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
				hint = " (/proc/sys is read-only in an unprivileged container: run `proxier --init-only --proxy-mode=ipvs` privileged first)"
			}
			return fmt.Errorf("setting %s=%s (needed to %s): %w%s", strings.ReplaceAll(want.name, "/", "."), want.value, want.why, err, hint)
		}
	}
	return nil
}
