package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/promise"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestProxierRestart(t *testing.T) {
	testenv.Test(t, proxierRestart())
}

// restarted is what the first assessment saw around the restart, for the
// checks of the later ones.
type restarted struct {
	names []string
	// flows: the backend each flow reached first, and each exchange's
	// outcome while the proxiers were down and after they were back.
	flows       []string
	down, after []flowResult
	client      cluster.Pod
	kept, fresh string // VIPs of the Service kept and the one created while down
	goneVIP     string
	started     time.Time
	change      suite.RuleChange
	// before: each node's data plane before the stop (dumpPlane).
	before map[string]string
}

type flowResult struct {
	backend string
	err     error
}

// proxierRestart: every node's proxier stops, and starts again after a
// Service is created and another deleted. Upstream has no such test
// (kube_proxy.go only checks conntrack timeouts); its users ask for it,
// because a proxier restart (an upgrade, a crash, an OOM kill) must not
// cut established connections, lose changes made meanwhile, or write its
// rules twice. Disruptive: it runs with the others unless left out with
// -skip-labels disruptive=true, and never on PROVIDER=existing (a cluster
// the suite does not own).
func proxierRestart() types.Feature {
	const flowsN = 6
	var r *restarted
	return suite.NewFeature("proxier restart", "restart",
		"every node's proxier stops and starts again: connections survive, changes made meanwhile apply, the rules come back as they were").
		WithLabel("disruptive", "true").
		Assess("after every proxier restarts, new connections through a ClusterIP work again", func(ctx context.Context, a *suite.A) {
			rs, ok := a.Cluster.(cluster.ProxierRestarter)
			if !ok {
				a.SkipFeature("the %s provider does not stop and start the proxiers: the cluster and its proxy are not the suite's", a.Cluster.Info().Provider)
			}
			pods := a.Fixture.Backends(a, 3)
			r = &restarted{names: suite.Names(pods), before: map[string]string{}}
			kept := a.Fixture.Service(a, suite.ServiceOptions{Name: "restart-kept"})
			gone := a.Fixture.Service(a, suite.ServiceOptions{Name: "restart-gone"})
			r.client = clients(a, 1)[0]
			r.kept, r.goneVIP = kept.Spec.ClusterIP, gone.Spec.ClusterIP
			waitServedByAll(a, "restart-kept reaches every backend", tcpTo(r.client.NS, kept), r.names)
			waitServedByAll(a, "restart-gone reaches every backend", tcpTo(r.client.NS, gone), r.names)
			for _, n := range a.Cluster.Info().Nodes {
				r.before[n.Name] = dumpPlane(a, n.NS)
			}

			var flows []suite.Flow
			defer func() {
				for _, f := range flows {
					f.Close()
				}
			}()
			for i := 0; i < flowsN; i++ {
				f, err := suite.OpenFlow(a.Ctx, a.Cluster, r.client.NS, probe.TCP, suite.VIP(kept, suite.TCPPort))
				if err != nil {
					a.Fatalf("opening TCP flow %d to restart-kept: %v", i, err)
				}
				flows = append(flows, f)
				b, err := f.Exchange(a.Ctx, quick)
				if err != nil {
					a.Fatalf("TCP flow %d to restart-kept: the first exchange failed: %v", i, err)
				}
				r.flows = append(r.flows, b)
			}
			a.Evidence("%d TCP flows to %s established before the stop, on %v", flowsN, r.kept, tallyOf(r.flows))

			stopped := time.Now()
			if err := rs.StopProxiers(a.Ctx); err != nil {
				a.Fatalf("stopping the proxiers: %v", err)
			}
			up := false
			defer func() {
				if !up {
					// A failed check must not leave the cluster without its
					// proxiers for the features after it.
					if err := rs.StartProxiers(context.Background()); err != nil {
						a.Errorf("starting the proxiers again after a failure: %v", err)
					}
				}
			}()
			r.down = exchangeAll(a, flows)
			fresh := a.Fixture.Service(a, suite.ServiceOptions{Name: "restart-new"})
			r.fresh = fresh.Spec.ClusterIP
			a.Fixture.DeleteService(a, gone.Name)
			r.change = suite.RuleChange{
				NewAddrs: []string{r.fresh}, NewComments: []string{fresh.Namespace + "/" + fresh.Name + ":"},
				GoneAddrs: []string{r.goneVIP}, GoneComments: []string{gone.Namespace + "/" + gone.Name + ":"},
			}
			while := a.Probe(tcpTo(r.client.NS, kept), 20, quick)
			a.Evidence("while the proxiers were down (%s after the stop): new connections to restart-kept: %s", time.Since(stopped).Round(10*time.Millisecond), while)

			started := time.Now()
			r.started = started
			if err := rs.StartProxiers(a.Ctx); err != nil {
				a.Fatalf("starting the proxiers again: %v", err)
			}
			up = true
			healthy := time.Since(started)
			waitServedByAll(a, "restart-kept reaches every backend after the restart", tcpTo(r.client.NS, kept), r.names)
			a.Evidence("down for %s; after the start the proxiers were up in %s and new connections reached every backend %s after the start",
				started.Sub(stopped).Round(10*time.Millisecond), healthy.Round(10*time.Millisecond), a.ConvergedSince(started).Round(10*time.Millisecond))
			r.after = exchangeAll(a, flows)
		}).
		Assess("established TCP connections through a ClusterIP keep working while the proxiers are down and after they restart", func(ctx context.Context, a *suite.A) {
			if r == nil {
				a.Fatalf("the restart did not happen (see the assessment before)")
			}
			if !a.Promise.FlowsOutliveProxier {
				a.Skipf("not promised by %s: its proxy process carries every connection, so they end with it (seen: %s while down)", a.Promise.Mode, flowTally(r.down))
			}
			a.Evidence("while down: %s; after the restart: %s", flowTally(r.down), flowTally(r.after))
			for _, phase := range []struct {
				name string
				res  []flowResult
			}{{"while the proxiers were down", r.down}, {"after they restarted", r.after}} {
				for i, res := range phase.res {
					if res.err != nil || res.backend != r.flows[i] {
						a.Errorf("flow %d (on %s) %s: got %q, %v", i, r.flows[i], phase.name, res.backend, res.err)
					}
				}
			}
		}).
		Assess("a Service created and one deleted while the proxiers were down are applied once they are back", func(ctx context.Context, a *suite.A) {
			if r == nil || r.fresh == "" {
				a.Fatalf("the restart did not happen (see the first assessment)")
			}
			fresh := probe.Target{NS: r.client.NS, Addr: netip.AddrPortFrom(netip.MustParseAddr(r.fresh), suite.TCPPort), Proto: probe.TCP}
			waitServedByAll(a, "restart-new, created while the proxiers were down, reaches every backend", fresh, r.names)
			a.Evidence("restart-new (%s) reached every backend %s after the proxiers started", r.fresh, a.ConvergedSince(r.started).Round(10*time.Millisecond))
			gone := probe.Target{NS: r.client.NS, Addr: netip.AddrPortFrom(netip.MustParseAddr(r.goneVIP), suite.TCPPort), Proto: probe.TCP}
			s := a.Probe(gone, 5, time.Second)
			a.Evidence("restart-gone (%s), deleted while they were down: %s", r.goneVIP, s)
			if c := s.Counts(); len(c) > 0 {
				a.Fatalf("restart-gone was deleted while the proxiers were down, and after they restarted and were quiet its ClusterIP %s still reaches %s", r.goneVIP, tally(c))
			}
		}).
		Assess("after the restart each node's rules are those from before, but for the Services changed meanwhile: nothing lost, duplicated or stale", func(ctx context.Context, a *suite.A) {
			if r == nil || r.fresh == "" {
				a.Fatalf("the restart did not happen (see the first assessment)")
			}
			for _, n := range a.Cluster.Info().Nodes {
				after := dumpPlane(a, n.NS)
				d := suite.RuleDiff(r.before[n.Name], after, r.change)
				a.Evidence("%s: %d items before, %d after; %s", n.Name, len(suite.RuleItems(r.before[n.Name])), len(suite.RuleItems(after)), diffTally(d))
				for _, kind := range []string{"lost", "duplicated", "stale", "unexplained"} {
					if len(d[kind]) > 0 {
						a.Errorf("%s: %d %s after the restart:\n%s", n.Name, len(d[kind]), kind, strings.Join(d[kind], "\n"))
					}
				}
			}
		}).Feature()
}

// dumpPlane is a node's whole data plane for RuleDiff: netfilter (and
// nftables where the mode uses it) and IPVS where the mode uses it.
func dumpPlane(a *suite.A, ns string) string {
	a.Helper()
	dump, err := dumpRules(a, ns)
	if err != nil {
		a.Fatal(err)
	}
	if a.Promise.Has(promise.IPVS) {
		ipvs, err := suite.DumpIPVS(a.Ctx, a.Cluster, ns)
		if err != nil {
			a.Fatal(err)
		}
		dump += "\n" + ipvs
	}
	return dump
}

func exchangeAll(a *suite.A, flows []suite.Flow) []flowResult {
	out := make([]flowResult, len(flows))
	for i, f := range flows {
		out[i].backend, out[i].err = f.Exchange(a.Ctx, quick)
	}
	return out
}

func tallyOf(names []string) string {
	c := map[string]int{}
	for _, n := range names {
		c[n]++
	}
	return tally(c)
}

func flowTally(res []flowResult) string {
	ok, failed := 0, 0
	var first error
	for _, r := range res {
		if r.err != nil {
			failed++
			if first == nil {
				first = r.err
			}
		} else {
			ok++
		}
	}
	if failed == 0 {
		return fmt.Sprintf("%d of %d flows answered", ok, len(res))
	}
	return fmt.Sprintf("%d of %d flows answered, %d failed (first: %v)", ok, len(res), failed, first)
}

func diffTally(d map[string][]string) string {
	var parts []string
	for _, k := range []string{"lost", "duplicated", "stale", "unexplained"} {
		if len(d[k]) > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", len(d[k]), k))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "nothing lost, duplicated, stale or unexplained")
	}
	if e := d["emptied"]; len(e) > 0 {
		parts = append(parts, fmt.Sprintf("the deleted Service's chains emptied, not yet deleted: %s", strings.Join(e, "; ")))
	}
	return strings.Join(parts, "; ")
}
