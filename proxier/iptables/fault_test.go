//go:build pm_selftest

package iptables

import (
	"maps"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// hairpin-not-masqueraded leaves a pod's packet to its own Service
// unmarked, so nothing SNATs it; pod-source-masqueraded marks every pod's
// packet to a cluster IP. The suite's source-address feature must catch
// both.
func TestSourceFaults(t *testing.T) {
	b := twoServices()
	name := firstWithEndpoints(b.Snap, 1)
	ep := core.UsableEndpoints(b.Snap.Endpoints[name])[0]
	vip := b.Snap.Services[name].ClusterIP
	marked := func(p Packet) bool {
		t.Helper()
		px, fake := newFakeProxier(t)
		if err := px.Sync(b.Snap, fullSync()); err != nil {
			t.Fatal(err)
		}
		outs, err := fake.Trace("nat", "PREROUTING", p)
		if err != nil || len(outs) != 1 {
			t.Fatalf("trace %+v: %v %v", p, outs, err)
		}
		return outs[0].Mark&masqMark != 0
	}
	hairpin := Packet{Protocol: "tcp", Src: ep.IP, Dst: vip, DstPort: 80}
	other := Packet{Protocol: "tcp", Src: podClient, Dst: vip, DstPort: 80}
	if !marked(hairpin) || marked(other) {
		t.Fatal("unbroken: a hairpin packet must be marked for SNAT and another pod's not")
	}
	t.Cleanup(fault.Set(fault.HairpinNotMasqueraded))
	if marked(hairpin) {
		t.Error("hairpin-not-masqueraded: the hairpin packet is still marked for SNAT")
	}
	// MasqueradeAll is the binary's flag: the fault sets it there.
	fault.Set(fault.PodSourceMasqueraded)
	if !fault.MasqueradeAll(false) || !fault.Hairpin() {
		t.Error("pod-source-masqueraded: --masquerade-all is not forced on, or hairpin changed")
	}
}

// A proxier started over the rules of an earlier one (a restart) removes
// the chains of a Service deleted while it was down; with
// kernel-state-forgotten it removes only chains it created itself, and the
// suite's restart feature must catch the stale ones.
func TestFaultKernelStateForgotten(t *testing.T) {
	b := twoServices()
	gone := firstWithEndpoints(b.Snap, 1)
	chain := serviceChainName(gone)
	restartWithout := func() string {
		t.Helper()
		first, fake := newFakeProxier(t)
		if err := first.Sync(b.Snap, fullSync()); err != nil {
			t.Fatal(err)
		}
		snap := *b.Snap
		snap.Services = maps.Clone(b.Snap.Services)
		delete(snap.Services, gone)
		second, err := New(Config{Backend: fake, ClusterCIDR: testsnap.ClusterCIDR})
		if err != nil {
			t.Fatal(err)
		}
		if err := second.Sync(&snap, fullSync()); err != nil {
			t.Fatal(err)
		}
		return fake.Dump()
	}
	if dump := restartWithout(); strings.Contains(dump, chain) {
		t.Fatalf("unbroken: after a restart the deleted Service's chain %s remains:\n%s", chain, dump)
	}
	t.Cleanup(fault.Set(fault.KernelStateForgotten))
	if dump := restartWithout(); !strings.Contains(dump, chain) {
		t.Errorf("kernel-state-forgotten: the restarted proxier still removed %s", chain)
	}
}
