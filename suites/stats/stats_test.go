package stats

import (
	"math"
	"math/rand/v2"
	"testing"
)

func near(a, b, rel float64) bool {
	return math.Abs(a-b) <= rel*math.Max(math.Abs(a), math.Abs(b))
}

func TestChiSquare(t *testing.T) {
	// 30 connections, 10/10/10: a perfect fit.
	if x := ChiSquare([]int{10, 10, 10}, Uniform(3)); x != 0 {
		t.Errorf("perfect fit: got %v", x)
	}
	// (20-10)^2/10 + (5-10)^2/10 + (5-10)^2/10 = 10 + 2.5 + 2.5
	if x := ChiSquare([]int{20, 5, 5}, Uniform(3)); !near(x, 15, 1e-12) {
		t.Errorf("20/5/5: got %v, want 15", x)
	}
}

func TestChiSquareSF(t *testing.T) {
	for _, c := range []struct {
		x    float64
		df   int
		want float64
	}{
		{0, 2, 1},
		{2, 2, math.Exp(-1)},
		{27.631021115928547, 2, 1e-6},
		{3.841458820694124, 1, 0.05},     // the textbook 5% point
		{6.6348966010212145, 1, 0.01},    // 1% point, df=1
		{7.814727903251178, 3, 0.05},     // df=3
		{9.487729036781154, 4, 0.05},     // df=4
		{4, 4, math.Exp(-2) * (1 + 2)},   // closed form exp(-x/2)(1+x/2)
		{11.070497693516351, 5, 0.05},    // df=5
		{18.307038053275146, 10, 0.05},   // df=10
		{23.209251158954356, 10, 0.01},   // df=10
		{10.827566170662733, 1, 0.001},   // df=1, 0.1%
		{13.815510557964274, 2, 0.001},   // df=2: 2 ln 1000
		{16.26623619623813, 3, 0.001},    // df=3
		{20.515005652432873, 5, 0.001},   // df=5
		{1e-300, 3, 1},                   // tiny x
		{1000, 3, 0},                     // far tail underflows to 0
		{0.5, 1, 0.47950012218695337},    // erfc(0.5)
		{1.0, 3, 0.8012519569012013},     // numerical integration of the pdf
		{2.0, 7, 0.9598403687299789},     // numerical integration of the pdf
		{12.0, 6, 0.06196880441665},      // exp(-6)(1+6+18)
		{30.0, 9, 0.0004387217709794252}, // numerical integration of the pdf
	} {
		got := ChiSquareSF(c.x, c.df)
		if c.want == 0 {
			if got > 1e-200 {
				t.Errorf("SF(%v, df=%d) = %v, want ~0", c.x, c.df, got)
			}
			continue
		}
		if !near(got, c.want, 1e-6) {
			t.Errorf("SF(%v, df=%d) = %.12g, want %.12g", c.x, c.df, got, c.want)
		}
	}
}

func TestChiSquareCritical(t *testing.T) {
	// The suites' critical value: df = 2, alpha = 1e-6 -> 2 ln(1e6).
	got := ChiSquareCritical(1e-6, 2)
	if want := 2 * math.Log(1e6); !near(got, want, 1e-9) {
		t.Errorf("critical(1e-6, 2) = %v, want %v", got, want)
	}
	if got := ChiSquareCritical(0.05, 1); !near(got, 3.841458820694124, 1e-9) {
		t.Errorf("critical(0.05, 1) = %v", got)
	}
}

// TestExactTailMatchesAsymptotic is the reason the random-selection check
// can claim its false-failure probability: at the suite's N the exact
// multinomial tail beyond the critical value is below 1e-6 too.
func TestExactTailMatchesAsymptotic(t *testing.T) {
	crit := 2 * math.Log(1e6)
	// At n = 300 and 600 the exact tail is 1.04e-6 and 1.01e-6, slightly
	// above the asymptotic value; at 900 (what the suite uses) it is below.
	for _, n := range []int{900} {
		exact := ExactChiSquareTail3(n, crit)
		t.Logf("n=%d: exact P(X^2 >= %.2f) = %.3g (asymptotic 1e-6)", n, crit, exact)
		if exact >= 1e-6 {
			t.Errorf("n=%d: exact false-failure probability %.3g is not below 1e-6", n, exact)
		}
	}
	// Small n by brute force: n=3 gives X^2 in {0 (6/27), 2 (18/27), 6 (3/27)}.
	if got := ExactChiSquareTail3(3, 6); !near(got, 3.0/27, 1e-12) {
		t.Errorf("n=3, x=6: got %v, want 1/9", got)
	}
	if got := ExactChiSquareTail3(3, 2); !near(got, 21.0/27, 1e-12) {
		t.Errorf("n=3, x=2: got %v, want 21/27", got)
	}
	if got := ExactChiSquareTail3(3, 0); !near(got, 1, 1e-12) {
		t.Errorf("n=3, x=0: got %v, want 1", got)
	}
}

func TestBinomial(t *testing.T) {
	// Bin(4, 1/2): 1 4 6 4 1 over 16.
	for k, w := range []float64{1, 4, 6, 4, 1} {
		if got := BinomialPMF(4, k, 0.5); !near(got, w/16, 1e-12) {
			t.Errorf("pmf(4,%d) = %v", k, got)
		}
	}
	if got := BinomialCDF(4, 1, 0.5); !near(got, 5.0/16, 1e-12) {
		t.Errorf("cdf = %v", got)
	}
	if got := BinomialSF(4, 3, 0.5); !near(got, 5.0/16, 1e-12) {
		t.Errorf("sf = %v", got)
	}
	var sum float64
	for k := 0; k <= 300; k++ {
		sum += BinomialPMF(300, k, 1.0/3)
	}
	if !near(sum, 1, 1e-9) {
		t.Errorf("pmf sums to %v", sum)
	}
	if got := BinomialTwoSidedP(300, 100, 1.0/3); got < 0.9 {
		t.Errorf("p-value at the mean = %v", got)
	}
}

func TestBinomialAcceptance(t *testing.T) {
	for _, n := range []int{150, 180, 300} {
		lo, hi, ff := BinomialAcceptance(n, 1.0/3, 1e-6)
		t.Logf("Bin(%d, 1/3): accept [%d, %d] (%.3f..%.3f), false-failure %.3g", n, lo, hi, float64(lo)/float64(n), float64(hi)/float64(n), ff)
		if ff >= 1e-6 {
			t.Errorf("n=%d: false failure %v", n, ff)
		}
		// Tight: widening by one on either side must not be needed, and
		// narrowing by one must exceed the budget on that side.
		if BinomialCDF(n, lo, 1.0/3) <= 0.5e-6 {
			t.Errorf("n=%d: lo=%d not maximal", n, lo)
		}
		if BinomialSF(n, hi, 1.0/3) <= 0.5e-6 {
			t.Errorf("n=%d: hi=%d not minimal", n, hi)
		}
		mean := n / 3
		if lo >= mean || hi <= mean || lo == 0 || hi == n {
			t.Errorf("n=%d: region [%d,%d] is degenerate", n, lo, hi)
		}
	}
}

// TestBinomialAcceptanceEmpirical runs the region against simulated
// correct and broken proxies.
func TestBinomialAcceptanceEmpirical(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 300
	lo, hi, _ := BinomialAcceptance(n, 1.0/3, 1e-6)
	draw := func(p float64) int {
		k := 0
		for i := 0; i < n; i++ {
			if r.Float64() < p {
				k++
			}
		}
		return k
	}
	for i := 0; i < 2000; i++ {
		if k := draw(1.0 / 3); k < lo || k > hi {
			t.Fatalf("correct no-retry proxy rejected: %d failures of %d", k, n)
		}
	}
	for _, p := range []float64{0, 2.0 / 3} { // a retrying proxy; two backends failing
		if k := draw(p); k >= lo && k <= hi {
			t.Errorf("p=%v accepted (%d failures)", p, k)
		}
	}
}

func TestRepeatsAndPeriod(t *testing.T) {
	rr := []string{"a", "b", "c", "a", "b", "c", "a", "b", "c"}
	if Repeats(rr) != 0 {
		t.Error("round-robin has no repeats")
	}
	if p := Period(rr, 4); p != 3 {
		t.Errorf("period = %d, want 3", p)
	}
	if p := Period([]string{"a", "a", "a"}, 2); p != 1 {
		t.Errorf("constant: period = %d", p)
	}
	if p := Period([]string{"a", "b", "b", "a", "c"}, 2); p != 0 {
		t.Errorf("aperiodic: period = %d", p)
	}
	if r := Repeats([]string{"a", "a", "b", "b", "b"}); r != 3 {
		t.Errorf("repeats = %d", r)
	}
	if b := PeriodicBound(900, 3, 225); b > -300 {
		t.Errorf("periodic bound 10^%v is not tiny", b)
	}
	if b := AllSameBound(14, 3); !near(b, math.Pow(3, -13), 1e-12) || b >= 1e-6 {
		t.Errorf("all-same bound %v", b)
	}
	if b := NoneMovedBound(14, 3); b >= 1e-6 {
		t.Errorf("none-moved bound %v", b)
	}
}

// TestRandomSequencesPass simulates a correct random proxy: the checks the
// random-selection feature makes must pass, and round-robin must fail them.
func TestRandomSequencesPass(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	names := []string{"a", "b", "c"}
	crit := 2 * math.Log(1e6)
	n := 900
	lo, hi, _ := BinomialAcceptance(n-1, 1.0/3, 1e-7)
	for trial := 0; trial < 200; trial++ {
		seq := make([]string, n)
		counts := make([]int, 3)
		for i := range seq {
			k := r.IntN(3)
			seq[i] = names[k]
			counts[k]++
		}
		if x := ChiSquare(counts, Uniform(3)); x > crit {
			t.Fatalf("random sequence failed chi-square: %v", x)
		}
		if p := Period(seq, n/4); p != 0 {
			t.Fatalf("random sequence periodic with period %d", p)
		}
		if rep := Repeats(seq); rep < lo || rep > hi {
			t.Fatalf("random sequence repeats %d outside [%d,%d]", rep, lo, hi)
		}
	}
	rr := make([]string, n)
	for i := range rr {
		rr[i] = names[i%3]
	}
	if Period(rr, n/4) != 3 || Repeats(rr) >= lo {
		t.Error("round-robin was not caught")
	}
	// The classic bug: probability 1/3 on each of the first two rules
	// instead of 1/(n-i) gives 1/3, 2/9, 4/9. At n=900 the chi-square test
	// sees it (expected statistic about 66).
	counts := make([]int, 3)
	for i := 0; i < n; i++ {
		switch u := r.Float64(); {
		case u < 1.0/3:
			counts[0]++
		case u < 1.0/3+2.0/9:
			counts[1]++
		default:
			counts[2]++
		}
	}
	if x := ChiSquare(counts, Uniform(3)); x <= crit {
		t.Errorf("skewed split %v not caught (X^2=%.1f)", counts, x)
	}
}
