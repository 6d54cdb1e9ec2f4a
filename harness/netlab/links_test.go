package netlab

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
)

// A pod's gateway is its node's bridge. If the bridge's MAC followed its
// lowest port MAC (Linux's default), a new pod whose veth has a lower MAC
// would change the gateway MAC under every other pod, and their cached
// neighbour entries would send frames nowhere for up to 45 s.
func TestBridgeMACDoesNotFollowItsPorts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it creates a network namespace")
	}
	ns := "pm-test-netlab-br"
	_ = DeleteNS(ns)
	if err := CreateNS(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNS(ns) })

	gw := netip.MustParsePrefix("198.18.64.1/24")
	if err := Bridge(ns, "br0", gw); err != nil {
		t.Fatal(err)
	}
	want := MACFor(gw.Addr())
	check := func(when string) {
		t.Helper()
		var got net.HardwareAddr
		err := WithHandle(ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName("br0")
			if err != nil {
				return err
			}
			got = l.Attrs().HardwareAddr
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Fatalf("%s: bridge MAC %s, want the fixed %s", when, got, want)
		}
	}
	check("created")
	// A port with a MAC below any other: the bridge would adopt it.
	low := End{NS: ns, Name: "vlow0", MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}}
	if err := Veth(low, End{NS: ns, Name: "vlow1"}); err != nil {
		t.Fatal(err)
	}
	if err := Enslave(ns, "vlow0", "br0"); err != nil {
		t.Fatal(err)
	}
	check("after a port with a lower MAC joined")
	if err := DeleteLink(ns, "vlow0"); err != nil {
		t.Fatal(err)
	}
	check("after that port left")

	if err := Bridge(ns, "br1", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if a, b := macForName(ns+"/br1"), macForName(ns+"/br0"); a.String() == b.String() {
		t.Errorf("two bridges of one namespace share MAC %s", a)
	}
}

// Without hairpin mode on a pod's port, a pod cannot reach itself through
// its Service wherever br_netfilter is loaded (see Hairpin); the
// conformance suite's hairpin assessment failed that way in the lab.
func TestHairpinSetsThePortMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it creates a network namespace")
	}
	ns := "pm-test-netlab-hp"
	_ = DeleteNS(ns)
	if err := CreateNS(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNS(ns) })
	if err := Bridge(ns, "br0", netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if err := Veth(End{NS: ns, Name: "vp0"}, End{NS: ns, Name: "vp1"}); err != nil {
		t.Fatal(err)
	}
	if err := Enslave(ns, "vp0", "br0"); err != nil {
		t.Fatal(err)
	}
	if err := Hairpin(ns, "vp0"); err != nil {
		t.Fatal(err)
	}
	err := WithHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName("vp0")
		if err != nil {
			return err
		}
		pi, err := h.LinkGetProtinfo(l)
		if err != nil {
			return err
		}
		if !pi.Hairpin {
			t.Errorf("vp0: hairpin mode off after Hairpin: %+v", pi)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
