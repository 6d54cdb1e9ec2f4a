package addrplan

import (
	"net/netip"
	"testing"
)

// TestGuestLabBlocksAreDistinct: in a UML lab of the largest size, block
// 0 (the API server's), the nodes' management blocks (from 1) and the
// guests' uplinks (from the top) never share a /30, and all lie in Mgmt.
func TestGuestLabBlocksAreDistinct(t *testing.T) {
	seen := map[netip.Prefix]string{MgmtHost(0).Masked(): "API server"}
	add := func(p netip.Prefix, what string) {
		t.Helper()
		if !Mgmt.Contains(p.Addr()) || p.Bits() != 30 {
			t.Fatalf("%s: %s is not a /30 in %s", what, p, Mgmt)
		}
		if prev, ok := seen[p.Masked()]; ok {
			t.Fatalf("%s and %s share %s", prev, what, p.Masked())
		}
		seen[p.Masked()] = what
	}
	for i := 0; i < MaxGuestNodes; i++ {
		add(MgmtNode(i+1), "node management block")
		add(GuestUplinkGuest(i), "guest uplink")
		if GuestUplinkHost(i).Masked() != GuestUplinkGuest(i).Masked() {
			t.Fatalf("guest %d: uplink ends %s and %s are not on one /30", i, GuestUplinkHost(i), GuestUplinkGuest(i))
		}
	}
	if got := GuestUplinkGuest(0); got.Addr() != netip.MustParseAddr("198.18.255.254") {
		t.Errorf("first guest's uplink %s, want 198.18.255.254 (the address the plan documents)", got)
	}
}
