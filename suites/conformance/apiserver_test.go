package conformance

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestAPIServerRestart(t *testing.T) {
	testenv.Test(t, apiServerRestart())
}

// reconnect bounds how long after its API server returns a proxier may
// take to notice: client-go's reflector backs off up to 30 s between
// attempts, and jitters each wait by up to as much again.
const reconnect = time.Minute

// apiRestarted is what the first assessment saw, for the later ones.
type apiRestarted struct {
	names       []string
	client      cluster.Pod
	standIn     bool
	fresh, gone string    // VIPs of the Services created and deleted while down
	back        time.Time // when the proxiers' API server was ready again
}

// apiServerRestart: the API server that the proxiers watch stops and
// starts again. Upstream's "should work after restarting apiserver
// [Disruptive]" (service.go) checks that a Service made before and one
// made after work. Here the data plane must also keep serving while the
// proxiers have no API (a proxier that drops its rules when its watch
// fails is broken), and a Service created and one deleted while the
// proxiers' API server was down, through a stand-in on the same storage
// (another replica of an HA control plane), must be applied once it
// returns: the proxier re-lists or resumes its watch and misses nothing.
// Disruptive; never on PROVIDER=existing.
func apiServerRestart() types.Feature {
	var r *apiRestarted
	return suite.NewFeature("API server restart", "apiserver-restart",
		"the proxiers' API server stops and starts again: Services keep working, changes made meanwhile apply, the watch resumes").
		WithLabel("disruptive", "true").
		Assess("while the proxiers' API server is down, their Services keep working", func(ctx context.Context, a *suite.A) {
			rs, ok := a.Cluster.(cluster.APIServerRestarter)
			if !ok {
				a.SkipFeature("the %s provider does not stop and start the API server: the cluster is not the suite's", a.Cluster.Info().Provider)
			}
			pods := a.Fixture.Backends(a, 3)
			r = &apiRestarted{names: suite.Names(pods)}
			kept := a.Fixture.Service(a, suite.ServiceOptions{Name: "api-kept"})
			gone := a.Fixture.Service(a, suite.ServiceOptions{Name: "api-gone"})
			r.client = clients(a, 1)[0]
			r.gone = gone.Spec.ClusterIP
			waitServedByAll(a, "api-kept reaches every backend", tcpTo(r.client.NS, kept), r.names)
			waitServedByAll(a, "api-gone reaches every backend", tcpTo(r.client.NS, gone), r.names)

			stopped := time.Now()
			standIn, err := rs.StopAPIServer(a.Ctx)
			if err != nil {
				a.Fatalf("stopping the API server: %v", err)
			}
			up := false
			defer func() {
				if !up {
					// The features after this one need an API.
					if err := rs.StartAPIServer(context.Background()); err != nil {
						a.Errorf("starting the API server again after a failure: %v", err)
					}
				}
			}()
			r.standIn = standIn
			if standIn {
				fresh := a.Fixture.Service(a, suite.ServiceOptions{Name: "api-new"})
				r.fresh = fresh.Spec.ClusterIP
				a.Fixture.DeleteService(a, gone.Name)
			}
			while := a.Probe(tcpTo(r.client.NS, kept), 60, quick)
			goneWhile := a.Probe(tcpTo(r.client.NS, gone), 5, quick)
			a.Evidence("API server stopped %s ago; api-kept: %s", time.Since(stopped).Round(10*time.Millisecond), suite.Distribution(while, r.names))
			if standIn {
				a.Evidence("through a stand-in API server: api-new created (%s), api-gone deleted; api-gone meanwhile: %s", r.fresh, goneWhile)
			}

			if err := rs.StartAPIServer(a.Ctx); err != nil {
				a.Fatalf("starting the API server again: %v", err)
			}
			up = true
			r.back = time.Now()
			a.Evidence("the proxiers' API server was down for %s", r.back.Sub(stopped).Round(10*time.Millisecond))

			if errs := while.Errors(); len(errs) > 0 || !suite.ServedBy(while, r.names...) {
				a.Fatalf("while the API server was down, 60 connections to api-kept should all succeed and reach every backend: %s", while)
			}
			if standIn && len(goneWhile.Counts()) == 0 {
				// Deleted only through the stand-in, so the proxiers
				// cannot have seen it: this check could not tell a
				// re-list from a live watch.
				a.Fatalf("api-gone stopped serving while the proxiers' API server was down (%s): either they reached the stand-in or they dropped its rules; the check cannot test a re-list", goneWhile)
			}
		}).
		Assess("a Service created and one deleted while the proxiers' API server was down are applied once it returns", func(ctx context.Context, a *suite.A) {
			if r == nil || r.back.IsZero() {
				a.Fatalf("the API server restart did not happen (see the first assessment)")
			}
			if !r.standIn {
				a.Skipf("the %s provider has one API server and no stand-in: nothing can change while it is down", a.Cluster.Info().Provider)
			}
			fresh := probe.Target{NS: r.client.NS, Addr: netip.AddrPortFrom(netip.MustParseAddr(r.fresh), suite.TCPPort), Proto: probe.TCP}
			a.Eventually("api-new, created while the proxiers' API server was down, reaches every backend", reconnect+a.Converge(),
				func() probe.Summary { return a.Probe(fresh, 60, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, r.names...) })
			a.Evidence("api-new (%s) reached every backend %s after the API server was back", r.fresh, a.ConvergedSince(r.back).Round(10*time.Millisecond))
			gone := probe.Target{NS: r.client.NS, Addr: netip.AddrPortFrom(netip.MustParseAddr(r.gone), suite.TCPPort), Proto: probe.TCP}
			s := a.Eventually("api-gone, deleted while the proxiers' API server was down, reaches no backend", reconnect+a.Converge(),
				func() probe.Summary { return a.Probe(gone, 5, time.Second) },
				func(s probe.Summary) bool { return len(s.Counts()) == 0 })
			a.Evidence("api-gone (%s): %s, %s after the API server was back", r.gone, s, a.ConvergedSince(r.back).Round(10*time.Millisecond))
		}).
		Assess("a Service created after the API server returns is applied: the proxiers watch again", func(ctx context.Context, a *suite.A) {
			if r == nil || r.back.IsZero() {
				a.Fatalf("the API server restart did not happen (see the first assessment)")
			}
			after := a.Fixture.Service(a, suite.ServiceOptions{Name: "api-after"})
			created := time.Now()
			a.Eventually("api-after reaches every backend", reconnect+a.Converge(),
				func() probe.Summary { return a.Probe(tcpTo(r.client.NS, after), 60, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, r.names...) })
			a.Evidence("api-after (%s), created %s after the API server was back, reached every backend %s after its creation",
				after.Spec.ClusterIP, created.Sub(r.back).Round(10*time.Millisecond), a.ConvergedSince(created).Round(10*time.Millisecond))
		}).Feature()
}
