package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestNodePort(t *testing.T) {
	testenv.Test(t, nodePort())
}

// nodePort: NodeIP:nodePort on one node reaches every backend when probed
// from another node's namespace, over TCP and UDP.
func nodePort() types.Feature {
	return suite.NewFeature("NodePort", "nodeport",
		"a NodePort reaches the backends from another node").
		Assess("NodeIP:nodePort reaches every backend from another node (TCP and UDP)", func(ctx context.Context, a *suite.A) {
			nodes := a.Cluster.Info().Nodes
			if len(nodes) < 2 {
				a.Skipf("needs 2 nodes, the cluster has %d", len(nodes))
			}
			names := suite.Names(a.Fixture.Backends(a, 3))
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "np", NodePort: true})
			for i, from := range nodes {
				to := nodes[(i+1)%len(nodes)]
				for _, pp := range []struct {
					proto probe.Proto
					port  string
				}{{probe.TCP, "tcp"}, {probe.UDP, "udp"}} {
					np := suite.NodePort(svc, pp.port)
					tg := probe.Target{NS: from.NS, Addr: netip.AddrPortFrom(to.IP, np), Proto: pp.proto}
					waitServedByAll(a, fmt.Sprintf("%s -> %s:%d/%s reaches all backends", from.Name, to.Name, np, pp.proto), tg, names)
					// Reachability, not latency: room for two SYN
					// retransmits (IPVS drops a SYN that reuses the source
					// port of a connection it still tracks, and kube-proxy's
					// syncs stall the UML guest's one CPU).
					s := a.Probe(tg, 60, 5*time.Second)
					a.Evidence("%s -> %s %s:%d/%s: %s", from.Name, to.Name, to.IP, np, pp.proto, suite.Distribution(s, names))
					if e := s.Errors(); len(e) > 0 {
						a.Errorf("%s -> %s:%d/%s: %d of 60 connections failed (first: %v)", from.Name, to.Name, np, pp.proto, len(e), e[0])
					}
				}
			}
		}).Feature()
}
