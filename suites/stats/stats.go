// Package stats holds the few statistical tests the conformance suites use
// to tell a correct proxy from a broken one, with exact or closed-form tail
// probabilities so each check states how often it fails a correct proxy
// (its false-failure probability). Everything here is pure math: no lab.
package stats

import (
	"fmt"
	"math"
)

// ChiSquare is Pearson's goodness-of-fit statistic of observed counts
// against expected probabilities (which must sum to 1).
func ChiSquare(observed []int, probs []float64) float64 {
	if len(observed) != len(probs) {
		panic(fmt.Sprintf("stats: %d counts but %d probabilities", len(observed), len(probs)))
	}
	n := 0
	for _, o := range observed {
		n += o
	}
	var x float64
	for i, o := range observed {
		e := float64(n) * probs[i]
		d := float64(o) - e
		x += d * d / e
	}
	return x
}

// Uniform returns k equal probabilities.
func Uniform(k int) []float64 {
	p := make([]float64, k)
	for i := range p {
		p[i] = 1 / float64(k)
	}
	return p
}

// ChiSquareSF is the survival function P(X > x) of the chi-square
// distribution with df degrees of freedom, in closed form (exact for every
// df; the sums have df/2 terms, so it is meant for small df):
//
//	even df = 2m:   exp(-x/2) * sum_{k<m} (x/2)^k / k!
//	odd  df = 2m+1: erfc(sqrt(x/2)) + exp(-x/2) * sum_{k=1..m} (x/2)^(k-1/2) / Gamma(k+1/2)
//
// For df = 2 this is exp(-x/2), so P(X > 2 ln(1/alpha)) = alpha.
func ChiSquareSF(x float64, df int) float64 {
	if df < 1 {
		panic("stats: chi-square needs df >= 1")
	}
	if x <= 0 {
		return 1
	}
	h := x / 2
	var sum float64
	if df%2 == 0 {
		term := 1.0
		for k := 0; k < df/2; k++ {
			if k > 0 {
				term *= h / float64(k)
			}
			sum += term
		}
		return math.Min(1, math.Exp(-h)*sum)
	}
	// (x/2)^(k-1/2) / Gamma(k+1/2), starting at k=1: sqrt(h)/Gamma(3/2).
	term := math.Sqrt(h) / (math.Sqrt(math.Pi) / 2)
	for k := 1; k <= df/2; k++ {
		if k > 1 {
			term *= h / (float64(k) - 0.5)
		}
		sum += term
	}
	return math.Min(1, math.Erfc(math.Sqrt(h))+math.Exp(-h)*sum)
}

// ChiSquareCritical returns the x with ChiSquareSF(x, df) = alpha, by
// bisection; for df = 2 it is 2 ln(1/alpha) (27.631 for alpha = 1e-6).
func ChiSquareCritical(alpha float64, df int) float64 {
	lo, hi := 0.0, 1.0
	for ChiSquareSF(hi, df) > alpha {
		hi *= 2
	}
	for i := 0; i < 200; i++ {
		mid := (lo + hi) / 2
		if ChiSquareSF(mid, df) > alpha {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// ExactChiSquareTail3 is the exact probability, under a uniform choice
// among 3 backends, that n independent connections give a chi-square
// statistic of at least x. It sums the multinomial probabilities of every
// outcome (a, b, n-a-b), about n^2/2 terms, so it is cheap for the n the
// suites use (n = 900: 406k terms, a few milliseconds). It checks that the
// asymptotic chi-square tail is not optimistic at the counts we use.
func ExactChiSquareTail3(n int, x float64) float64 {
	e := float64(n) / 3
	lnN := lgamma(float64(n) + 1)
	ln3n := float64(n) * math.Log(3)
	var p float64
	for a := 0; a <= n; a++ {
		da := float64(a) - e
		for b := 0; a+b <= n; b++ {
			c := n - a - b
			db, dc := float64(b)-e, float64(c)-e
			// Small tolerance: a statistic equal to x counts as "at least x".
			if (da*da+db*db+dc*dc)/e < x-1e-9 {
				continue
			}
			p += math.Exp(lnN - lgamma(float64(a)+1) - lgamma(float64(b)+1) - lgamma(float64(c)+1) - ln3n)
		}
	}
	return math.Min(1, p)
}

func lgamma(x float64) float64 {
	v, _ := math.Lgamma(x)
	return v
}

// BinomialPMF is P(X = k) for X ~ Binomial(n, p), computed in log space.
func BinomialPMF(n, k int, p float64) float64 {
	if k < 0 || k > n {
		return 0
	}
	if p == 0 {
		if k == 0 {
			return 1
		}
		return 0
	}
	if p == 1 {
		if k == n {
			return 1
		}
		return 0
	}
	l := lgamma(float64(n)+1) - lgamma(float64(k)+1) - lgamma(float64(n-k)+1) +
		float64(k)*math.Log(p) + float64(n-k)*math.Log1p(-p)
	return math.Exp(l)
}

// BinomialCDF is P(X <= k), summed exactly term by term.
func BinomialCDF(n, k int, p float64) float64 {
	if k < 0 {
		return 0
	}
	if k >= n {
		return 1
	}
	var s float64
	for i := 0; i <= k; i++ {
		s += BinomialPMF(n, i, p)
	}
	return math.Min(1, s)
}

// BinomialSF is P(X >= k), summed exactly term by term.
func BinomialSF(n, k int, p float64) float64 {
	if k <= 0 {
		return 1
	}
	var s float64
	for i := k; i <= n; i++ {
		s += BinomialPMF(n, i, p)
	}
	return math.Min(1, s)
}

// BinomialAcceptance is the two-sided acceptance region [lo, hi] for
// X ~ Binomial(n, p) at level alpha: lo is the largest value with
// P(X < lo) <= alpha/2 and hi the smallest with P(X > hi) <= alpha/2, so a
// correct proxy lands outside it with probability at most alpha. That
// exact bound is returned as falseFailure.
func BinomialAcceptance(n int, p, alpha float64) (lo, hi int, falseFailure float64) {
	lo = 0
	for lo+1 <= n && BinomialCDF(n, lo, p) <= alpha/2 { // P(X < lo+1) = CDF(lo)
		lo++
	}
	hi = n
	for hi-1 >= 0 && BinomialSF(n, hi, p) <= alpha/2 { // P(X > hi-1) = SF(hi)
		hi--
	}
	return lo, hi, BinomialCDF(n, lo-1, p) + BinomialSF(n, hi+1, p)
}

// BinomialTwoSidedP is the two-sided p-value of observing k:
// min(1, 2*min(P(X <= k), P(X >= k))).
func BinomialTwoSidedP(n, k int, p float64) float64 {
	return math.Min(1, 2*math.Min(BinomialCDF(n, k, p), BinomialSF(n, k, p)))
}

// Repeats counts the positions where a sequence names the same backend as
// the one before it. For independent uniform choices among k backends the
// count is Binomial(len-1, 1/k) exactly (the differences between
// neighbours are independent and uniform); round-robin gives 0.
func Repeats(seq []string) int {
	r := 0
	for i := 1; i < len(seq); i++ {
		if seq[i] == seq[i-1] {
			r++
		}
	}
	return r
}

// Period returns the smallest p in 1..maxPeriod with seq[i] == seq[i+p] for
// every i, or 0 if there is none. For independent uniform choices among k
// backends, a given p fits with probability k^-(len-p) exactly, so
// PeriodicBound bounds how often a random sequence looks periodic.
func Period(seq []string, maxPeriod int) int {
	for p := 1; p <= maxPeriod && p < len(seq); p++ {
		ok := true
		for i := 0; i+p < len(seq); i++ {
			if seq[i] != seq[i+p] {
				ok = false
				break
			}
		}
		if ok {
			return p
		}
	}
	return 0
}

// PeriodicBound is the union bound sum_{p=1..maxPeriod} k^-(n-p) on the
// probability that n independent uniform choices among k backends have a
// period of at most maxPeriod. It returns the base-10 logarithm, because
// the value underflows float64 for the n the suites use.
func PeriodicBound(n, k, maxPeriod int) (log10 float64) {
	// The largest term is p = maxPeriod; the geometric sum is at most
	// k/(k-1) times it.
	return -float64(n-maxPeriod)*math.Log10(float64(k)) + math.Log10(float64(k)/float64(k-1))
}

// AllSameBound is the probability that m independent uniform choices among
// k backends all name the same backend: k * k^-m = k^(1-m).
func AllSameBound(m, k int) float64 {
	return math.Pow(float64(k), float64(1-m))
}

// NoneMovedBound is the probability that m clients, each re-choosing
// uniformly among k backends, all land on the backend they had before:
// k^-m.
func NoneMovedBound(m, k int) float64 {
	return math.Pow(float64(k), float64(-m))
}

// MissAnyBound bounds the probability that n independent uniform choices
// among k backends miss at least one backend: k * (1-1/k)^n.
func MissAnyBound(n, k int) float64 {
	return float64(k) * math.Pow(1-1/float64(k), float64(n))
}
