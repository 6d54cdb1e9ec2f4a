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

// TestOutsideAndExternalStayApart: the outside client is on the fabric
// but no node's address, and the external block overlaps nothing the lab
// routes elsewhere (nodes, pods, Services, management, Docker).
func TestOutsideAndExternalStayApart(t *testing.T) {
	out := Outside()
	if !Fabric.Contains(out.Addr()) || out.Bits() != Fabric.Bits() {
		t.Fatalf("outside client %s is not an address of the fabric %s", out, Fabric)
	}
	for k := 0; k < MaxNodes; k++ {
		if NodeIP(k).Addr() == out.Addr() {
			t.Fatalf("node %d has the outside client's address %s", k, out.Addr())
		}
	}
	if !Lab.Contains(External.Addr()) {
		t.Fatalf("external block %s outside the lab %s", External, Lab)
	}
	for _, p := range []netip.Prefix{Fabric, Pods, Services, Mgmt, DockerPools, Docker0.Masked()} {
		if p.Overlaps(External) {
			t.Errorf("external block %s overlaps %s", External, p)
		}
	}
	if first, last := ExternalIP(0), ExternalIP(253); !External.Contains(first) || !External.Contains(last) || first == External.Addr() {
		t.Errorf("external addresses %s..%s do not fit %s without its network address", first, last, External)
	}
}
