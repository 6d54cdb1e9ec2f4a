package conformance

import (
	"context"
	"math"
	"testing"

	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/suites/promise"
	"github.com/proxymodes/proxymodes/suites/stats"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestSelection(t *testing.T) {
	testenv.Test(t, roundRobin(), randomChoice())
}

// rrCycles: round-robin is checked over 3*rrCycles connections.
const rrCycles = 10

// roundRobin: a mode that promises round-robin must serve one client's
// connections in a fixed cyclic order: the sequence is a fixed permutation
// of the 3 backends, repeated. The check is exact, so a correct proxy never
// fails it (false-failure probability 0, given no other traffic to the
// Service). A uniformly random proxy passes it with probability
// (2/9)*(1/3)^27 < 1e-13.
func roundRobin() types.Feature {
	return suite.NewFeature("round-robin", "round-robin",
		"a round-robin mode serves one client's connections in exact cyclic order").
		Assess("connections from one client follow a fixed cyclic order", func(ctx context.Context, a *suite.A) {
			if a.Promise.Selection != promise.RoundRobin {
				a.Skipf("%s promises %s selection, not round-robin (the random feature checks it)", a.Promise.Mode, a.Promise.Selection)
			}
			names := suite.Names(a.Fixture.Backends(a, 3))
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "rr"})
			tg := tcpTo(clients(a, 1)[0].NS, svc)
			waitServedByAll(a, "Service serves all 3 backends", tg, names)

			n := 3 * rrCycles
			s := a.Probe(tg, n, quick)
			seq := s.Sequence()
			a.Evidence("sequence of %d: %s", n, short(seq, 12))
			a.Evidence("distribution: %s", suite.Distribution(s, names))
			if e := s.Errors(); len(e) > 0 {
				a.Fatalf("%d of %d connections failed (first: %v)", len(e), n, e[0])
			}
			perm := map[string]bool{}
			for _, b := range seq[:3] {
				perm[b] = true
			}
			if len(perm) != 3 {
				a.Fatalf("the first 3 connections went to %v, not to 3 different backends: not round-robin", seq[:3])
			}
			for i := 3; i < n; i++ {
				if seq[i] != seq[i%3] {
					a.Fatalf("connection %d went to %s, but the cycle %v says %s: not round-robin (sequence: %v)", i+1, seq[i], seq[:3], seq[i%3], seq)
				}
			}
			a.Evidence("exact cycle %v repeated %d times", seq[:3], rrCycles)
		}).Feature()
}

// Random-selection test sizes and critical values.
const (
	// randomN connections from one client to 3 backends.
	randomN = 900
	// chiCritical: for df = 2 the chi-square survival function is
	// exp(-x/2), so P(X^2 > 2 ln(1e6)) = 1e-6 for a uniform proxy. The
	// exact multinomial tail at n = 900 is 9.84e-7 (suites/stats tests it):
	// the false-failure probability of the uniformity check is < 1e-6.
	// Power: the classic bug of probability 1/3 on every rule (a 1/3, 2/9,
	// 4/9 split) gives an expected X^2 of about 67 at n = 900.
	chiAlpha = 1e-6
	// repeatAlpha: the number of neighbours that name the same backend is
	// Binomial(n-1, 1/3) for independent uniform choices; the two-sided
	// acceptance region has false-failure probability < 1e-6. Round-robin
	// and other fixed cycles give 0 repeats.
	repeatAlpha = 1e-6
)

var chiCritical = 2 * math.Log(1/chiAlpha) // 27.631

// randomChoice: a mode that promises random selection must pick each of 3
// backends with probability 1/3 (chi-square goodness of fit) and not in a
// fixed cycle (no period up to n/4, and neighbours repeat at the rate of
// independent choices).
func randomChoice() types.Feature {
	var seq []string
	var names []string
	return suite.NewFeature("random choice", "random",
		"a random mode picks each backend with probability 1/3, independently").
		Assess("900 connections are uniform over 3 backends (chi-square)", func(ctx context.Context, a *suite.A) {
			if a.Promise.Selection != promise.Random {
				a.Skipf("%s promises %s selection, not random (the round-robin feature checks it)", a.Promise.Mode, a.Promise.Selection)
			}
			names = suite.Names(a.Fixture.Backends(a, 3))
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "random"})
			tg := tcpTo(clients(a, 1)[0].NS, svc)
			waitServedByAll(a, "Service serves all 3 backends", tg, names)

			s := a.Probe(tg, randomN, quick)
			seq = s.Sequence()
			a.Evidence("distribution over %d: %s", randomN, suite.Distribution(s, names))
			if e := s.Errors(); len(e) > 0 {
				a.Fatalf("%d of %d connections failed (first: %v)", len(e), randomN, e[0])
			}
			c := s.Counts()
			obs := []int{c[names[0]], c[names[1]], c[names[2]]}
			x := stats.ChiSquare(obs, stats.Uniform(3))
			p := stats.ChiSquareSF(x, 2)
			exact := stats.ExactChiSquareTail3(randomN, x)
			a.Evidence("chi-square X^2=%.2f (df=2, critical %.2f) p=%.3g (exact multinomial p=%.3g)", x, chiCritical, p, exact)
			if x > chiCritical {
				a.Fatalf("distribution %v is not uniform: X^2=%.2f > %.2f (p=%.3g; a uniform proxy exceeds it with probability < 1e-6)", obs, x, chiCritical, p)
			}
		}).
		Assess("the choices are not a fixed cycle", func(ctx context.Context, a *suite.A) {
			if a.Promise.Selection != promise.Random {
				a.Skipf("%s promises %s selection, not random", a.Promise.Mode, a.Promise.Selection)
			}
			if len(seq) != randomN {
				a.Fatalf("no sequence measured (the uniformity assessment did not run)")
			}
			maxP := randomN / 4
			if p := stats.Period(seq, maxP); p != 0 {
				a.Fatalf("the backends repeat with period %d (%s): a fixed cycle, not random", p, short(seq, 12))
			}
			a.Evidence("no period <= %d (a random sequence has one with probability < 1e%.0f)", maxP, stats.PeriodicBound(randomN, 3, maxP))
			r := stats.Repeats(seq)
			lo, hi, ff := stats.BinomialAcceptance(randomN-1, 1.0/3, repeatAlpha)
			pr := stats.BinomialTwoSidedP(randomN-1, r, 1.0/3)
			a.Evidence("same backend twice in a row: %d of %d (expected %.0f, accept [%d, %d], p=%.3g, false-failure %.2g)",
				r, randomN-1, float64(randomN-1)/3, lo, hi, pr, ff)
			if r < lo || r > hi {
				a.Fatalf("%d repeats of the previous backend in %d, outside [%d, %d]: successive choices are not independent", r, randomN-1, lo, hi)
			}
		}).Feature()
}
