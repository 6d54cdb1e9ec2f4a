package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestNodePort(t *testing.T) {
	testenv.Test(t, nodePort())
}

// nodePort: NodeIP:nodePort on one node reaches every backend when probed
// from another node's namespace, over TCP and UDP.
//
// Each direction has its own Service and backends. With one set shared,
// IPVS lost connections to a collision that the check itself set up
// (kube-proxy ipvs, 2026-12-03): node-1 had connected to node-2's NodePort
// from port p, so node-2's IPVS table held (node-1:p, backend b). Then
// node-1 forwarded a connection for its own NodePort to b and masqueraded
// it to the random port p. b's SYN-ACK to node-1:p passed node-2's IPVS,
// which took it for a reply of the old connection and rewrote its source to
// node-2's NodePort, so node-1 never saw it. That is IPVS's limit, not the
// NodePort promise; separate backends keep the directions apart.
func nodePort() types.Feature {
	return suite.NewFeature("NodePort", "nodeport",
		"a NodePort reaches the backends from another node").
		Assess("NodeIP:nodePort reaches every backend from another node (TCP and UDP)", func(ctx context.Context, a *suite.A) {
			nodes := a.Cluster.Info().Nodes
			if len(nodes) < 2 {
				a.Skipf("needs 2 nodes, the cluster has %d", len(nodes))
			}
			names := make([][]string, len(nodes))
			svcs := make([]*corev1.Service, len(nodes))
			for i, from := range nodes {
				group := "from-" + from.Name
				names[i] = suite.Names(a.Fixture.BackendGroup(a, 3, group))
				svcs[i] = a.Fixture.Service(a, suite.ServiceOptions{Name: "np-" + group, NodePort: true, Selector: a.Fixture.GroupSelector(group)})
			}
			for i, from := range nodes {
				to := nodes[(i+1)%len(nodes)]
				for _, pp := range []struct {
					proto probe.Proto
					port  string
				}{{probe.TCP, "tcp"}, {probe.UDP, "udp"}} {
					np := suite.NodePort(svcs[i], pp.port)
					tg := probe.Target{NS: from.NS, Addr: netip.AddrPortFrom(to.IP, np), Proto: pp.proto}
					waitServedByAll(a, fmt.Sprintf("%s -> %s:%d/%s reaches all backends", from.Name, to.Name, np, pp.proto), tg, names[i])
					// Reachability, not latency: room for two SYN
					// retransmits (IPVS drops a SYN that reuses the source
					// port of a connection it still tracks, and kube-proxy's
					// syncs stall the UML guest's one CPU).
					s := a.Probe(tg, 60, 5*time.Second)
					a.Evidence("%s -> %s %s:%d/%s: %s", from.Name, to.Name, to.IP, np, pp.proto, suite.Distribution(s, names[i]))
					if e := s.Errors(); len(e) > 0 {
						a.Errorf("%s -> %s:%d/%s: %d of 60 connections failed (first: %v)", from.Name, to.Name, np, pp.proto, len(e), e[0])
					}
				}
			}
		}).Feature()
}
