package conntrack

import (
	"net/netip"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/core"
)

type recordingDeleter struct{ got [][]Filter }

func (r *recordingDeleter) Delete(f []Filter) (uint, error) {
	r.got = append(r.got, f)
	return uint(len(f)), nil
}

func TestFiltersForStaleUDP(t *testing.T) {
	vip := netip.MustParseAddr("198.19.0.53")
	ep := netip.MustParseAddr("198.18.64.53")
	changes := core.ChangeSet{
		StaleUDPEndpoints:  []core.StaleUDPEndpoint{{ServiceIP: vip, Port: 53, NodePort: 30053, Endpoint: ep}},
		StaleUDPServiceIPs: []netip.Addr{netip.MustParseAddr("198.19.0.54")},
	}
	d := &recordingDeleter{}
	c := &UDPCleaner{Deleter: d}
	if err := c.ClearStale(changes); err != nil {
		t.Fatal(err)
	}
	want := []Filter{
		{OrigDst: vip, OrigDport: 53, ReplySrc: ep},   // service IP -> removed backend
		{OrigDport: 30053, ReplySrc: ep},              // NodePort -> removed backend
		{OrigDst: netip.MustParseAddr("198.19.0.54")}, // service that just got a backend
	}
	if len(d.got) != 1 || len(d.got[0]) != len(want) {
		t.Fatalf("got %+v", d.got)
	}
	for i := range want {
		if d.got[0][i] != want[i] {
			t.Errorf("filter %d: %+v, want %+v", i, d.got[0][i], want[i])
		}
	}
	// Nothing stale: no netlink call at all.
	if err := c.ClearStale(core.ChangeSet{}); err != nil || len(d.got) != 1 {
		t.Errorf("empty change set called the deleter")
	}
}
