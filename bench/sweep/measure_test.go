package sweep

import (
	"net/netip"
	"testing"
)

func TestDispatchPositions(t *testing.T) {
	a, b, c := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.0.3")
	// kube-proxy's layout: each Service chain also names its VIP (the
	// masquerade rule), and the dispatch chain comes after them.
	dump := `*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SVC-B ! -s 198.18.64.0/18 -d 198.19.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-B -j KUBE-SEP-1
-A KUBE-SERVICES -d 198.19.0.9/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SERVICES -d 198.19.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-B
-A KUBE-SERVICES -d 198.19.0.2/32 -p udp -m udp --dport 53 -j KUBE-SVC-B2
-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A ! -s 198.18.64.0/18 -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
`
	got := dispatchPositions(dump, []netip.Addr{a, b, c})
	if len(got) != 2 || got[b] != 1 || got[a] != 3 {
		t.Errorf("positions %v, want %s at 1 and %s at 3 in KUBE-SERVICES, and no %s", got, b, a, c)
	}
}
