package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestTerminatingEndpoints(t *testing.T) {
	testenv.Test(t, terminatingEndpoints())
}

// Connections per measured probe. Among 2 ready backends a random choice
// misses one in termN with probability 2*2^-100 (0 under round-robin);
// among 3 terminating ones in termAllN, 3*(2/3)^60 = 7.5e-11. A proxy that
// keeps sending new connections to the terminating one sends each there
// with probability 1/3, so it passes with (2/3)^100 = 2.5e-18. flowTries
// connections find the flow on the pod to terminate: a random choice
// misses it with (2/3)^60 = 2.7e-11 (the check then fails as untestable).
const (
	termN     = 100
	termAllN  = 60
	flowTries = 60
)

// terminatingEndpoints: upstream's service.go has four "fallback to
// terminating endpoints" tests (Cluster and Local policies, pod and node
// clients): a pod deleted with a grace period serves on, and 5 rounds of
// connections must reach it only when nothing else is ready. Here the
// endpoint's conditions are read from its EndpointSlice first (Ready=false,
// Serving=true, Terminating=true, or the check cannot test and fails);
// then 100 connections must avoid it while ready endpoints exist, an
// established connection to it must keep working, and with only
// terminating endpoints, under either policy, every connection must reach
// them.
func terminatingEndpoints() types.Feature {
	var (
		pods   []cluster.Pod
		client cluster.Pod
		vip    netip.AddrPort
	)
	return suite.NewFeature("terminating endpoints", "terminating",
		"a pod deleted with a grace period serves on: new connections avoid it while ready endpoints exist, established ones continue, and it is used when only terminating endpoints are left").
		Assess("a terminating endpoint gets no new connections while ready ones exist, and its established connection keeps working", func(ctx context.Context, a *suite.A) {
			for range 3 {
				pods = append(pods, a.Fixture.DrainingBackendOn(a, "term", ""))
			}
			names := suite.Names(pods)
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "term", Selector: a.Fixture.GroupSelector("term")})
			client = clients(a, 1)[0]
			vip = suite.VIP(svc, suite.TCPPort)
			waitServedByAll(a, "term reaches every backend", tcpTo(client.NS, svc), names)
			a.Quiet("term programmed")
			flow := flowTo(a, client, vip, pods[0].Name)
			defer flow.Close()

			a.Fixture.Terminate(a, pods[0])
			waitTerminating(a, svc.Name, pods[0])
			rest := names[1:]
			waitServedByAll(a, fmt.Sprintf("new connections reach only %v", rest), tcpTo(client.NS, svc), rest)
			a.Quiet("the terminating endpoint applied")
			s := a.Probe(tcpTo(client.NS, svc), termN, quick)
			a.Evidence("%d new connections with %s terminating: %s", termN, pods[0].Name, suite.Distribution(s, names))
			if e := s.Errors(); len(e) > 0 {
				a.Errorf("%d of %d new connections failed while %s terminated (first: %v)", len(e), termN, pods[0].Name, e[0])
			}
			if !suite.ServedBy(s, rest...) {
				a.Errorf("with %s terminating and %v ready, new connections reached %s: want exactly the ready ones", pods[0].Name, rest, tally(s.Counts()))
			}
			var got []string
			for range 3 {
				b, err := flow.Exchange(a.Ctx, quick)
				if err != nil {
					a.Fatalf("the connection established to %s before it began terminating failed while it still serves: %v (answers before: %v)", pods[0].Name, err, got)
				}
				got = append(got, b)
			}
			a.Evidence("the connection established to %s: 3 exchanges after its termination began, answered by %v", pods[0].Name, got)
			for _, b := range got {
				if b != pods[0].Name {
					a.Fatalf("the connection established to %s was answered by %v after it began terminating", pods[0].Name, got)
				}
			}
		}).
		Assess("with only terminating endpoints left, new connections reach them", func(ctx context.Context, a *suite.A) {
			if len(pods) != 3 {
				a.Fatalf("the backends of the assessment before were not made")
			}
			for _, p := range pods[1:] {
				a.Fixture.Terminate(a, p)
			}
			for _, p := range pods[1:] {
				waitTerminating(a, "term", p)
			}
			tg := probe.Target{NS: client.NS, Addr: vip, Proto: probe.TCP}
			names := suite.Names(pods)
			waitServedByAll(a, "with every endpoint terminating, term reaches all three", tg, names)
			a.Quiet("every endpoint terminating")
			s := a.Probe(tg, termAllN, quick)
			a.Evidence("%d connections with every endpoint terminating: %s", termAllN, suite.Distribution(s, names))
			if e := s.Errors(); len(e) > 0 {
				a.Fatalf("with only terminating endpoints, %d of %d connections failed (first: %v): a proxy must fall back to serving terminating endpoints", len(e), termAllN, e[0])
			}
			if !suite.ServedBy(s, names...) {
				a.Fatalf("with only terminating endpoints, connections reached %s: want all three", tally(s.Counts()))
			}
		}).
		Assess("with internalTrafficPolicy Local and only a terminating endpoint on the client's node, connections reach it, not the other node's ready one", func(ctx context.Context, a *suite.A) {
			if !a.Promise.InternalTrafficLocal {
				a.Skipf("not promised by %s: it has no internalTrafficPolicy (see the internal traffic policy feature)", a.Promise.Mode)
			}
			c := clients(a, 1)[0]
			var other string
			for _, n := range a.Cluster.Info().Nodes {
				if n.Name != c.Node {
					other = n.Name
				}
			}
			local := a.Fixture.DrainingBackendOn(a, "term-local", c.Node)
			remote := a.Fixture.BackendOn(a, "term-local", other)
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "term-local", Selector: a.Fixture.GroupSelector("term-local"), InternalLocal: true})
			tg := tcpTo(c.NS, svc)
			waitServedByAll(a, fmt.Sprintf("%s reaches only %s on its node", c.Name, local.Name), tg, []string{local.Name})
			a.Fixture.Terminate(a, local)
			waitTerminating(a, svc.Name, local)
			a.Quiet("the local endpoint terminating")
			s := a.Probe(tg, termAllN, quick)
			a.Evidence("%d connections from %s on %s with its node's only endpoint terminating (%s ready on %s): %s", termAllN, c.Name, c.Node, remote.Name, other, suite.Distribution(s, []string{local.Name, remote.Name}))
			if e := s.Errors(); len(e) > 0 {
				a.Fatalf("%d of %d connections failed (first: %v): with internalTrafficPolicy Local and only a terminating endpoint on the node, a proxy must fall back to it", len(e), termAllN, e[0])
			}
			if !suite.ServedBy(s, local.Name) {
				a.Fatalf("connections reached %s: want only %s, the terminating endpoint on %s (the policy is Local)", tally(s.Counts()), local.Name, c.Node)
			}
		}).Feature()
}

// flowTo opens TCP flows from client to vip until one is answered by
// backend, and closes the others.
func flowTo(a *suite.A, client cluster.Pod, vip netip.AddrPort, backend string) suite.Flow {
	a.Helper()
	var seen []string
	for range flowTries {
		f, err := suite.OpenFlow(a.Ctx, a.Cluster, client.NS, probe.TCP, vip)
		if err != nil {
			a.Fatalf("a TCP connection from %s to %s: %v", client.Name, vip, err)
		}
		b, err := f.Exchange(a.Ctx, quick)
		if err == nil && b == backend {
			return f
		}
		f.Close()
		seen = append(seen, b)
	}
	a.Fatalf("none of %d connections from %s to %s reached %s (reached %v): the check cannot test an established connection", flowTries, client.Name, vip, backend, seen)
	return nil
}

// waitTerminating waits until the Service's EndpointSlices show p as
// Ready=false, Serving=true, Terminating=true: the state the checks are
// about, which a provider that ends the backend at once never reaches.
func waitTerminating(a *suite.A, svc string, p cluster.Pod) {
	a.Helper()
	a.EventuallyTrue(fmt.Sprintf("%s's endpoint is ready=false serving=true terminating=true", p.Name), a.Converge(), func() (bool, string) {
		slices, err := a.Cluster.Client().DiscoveryV1().EndpointSlices(p.Namespace).List(a.Ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
		if err != nil {
			return false, err.Error()
		}
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				if len(ep.Addresses) == 0 || ep.Addresses[0] != p.IP.String() {
					continue
				}
				c := ep.Conditions
				state := fmt.Sprintf("ready=%v serving=%v terminating=%v", deref(c.Ready), deref(c.Serving), deref(c.Terminating))
				return deref(c.Ready) == "false" && deref(c.Serving) == "true" && deref(c.Terminating) == "true", state
			}
		}
		return false, "not in any EndpointSlice of " + svc
	})
}

func deref(b *bool) string {
	if b == nil {
		return "unset"
	}
	return fmt.Sprint(*b)
}
