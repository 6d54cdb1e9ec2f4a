package core

import (
	"net/netip"
	"testing"
)

func TestSourceRangesAdmitNode(t *testing.T) {
	s := &ServicePort{LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("198.18.232.0/24"), netip.MustParsePrefix("198.18.16.0/28")}}
	for _, c := range []struct {
		node []netip.Addr
		want bool
	}{
		{[]netip.Addr{netip.MustParseAddr("198.18.232.2")}, true},
		{[]netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.16.15")}, true},
		{[]netip.Addr{netip.MustParseAddr("198.18.16.16")}, false},
		{nil, false},
	} {
		if got := s.SourceRangesAdmitNode(c.node); got != c.want {
			t.Errorf("node %v: %v, want %v", c.node, got, c.want)
		}
	}
	if (&ServicePort{}).SourceRangesAdmitNode([]netip.Addr{netip.MustParseAddr("198.18.232.2")}) {
		t.Error("no ranges admitted the node: without ranges there is no firewall to pass")
	}
}
