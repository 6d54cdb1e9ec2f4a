package result

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestSummarizeNeedsSixSamplesForAFiniteInterval(t *testing.T) {
	five := []float64{5, 1, 3, 2, 4}
	s, ok := Summarize(five)
	if !ok || s.Median != 3 || s.Finite() {
		t.Errorf("5 samples: %+v, want median 3 and an infinite interval (93.75%% < 95%%)", s)
	}
	if got := s.CIString(UnitFullSec); got != "3.00 s ±∞" {
		t.Errorf("CIString %q", got)
	}
	six := []float64{10, 11, 12, 13, 14, 15}
	s, _ = Summarize(six)
	// n=6 at 95%: the order statistics 1 and 6 (96.9%).
	if !s.Finite() || s.Lo != 10 || s.Hi != 15 || s.Median != 12.5 {
		t.Errorf("6 samples: %+v, want [10, 15] around 12.5", s)
	}
	if len(six) != MinRepeatsForMedianCI {
		t.Fatal("MinRepeatsForMedianCI drifted from the test")
	}
	if five[0] != 5 {
		t.Error("Summarize sorted its caller's samples")
	}
}

func TestCompareSamples(t *testing.T) {
	// Clearly apart: 5 against 5 is enough for the U test (min p 0.0079).
	fast := []float64{1.0, 1.1, 0.9, 1.05, 0.95}
	slow := []float64{3.0, 3.3, 2.7, 3.1, 2.9}
	r, ok := CompareSamples(fast, slow)
	if !ok || !r.Significant() {
		t.Fatalf("%+v: want a significant ratio", r)
	}
	if math.Abs(r.Value-1.0/3.0) > 1e-9 || r.Lo > r.Value || r.Hi < r.Value || r.Hi >= 1 {
		t.Errorf("%+v: want 0.333 inside an interval below 1", r)
	}
	// For n1=n2=5, P(U<=2)=4/252 <= 0.025 < P(U<=3): the interval drops the
	// two smallest and two largest of the 25 log ratios.
	// The 25 ratios sorted: 0.9/3.3, 0.95/3.3, 0.9/3.1, ... 1.1/2.9,
	// 1.05/2.7, 1.1/2.7; the third from each end bounds the interval.
	if math.Abs(r.Lo-0.9/3.1) > 1e-9 || math.Abs(r.Hi-1.1/2.9) > 1e-9 {
		t.Errorf("interval [%v, %v], want [%v, %v]", r.Lo, r.Hi, 0.9/3.1, 1.1/2.9)
	}
	if s := r.String(); !strings.HasPrefix(s, "0.33× [") {
		t.Errorf("String %q", s)
	}

	// The same distribution twice is "~".
	a := []float64{1.0, 1.2, 0.9, 1.1, 1.05}
	b := []float64{1.1, 0.95, 1.15, 1.0, 0.92}
	r, _ = CompareSamples(a, b)
	if r.Significant() || !strings.HasPrefix(r.String(), "~ [") {
		t.Errorf("%+v %q: overlapping samples must be ~", r, r.String())
	}

	// Two samples each cannot show a difference, however far apart.
	r, _ = CompareSamples([]float64{1, 1.1}, []float64{10, 11})
	if r.Significant() || !math.IsInf(r.Hi, 1) || r.String() != "~ (n=2+2)" {
		t.Errorf("%+v %q: 2 against 2 must be ~ with an unbounded interval", r, r.String())
	}

	if _, ok := CompareSamples(nil, a); ok {
		t.Error("an empty side compared")
	}
	if _, ok := CompareSamples([]float64{0, 1}, a); ok {
		t.Error("a zero sample compared (no log ratio)")
	}
}

// The interval's coverage is what it claims: for samples that differ by a
// known factor, at least 95% of intervals contain it, and an A/A
// comparison (factor 1) is "~" at least 95% of the time. Fixed seed, so
// the test is deterministic; 4000 trials put 0.93 about six standard
// errors below 0.95.
func TestCompareSamplesCoverage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	draw := func(n int, scale float64) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = scale * math.Exp(0.3*rng.NormFloat64())
		}
		return out
	}
	for _, n := range []int{5, 6, 10} {
		for _, factor := range []float64{1, 0.5} {
			const trials = 4000
			covered, same := 0, 0
			for range trials {
				r, _ := CompareSamples(draw(n, factor), draw(n, 1))
				if r.Lo <= factor && factor <= r.Hi {
					covered++
				}
				if !r.Significant() {
					same++
				}
			}
			t.Logf("n=%d factor %v: covered %.4f, ~ %.4f", n, factor, float64(covered)/trials, float64(same)/trials)
			if c := float64(covered) / trials; c < 0.93 {
				t.Errorf("n=%d factor %v: the interval covered the true ratio in %.3f of trials, want >= 0.95", n, factor, c)
			}
			if factor == 1 && float64(same)/trials < 0.93 {
				t.Errorf("n=%d A/A: %.3f of comparisons were ~, want >= 0.95", n, float64(same)/trials)
			}
		}
	}
}

func TestAACheck(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	draw := func(scale float64) []float64 {
		out := make([]float64, 6)
		for i := range out {
			out[i] = scale * math.Exp(0.2*rng.NormFloat64())
		}
		return out
	}
	// The twin gets the reference's own samples, reversed and scaled: with
	// scale 1 the U test cannot see a difference (p = 1), so the pass does
	// not rest on a lucky seed.
	set := func(twinScale float64) *Set {
		s := &Set{}
		for _, n := range []int{100, 1000} {
			ref := Point{Kernel: host, Mode: ModeIPTables, Impl: ImplReference, Services: n, EndpointsPerService: 2}
			twin := ref
			twin.Impl = ImplReferenceTwin
			for _, m := range []struct {
				bench, unit string
				scale       float64
			}{{Sync, UnitFullSec, 1}, {DataPlane, UnitP50Sec, 1e-3}} {
				v := draw(m.scale)
				ref.Add(m.bench, m.unit, v...)
				w := make([]float64, len(v))
				for i := range v {
					w[len(v)-1-i] = v[i] * twinScale
				}
				twin.Add(m.bench, m.unit, w...)
			}
			for _, p := range []*Point{&ref, &twin} {
				p.Add(Rules, UnitIPTablesRules, 820, 820, 820, 820, 820, 820)
				s.Points = append(s.Points, *p)
			}
		}
		return s
	}
	aa, ok := set(1).AA()
	if !ok || !aa.OK() || aa.Compared != 4 {
		t.Errorf("A/A of one distribution: %+v (ok %v), want 4 ratios compared (rules are exact) and a pass", aa, ok)
	}
	aa, _ = set(2).AA()
	if aa.OK() || aa.AfterHolm != 4 || !strings.Contains(aa.String(), "FAIL") {
		t.Errorf("a twin twice as slow passed the A/A check: %s", aa)
	}
	if _, ok := testSet().AA(); ok {
		t.Error("a set without twin points has an A/A check")
	}

	var b strings.Builder
	if err := WriteMarkdown(&b, set(1)); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	if !strings.Contains(md, "### reference ÷ reference-twin") || !strings.Contains(md, "A/A check, PASS") || strings.Contains(md, "reference ÷ kube-proxy") {
		t.Errorf("A/A set's README:\n%s", md)
	}
}
