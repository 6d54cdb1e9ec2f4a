package local_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// TestGuestLab builds the nodes inside user-mode Linux guests, one per
// node, as the IPVS mode needs on hosts without ip_vs, and checks the same
// basics as the host-kernel lab: pods on different nodes (so different
// guests) reach each other, faults work, nothing routes out, and nothing
// is left after down.
func TestGuestLab(t *testing.T) {
	downShared()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l, err := local.Up(ctx, local.Options{Name: "lguest", Nodes: 2, Kernel: local.KernelUML, Logger: labtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Down(context.Background()); err != nil {
			t.Error(err)
		}
		expectNoLeftovers(t, "lguest")
	}()
	if k := l.Info().Kernel; !strings.Contains(k, "user-mode Linux") {
		t.Fatalf("lab reports kernel %q, want the UML guest", k)
	}
	a, err := l.AddPod(ctx, cluster.PodSpec{Name: "ga", Node: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AddPod(ctx, cluster.PodSpec{Name: "gb", Node: "node-2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, proto := range []probe.Proto{probe.TCP, probe.UDP} {
		s := l.Probe(ctx, probe.Target{NS: a.NS, Addr: netip.AddrPortFrom(b.IP, backend.TCPPort), Proto: proto}, 3, 5*time.Second)
		if c := s.Counts(); c[b.Name] != 3 {
			t.Fatalf("%s from %s to %s inside the guest: %s", proto, a, b, s)
		}
	}
	// What a run's sync log shows of the guests: one per node.
	g := l.GuestStats(ctx)
	for _, want := range []string{"node-1's guest: cpu ", "node-2's guest: cpu ", "from the host's"} {
		if !strings.Contains(g, want) {
			t.Fatalf("guest stats %q: want each guest's CPU use and clock offset (%q)", g, want)
		}
	}
	if err := l.Break(ctx, b, cluster.Blackhole); err != nil {
		t.Fatal(err)
	}
	s := l.Probe(ctx, probe.Target{NS: a.NS, Addr: netip.AddrPortFrom(b.IP, backend.TCPPort), Proto: probe.TCP}, 1, 700*time.Millisecond)
	if errs := s.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "deadline") && !strings.Contains(errs[0].Error(), "timeout") {
		t.Fatalf("black-holed pod in the guest: want a timeout, got %s", s)
	}
	if err := l.Restore(ctx, b); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{a.NS, l.Info().Nodes[0].NS} {
		for _, dst := range outside[:3] { // each exec costs about a second in the guest
			if out, err := l.Exec(ctx, ns, "ip", "route", "get", dst); err == nil {
				t.Errorf("%s in the guest routes %s: %s", ns, dst, out)
			}
		}
	}
}
