package local

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
	"github.com/proxymodes/proxymodes/harness/netlab"
)

var _ cluster.OutsideClient = (*Lab)(nil)

// Outside implements cluster.OutsideClient: the namespace that holds the
// bridge joining the nodes' fabric interfaces, on the host in both
// layouts, with addrplan.Outside on the bridge.
func (l *Lab) Outside() (string, netip.Addr) {
	if gs, ok := l.plane.(*guests); ok {
		return gs.ns, addrplan.Outside().Addr()
	}
	return plane.FabricNS(l.prefix), addrplan.Outside().Addr()
}

// RouteOutside implements cluster.OutsideClient.
func (l *Lab) RouteOutside(ctx context.Context, dst netip.Prefix, node string) error {
	if !addrplan.External.Contains(dst.Addr()) || dst.Bits() < addrplan.External.Bits() {
		return fmt.Errorf("route %s from the outside client: only addresses in %s (addrplan.External) are routed to nodes", dst, addrplan.External)
	}
	ns, _ := l.Outside()
	for _, n := range l.Info().Nodes {
		if n.Name == node {
			return netlab.RouteReplace(ns, dst, n.IP, "")
		}
	}
	return fmt.Errorf("route %s from the outside client: no node %q in lab %s", dst, node, l.Info().Name)
}
