package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestSourceAddress(t *testing.T) {
	testenv.Test(t, sourceAddress())
}

// sourceN connections per client, protocol and path. Every one must show
// the promised source, so a proxy that breaks the promise on one path in
// ten still fails with probability above 1-0.9^40 = 0.985 per path (on
// both paths of every case: 0.9997). Each case has two backends, one per
// node, and must reach both: a random choice misses one with probability
// 2*2^-40 = 1.8e-12, so over the 12 probe sets of the feature the false
// failure probability stays below 3e-11 (0 under round-robin).
const sourceN = 40

// sourceAddress: which source address a backend sees. Upstream's
// service.go checks that a pod "gets a reply through its own Service"
// (hairpin) without looking at the source, and that the echoed address
// equals the client pod's through a ClusterIP; NodePort sources it does not
// check. Here every connection's source is checked, over TCP and UDP, on
// paths to a local and a remote backend, and the rows say what each mode
// promises (promise.PodSourceKept).
func sourceAddress() types.Feature {
	return suite.NewFeature("source address", "source-ip",
		"a backend sees the promised source: the client pod's through a ClusterIP, its node's for hairpin and NodePort traffic").
		Assess("a pod reaches itself through its own Service (hairpin) and sees an address of its node", func(ctx context.Context, a *suite.A) {
			// One single-backend Service per node: every connection is
			// hairpin, and both nodes' rules are exercised.
			// The fixture places its backends on the nodes in turn.
			for i := range a.Cluster.Info().Nodes {
				group := fmt.Sprintf("hairpin-%d", i)
				pod := a.Fixture.BackendGroup(a, 1, group)[0]
				svc := a.Fixture.Service(a, suite.ServiceOptions{Name: group, Selector: a.Fixture.GroupSelector(group)})
				node := nodeAddrs(a, pod.Node)
				for _, tg := range bothProtocols(pod.NS, svc) {
					checkSources(a, fmt.Sprintf("%s reaches itself through %s", pod.Name, tg), tg, []cluster.Pod{pod},
						fmt.Sprintf("an address of its node %s, not its own %s", pod.Node, pod.IP),
						func(src netip.Addr) bool { return src != pod.IP && slices.Contains(node, src) })
				}
			}
		}).
		Assess("a backend reached through a ClusterIP sees the client pod's address (kernel modes) or the client node's (userspace)", func(ctx context.Context, a *suite.A) {
			pods := a.Fixture.BackendGroup(a, 2, "clusterip")
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "clusterip", Selector: a.Fixture.GroupSelector("clusterip")})
			for _, c := range clients(a, 2) {
				want, ok := fmt.Sprintf("the client pod's own address %s", c.IP), func(src netip.Addr) bool { return src == c.IP }
				if !a.Promise.PodSourceKept {
					node := nodeAddrs(a, c.Node)
					want = fmt.Sprintf("an address of the client's node %s (%s opens its own connection to the backend)", c.Node, a.Promise.Mode)
					ok = func(src netip.Addr) bool { return slices.Contains(node, src) }
				}
				for _, tg := range bothProtocols(c.NS, svc) {
					checkSources(a, fmt.Sprintf("%s -> %s", c.Name, tg), tg, pods, want, ok)
				}
			}
		}).
		Assess("a NodePort (externalTrafficPolicy=Cluster) reached from another node is SNATed to the node that took the connection", func(ctx context.Context, a *suite.A) {
			nodes := a.Cluster.Info().Nodes
			if len(nodes) < 2 {
				a.Skipf("needs 2 nodes, the cluster has %d", len(nodes))
			}
			// One Service and backend pair per direction, as in the
			// NodePort feature (IPVS confuses directions sharing backends).
			for i, from := range nodes {
				to := nodes[(i+1)%len(nodes)]
				group := "np-src-" + from.Name
				pods := a.Fixture.BackendGroup(a, 2, group)
				svc := a.Fixture.Service(a, suite.ServiceOptions{Name: group, NodePort: true, Selector: a.Fixture.GroupSelector(group)})
				node := nodeAddrs(a, to.Name)
				for _, pp := range []struct {
					proto probe.Proto
					port  string
				}{{probe.TCP, "tcp"}, {probe.UDP, "udp"}} {
					tg := probe.Target{NS: from.NS, Addr: netip.AddrPortFrom(to.IP, suite.NodePort(svc, pp.port)), Proto: pp.proto}
					checkSources(a, fmt.Sprintf("%s -> %s's NodePort %s", from.Name, to.Name, tg), tg, pods,
						fmt.Sprintf("an address of %s, the node that took the connection (not the client %s)", to.Name, from.IP),
						func(src netip.Addr) bool { return slices.Contains(node, src) })
				}
			}
		}).Feature()
}

// bothProtocols returns a TCP and a UDP target for a Service's ClusterIP.
func bothProtocols(from string, svc *corev1.Service) []probe.Target {
	return []probe.Target{tcpTo(from, svc), {NS: from, Addr: suite.VIP(svc, suite.UDPPort), Proto: probe.UDP}}
}

// checkSources waits until tg reaches every one of pods, then opens sourceN
// connections: each must succeed, every pod must serve one, and each
// backend must report a source that ok accepts (want says which).
func checkSources(a *suite.A, what string, tg probe.Target, pods []cluster.Pod, want string, ok func(netip.Addr) bool) {
	a.Helper()
	names := suite.Names(pods)
	waitServedByAll(a, what+" reaches "+fmt.Sprint(names), tg, names)
	s := a.Probe(tg, sourceN, quick)
	seen := map[string]int{}
	var bad []string
	for _, r := range s.Results {
		if r.Err != nil {
			continue
		}
		src, err := netip.ParseAddrPort(r.Client)
		seen[r.Backend+"<-"+src.Addr().String()]++
		if err != nil || !ok(src.Addr()) {
			bad = append(bad, fmt.Sprintf("%s saw %q", r.Backend, r.Client))
		}
	}
	a.Evidence("%s: %s", what, tally(seen))
	if e := s.Errors(); len(e) > 0 {
		a.Fatalf("%s: %d of %d connections failed (first: %v)", what, len(e), sourceN, e[0])
	}
	if !suite.ServedBy(s, names...) {
		a.Fatalf("%s: %d connections did not reach every backend: %s", what, sourceN, suite.Distribution(s, names))
	}
	if len(bad) > 0 {
		a.Fatalf("%s: %d of %d connections showed the backend a source other than %s: %s", what, len(bad), sourceN, want, short(bad, 4))
	}
}

// nodeAddrs lists the addresses bound in a node's namespace.
func nodeAddrs(a *suite.A, node string) []netip.Addr {
	a.Helper()
	addrs, err := suite.NodeAddrs(a.Ctx, a.Cluster, nodeNS(a, node))
	if err != nil {
		a.Fatalf("reading %s's addresses: %v", node, err)
	}
	return addrs
}
