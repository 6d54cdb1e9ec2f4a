//go:build pm_selftest

package ipvs

import (
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
)

// With ipvs-state-kept a deleted Service's virtual servers and VIPs stay
// in the kernel while its iptables rules go: the self-test needs a fault
// that only the IPVS cleanup assessment can see.
func TestIPVSStateKeptFault(t *testing.T) {
	t.Cleanup(fault.Set(fault.IPVSStateKept))

	e := newEnv(t)
	b, _ := webSnap()
	e.sync(t, b.Snap, fullSync())
	before := e.ipvs.Dump()
	if !strings.Contains(e.ipt.Dump(), "198.19.0.30") {
		t.Fatalf("the rules never held 198.19.0.30:\n%s", e.ipt.Dump())
	}
	np := core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "np"}, Port: "http", Protocol: v1.ProtocolTCP}
	delete(b.Snap.Services, np)
	delete(b.Snap.Endpoints, np)
	e.sync(t, b.Snap, partialSync("np"))
	if got := e.ipvs.Dump(); got != before {
		t.Errorf("the fault let IPVS state go:\n%s\nwant, as before the delete:\n%s", got, before)
	}
	if got := e.vips(t); !slices.Contains(got, "198.19.0.30") {
		t.Errorf("VIPs %v: the deleted Service's 198.19.0.30 was unbound", got)
	}
	if strings.Contains(e.ipt.Dump(), "198.19.0.30") {
		t.Errorf("the rules still hold the deleted Service, so the rules assessment would catch the fault first:\n%s", e.ipt.Dump())
	}
}

// hairpin-not-masqueraded drops the per-endpoint hairpin MASQUERADE rules
// and nothing else.
func TestHairpinFault(t *testing.T) {
	dump := func() string {
		e := newEnv(t)
		b, _ := webSnap()
		e.sync(t, b.Snap, fullSync())
		return e.ipt.Dump()
	}
	before := dump()
	if !strings.Contains(before, "proxymodes ipvs hairpin") {
		t.Fatalf("no hairpin rule to take away:\n%s", before)
	}
	t.Cleanup(fault.Set(fault.HairpinNotMasqueraded))
	after := dump()
	var kept []string
	for _, l := range strings.Split(before, "\n") {
		if !strings.Contains(l, "proxymodes ipvs hairpin") {
			kept = append(kept, l)
		}
	}
	if want := strings.Join(kept, "\n"); after != want {
		t.Errorf("with the fault the rules are\n%s\nwant the unbroken ones without the hairpin rules:\n%s", after, want)
	}
}
