package conformance

import (
	"context"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestEndpointSlices(t *testing.T) {
	testenv.Test(t, endpointSlices())
}

// slicesN connections must reach all 4 endpoints of two slices: a random
// proxy misses one with probability at most 4*(3/4)^160 = 4e-20 (0 under
// round-robin), so the check fails a correct proxy never in practice and a
// proxy that reads only one slice always.
const slicesN = 160

// endpointSlices: a Service whose endpoints are split over several
// EndpointSlices. Upstream (endpointslice.go, Conformance since v1.34)
// checks that each port returns the expected pod. Here a selectorless
// Service gets two slices written by the suite, as a user's controller
// would, and every endpoint of both must serve; deleting one slice must
// drop exactly its endpoints. (The endpointslice controller's own split at
// 100 endpoints is not exercised: 101 pods per run is left out for now.)
func endpointSlices() types.Feature {
	var pods []cluster.Pod
	var tg probe.Target
	return suite.NewFeature("EndpointSlices", "slices",
		"a Service's endpoints spread over several EndpointSlices all serve; a deleted slice takes only its own").
		Assess("a selectorless Service serves every endpoint of its two EndpointSlices", func(ctx context.Context, a *suite.A) {
			pods = a.Fixture.Backends(a, 4)
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "sliced", Selectorless: true})
			a.Fixture.EndpointSlice(a, svc, "sliced-a", pods[:2])
			a.Fixture.EndpointSlice(a, svc, "sliced-b", pods[2:])
			tg = tcpTo(clients(a, 1)[0].NS, svc)
			names := suite.Names(pods)
			waitServedByAll(a, "both slices' endpoints serve", tg, names)
			s := a.Probe(tg, slicesN, quick)
			a.Evidence("%d connections: %s", slicesN, suite.Distribution(s, names))
			if e := s.Errors(); len(e) > 0 {
				a.Fatalf("%d of %d connections failed (first: %v)", len(e), slicesN, e[0])
			}
			if !suite.ServedBy(s, names...) {
				a.Fatalf("%d connections did not reach every endpoint of both slices: %s", slicesN, suite.Distribution(s, names))
			}
		}).
		Assess("deleting one EndpointSlice drops exactly its endpoints", func(ctx context.Context, a *suite.A) {
			if len(pods) != 4 {
				a.Fatalf("no slices to delete from (the previous assessment did not run)")
			}
			keep := suite.Names(pods[:2])
			start := time.Now()
			a.Fixture.DeleteEndpointSlice(a, "sliced-b")
			a.Eventually("only the remaining slice's endpoints serve", a.Converge(),
				func() probe.Summary { return a.Probe(tg, 40, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, keep...) })
			took := a.ConvergedSince(start)
			s := a.Probe(tg, 100, quick)
			a.Evidence("sliced-b deleted: its endpoints dropped within %s; then %s", took.Round(10*time.Millisecond), suite.Distribution(s, keep))
			if !suite.ServedBy(s, keep...) {
				a.Fatalf("after the slice's deletion converged, 100 connections were not all served by exactly the remaining slice's %v: %s", keep, s)
			}
		}).Feature()
}
