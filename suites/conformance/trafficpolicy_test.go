package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestInternalTrafficPolicy(t *testing.T) {
	testenv.Test(t, internalTrafficPolicy())
}

// Connections per measured probe. With two local backends picked at random
// a client misses one with probability 2*2^-60 = 1.7e-18 (two clients:
// 3.5e-18; 0 under round-robin); a proxy that ignores the policy sends each
// connection to another node's backend with probability 1/2, so it passes
// with probability 2^-60 per client. noLocalN connections from a node
// without endpoints must all fail: one that reaches a backend is a broken
// promise, whatever the others did.
const (
	itpN     = 60
	noLocalN = 10
)

// internalTrafficPolicy: upstream's "should respect
// internalTrafficPolicy=Local Pod to Pod" (service.go) puts one backend on
// one node and checks that a client pod on that node reaches it and one on
// another node does not, with a few connections each. Here two backends on
// each node must each be reached from their own node and never from the
// other, over 60 connections per client; a node without endpoints must fail
// every connection once the change is applied, and switching the policy
// back must restore it, so the failure is the policy's and not a proxier
// that never programmed the Service.
func internalTrafficPolicy() types.Feature {
	notPromised := func(a *suite.A) {
		if !a.Promise.InternalTrafficLocal {
			a.SkipFeature("not promised by %s: upstream's userspace proxy never implemented internalTrafficPolicy (removed in v1.26, the policy went GA in v1.26); its listener serves every endpoint", a.Promise.Mode)
		}
	}
	var (
		lonely  cluster.Pod     // the one backend of itp-none
		far     cluster.Pod     // a client on another node
		svcNone *corev1.Service // selects lonely only
	)
	return suite.NewFeature("internal traffic policy", "internal-traffic-policy",
		"internalTrafficPolicy: Local sends a client only to endpoints on its own node, and nowhere from a node without one").
		Assess("with internalTrafficPolicy Local a client reaches every endpoint on its own node and none on another", func(ctx context.Context, a *suite.A) {
			notPromised(a)
			nodes := a.Cluster.Info().Nodes
			local := map[string][]string{}
			for _, n := range nodes {
				for range 2 {
					local[n.Name] = append(local[n.Name], a.Fixture.BackendOn(a, "itp", n.Name).Name)
				}
			}
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "itp-local", Selector: a.Fixture.GroupSelector("itp"), InternalLocal: true})
			cs := clients(a, 2)
			for _, c := range cs {
				waitServedByAll(a, fmt.Sprintf("%s on %s reaches the endpoints on its node", c.Name, c.Node), tcpTo(c.NS, svc), local[c.Node])
			}
			a.Quiet("itp-local programmed")
			for _, c := range cs {
				s := a.Probe(tcpTo(c.NS, svc), itpN, quick)
				a.Evidence("%s on %s: %s", c.Name, c.Node, suite.Distribution(s, local[c.Node]))
				if e := s.Errors(); len(e) > 0 {
					a.Errorf("%s on %s: %d of %d connections failed (first: %v)", c.Name, c.Node, len(e), itpN, e[0])
				}
				if !suite.ServedBy(s, local[c.Node]...) {
					a.Errorf("%s on %s reached %s; with internalTrafficPolicy Local it must reach exactly the endpoints on its node, %v", c.Name, c.Node, tally(s.Counts()), local[c.Node])
				}
			}
		}).
		Assess("a client on a node without endpoints fails every connection once the policy is Local", func(ctx context.Context, a *suite.A) {
			notPromised(a)
			cs := clients(a, 2)
			near, other := cs[0], cs[1]
			// One backend, on the first client's node; the other client
			// reaches it only through a policy of Cluster.
			lonely = a.Fixture.BackendOn(a, "itp-none", near.Node)
			far = other
			svcNone = a.Fixture.Service(a, suite.ServiceOptions{Name: "itp-none", Selector: a.Fixture.GroupSelector("itp-none")})
			waitServedByAll(a, fmt.Sprintf("with the policy Cluster, %s on %s reaches %s on %s", far.Name, far.Node, lonely.Name, lonely.Node), tcpTo(far.NS, svcNone), []string{lonely.Name})
			setInternalPolicy(a, svcNone.Name, corev1.ServiceInternalTrafficPolicyLocal)
			tg := tcpTo(far.NS, svcNone)
			reachesNone(a, tg, fmt.Sprintf("with the policy Local, %s on %s gets no connection", far.Name, far.Node), "itp-none switched to Local",
				fmt.Sprintf("%s on %s", far.Name, far.Node),
				fmt.Sprintf("with internalTrafficPolicy Local and no endpoint on %s, %s still reached", far.Node, far.Name))
			waitServedByAll(a, fmt.Sprintf("%s on %s, the backend's node, still reaches it", near.Name, near.Node), tcpTo(near.NS, svcNone), []string{lonely.Name})
		}).
		Assess("switching the policy back to Cluster reaches the other node's endpoint again", func(ctx context.Context, a *suite.A) {
			notPromised(a)
			if svcNone == nil {
				a.Fatalf("the Service of the assessment before was not made")
			}
			setInternalPolicy(a, svcNone.Name, corev1.ServiceInternalTrafficPolicyCluster)
			tg := tcpTo(far.NS, svcNone)
			waitServedByAll(a, fmt.Sprintf("with the policy Cluster again, %s on %s reaches %s", far.Name, far.Node, lonely.Name), tg, []string{lonely.Name})
			a.Quiet("itp-none switched back to Cluster")
			s := a.Probe(tg, itpN, quick)
			a.Evidence("%s on %s: %s", far.Name, far.Node, suite.Distribution(s, []string{lonely.Name}))
			if e := s.Errors(); len(e) > 0 {
				a.Fatalf("with the policy Cluster again, %d of %d connections from %s failed (first: %v)", len(e), itpN, far.Name, e[0])
			}
		}).Feature()
}

func setInternalPolicy(a *suite.A, name string, p corev1.ServiceInternalTrafficPolicy) {
	a.Helper()
	a.Fixture.UpdateService(a, name, func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &p })
	a.Logf("Service %s: internalTrafficPolicy %s", name, p)
}

// reachesNone waits until tg reaches no backend, then, with the proxiers
// quiet, requires noLocalN more connections to reach none either. A
// backend answers in a millisecond, so 1 s is plenty for each; a dropped
// connection times out, a refused one ends at once.
func reachesNone(a *suite.A, tg probe.Target, waitFor, quiet, from, failure string) {
	a.Helper()
	a.EventuallyTrue(waitFor, a.Converge(), func() (bool, string) {
		s := a.Probe(tg, 3, time.Second)
		return len(s.Counts()) == 0, "last probe: " + s.String()
	})
	a.Quiet(quiet)
	s := a.Probe(tg, noLocalN, time.Second)
	kinds, _ := suite.ErrorKinds(s)
	a.Evidence("%s, %d connections: reached %v; errors %v", from, noLocalN, s.Counts(), kinds)
	if c := s.Counts(); len(c) > 0 {
		a.Fatalf("%s %s", failure, tally(c))
	}
}
