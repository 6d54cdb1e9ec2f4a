package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestExternalTrafficPolicy(t *testing.T) {
	testenv.Test(t, externalTrafficPolicy())
}

// externalTrafficPolicy: upstream's "should work for type=NodePort" with
// Local (loadbalancer.go, service.go "should only target nodes with
// endpoints", "should preserve source pod IP") sends a few requests to a
// node with an endpoint and checks the client address, and reads the
// health check port once per node. Here a client from outside the cluster
// (another node's own address: neither a pod nor the node itself, which
// kube-proxy's iptables and nftables modes send to every endpoint) must
// reach exactly the target node's endpoints, each seeing the client's
// address, over sourceN connections per direction and protocol (missing
// one of two local endpoints: 2*2^-40 = 1.8e-12 each, 4 sets); a node
// without endpoints must fail every connection once the policy is
// switched to Local, after it was seen forwarding under Cluster, so the
// failure is the policy's; and the health check port must give each
// node's exact count and status as endpoints come, go and terminate
// (upstream's "fallback to terminating endpoints" checks the 503 too).
func externalTrafficPolicy() types.Feature {
	notPromised := func(a *suite.A) {
		if !a.Promise.ExternalTrafficLocal {
			a.SkipFeature("not promised by %s: upstream's userspace proxy never implemented externalTrafficPolicy Local; it opens every backend connection from the node, so no client address survives", a.Promise.Mode)
		}
	}
	twoNodes := func(a *suite.A) []cluster.Node {
		nodes := a.Cluster.Info().Nodes
		if len(nodes) < 2 {
			a.Skipf("needs 2 nodes, the cluster has %d", len(nodes))
		}
		return nodes[:2]
	}
	return suite.NewFeature("external traffic policy", "external-traffic-policy",
		"externalTrafficPolicy: Local sends outside clients of a NodePort only to the node's own endpoints, keeping their address, and the healthCheckNodePort says which nodes have one").
		Assess("with externalTrafficPolicy Local a NodePort reached from outside answers only from the node's own endpoints, which see the client's address", func(ctx context.Context, a *suite.A) {
			notPromised(a)
			nodes := twoNodes(a)
			local := map[string][]cluster.Pod{}
			for _, n := range nodes {
				for range 2 {
					local[n.Name] = append(local[n.Name], a.Fixture.BackendOn(a, "etp", n.Name))
				}
			}
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "etp-local", Selector: a.Fixture.GroupSelector("etp"), ExternalLocal: true})
			for i, from := range nodes {
				to := nodes[1-i]
				client := nodeAddrs(a, from.Name)
				for _, pp := range []struct {
					proto probe.Proto
					port  string
				}{{probe.TCP, "tcp"}, {probe.UDP, "udp"}} {
					tg := probe.Target{NS: from.NS, Addr: netip.AddrPortFrom(to.IP, suite.NodePort(svc, pp.port)), Proto: pp.proto}
					checkSources(a, fmt.Sprintf("%s -> %s's NodePort %s", from.Name, to.Name, tg), tg, local[to.Name],
						fmt.Sprintf("an address of %s, the client (no SNAT)", from.Name),
						func(src netip.Addr) bool { return slices.Contains(client, src) })
				}
			}
		}).
		Assess("a node without endpoints forwards no outside client of a NodePort once the policy is Local", func(ctx context.Context, a *suite.A) {
			notPromised(a)
			nodes := twoNodes(a)
			// One backend, on the first node; the second node reaches it
			// only under the policy Cluster.
			home, away := nodes[0], nodes[1]
			lonely := a.Fixture.BackendOn(a, "etp-none", home.Name)
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "etp-none", Selector: a.Fixture.GroupSelector("etp-none"), NodePort: true})
			viaAway := probe.Target{NS: home.NS, Addr: netip.AddrPortFrom(away.IP, suite.NodePort(svc, "tcp")), Proto: probe.TCP}
			viaHome := probe.Target{NS: away.NS, Addr: netip.AddrPortFrom(home.IP, suite.NodePort(svc, "tcp")), Proto: probe.TCP}
			waitServedByAll(a, fmt.Sprintf("with the policy Cluster, %s's NodePort forwards to %s on %s", away.Name, lonely.Name, home.Name), viaAway, []string{lonely.Name})
			setExternalPolicy(a, svc.Name, corev1.ServiceExternalTrafficPolicyLocal)
			// A dropped connection times out (iptables, nftables), an
			// IPVS virtual server without real servers refuses.
			reachesNone(a, viaAway, fmt.Sprintf("with the policy Local, %s's NodePort forwards nothing", away.Name), "etp-none switched to Local",
				fmt.Sprintf("%s -> %s's NodePort", home.Name, away.Name),
				fmt.Sprintf("with externalTrafficPolicy Local and no endpoint on %s, its NodePort still forwarded to", away.Name))
			waitServedByAll(a, fmt.Sprintf("%s's NodePort, on the backend's node, still reaches it", home.Name), viaHome, []string{lonely.Name})
		}).
		Assess("the healthCheckNodePort answers 200 with the node's ready endpoint count where it has some and 503 where it has none, as they come and go", func(ctx context.Context, a *suite.A) {
			notPromised(a)
			nodes := twoNodes(a)
			first, second := nodes[0], nodes[1]
			pods := []cluster.Pod{a.Fixture.BackendOn(a, "etp-hc", first.Name), a.Fixture.BackendOn(a, "etp-hc", first.Name)}
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "etp-hc", Selector: a.Fixture.GroupSelector("etp-hc"), ExternalLocal: true})
			if svc.Spec.HealthCheckNodePort == 0 {
				a.Fatalf("the API server gave LoadBalancer Service %s with externalTrafficPolicy Local no healthCheckNodePort", svc.Name)
			}
			// A load balancer asks from outside: each node is asked from
			// the other's address.
			ask := func(n cluster.Node) probe.Target {
				from := nodes[0]
				if from.Name == n.Name {
					from = nodes[1]
				}
				return probe.Target{NS: from.NS, Addr: netip.AddrPortFrom(n.IP, uint16(svc.Spec.HealthCheckNodePort)), Proto: probe.Health}
			}
			expect := func(step string, n cluster.Node, count int) {
				a.Helper()
				status := http.StatusOK
				if count == 0 {
					status = http.StatusServiceUnavailable
				}
				var last string
				a.EventuallyTrue(fmt.Sprintf("%s: %s's health check port answers %d with localEndpoints %d", step, n.Name, status, count), a.Converge(), func() (bool, string) {
					var ok bool
					ok, last = healthIs(a.Probe(ask(n), 1, quick), svc, status, count)
					return ok, last
				})
				a.Evidence("%s: %s", step, last)
			}
			expect("two endpoints on "+first.Name, first, 2)
			expect("none on "+second.Name, second, 0)
			draining := a.Fixture.DrainingBackendOn(a, "etp-hc", second.Name)
			expect("one added on "+second.Name, second, 1)
			for _, p := range pods {
				a.Fixture.Unselect(a, p)
			}
			expect("both taken from "+first.Name, first, 0)
			// A terminating endpoint still serves, but a load balancer
			// must drain the node: it does not count.
			a.Fixture.Terminate(a, draining)
			expect("its one terminating on "+second.Name, second, 0)
		}).Feature()
}

// healthIs says whether a health check answer has the status and count
// wanted, for svc, and renders it.
func healthIs(s probe.Summary, svc *corev1.Service, status, count int) (bool, string) {
	if len(s.Results) != 1 {
		return false, s.String()
	}
	r := s.Results[0]
	if r.Err != nil {
		return false, fmt.Sprintf("%s: %v", s.Target, r.Err)
	}
	// kube-proxy's body (pkg/proxy/healthcheck), which load balancers and
	// tools read; the suite checks any proxy against it, ours included.
	var body struct {
		Service struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"service"`
		LocalEndpoints int `json:"localEndpoints"`
	}
	if err := json.Unmarshal([]byte(r.Body), &body); err != nil {
		return false, fmt.Sprintf("%s: HTTP %d, body %q is not kube-proxy's JSON: %v", s.Target, r.Status, r.Body, err)
	}
	line := fmt.Sprintf("%s: HTTP %d, localEndpoints %d for %s/%s", s.Target.Addr, r.Status, body.LocalEndpoints, body.Service.Namespace, body.Service.Name)
	return r.Status == status && body.LocalEndpoints == count &&
		body.Service.Namespace == svc.Namespace && body.Service.Name == svc.Name, line
}

func setExternalPolicy(a *suite.A, name string, p corev1.ServiceExternalTrafficPolicy) {
	a.Helper()
	a.Fixture.UpdateService(a, name, func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = p })
	a.Logf("Service %s: externalTrafficPolicy %s", name, p)
}
