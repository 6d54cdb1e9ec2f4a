package hostipvs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbe: each way a kernel can have ip_vs (loaded, built in, a module
// it could load) counts, and a kernel without any is named with where the
// probe looked.
func TestProbe(t *testing.T) {
	dir := t.TempDir()
	p := Probe{Proc: filepath.Join(dir, "proc"), LibModules: filepath.Join(dir, "lib/modules")}
	write := func(f, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if why := p.Missing(); !strings.Contains(why, "release is unknown") {
		t.Errorf("no osrelease: %q", why)
	}
	write(filepath.Join(p.Proc, "sys/kernel/osrelease"), "6.1.0-test\n")
	write(filepath.Join(p.Proc, "modules"), "nf_conntrack 1 0 - Live\n")
	if why := p.Missing(); !strings.Contains(why, "kernel 6.1.0-test has no ip_vs") {
		t.Errorf("no ip_vs: %q", why)
	}
	write(filepath.Join(p.LibModules, "6.1.0-test/kernel/net/netfilter/ipvs/ip_vs.ko.xz"), "")
	if why := p.Missing(); why != "" {
		t.Errorf("a loadable module: %q", why)
	}
	if p.Loaded() {
		t.Error("a module on disk counted as loaded")
	}
	q := Probe{Proc: p.Proc, LibModules: t.TempDir()}
	write(filepath.Join(q.Proc, "modules"), "ip_vs 1 0 - Live\n")
	if why := q.Missing(); why != "" || !q.Loaded() {
		t.Errorf("a loaded module: %q, loaded %v", why, q.Loaded())
	}
	r := Probe{Proc: t.TempDir(), LibModules: t.TempDir()}
	write(filepath.Join(r.Proc, "net/ip_vs"), "")
	if why := r.Missing(); why != "" || !r.Loaded() {
		t.Errorf("built in: %q, loaded %v", why, r.Loaded())
	}
}
