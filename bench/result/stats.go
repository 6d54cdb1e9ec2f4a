package result

import (
	"fmt"
	"math"
	"slices"

	"github.com/aclements/go-moremath/stats"
	"golang.org/x/perf/benchmath"
)

// Confidence is the level of every interval a set reports, benchstat's
// default; Alpha is the matching significance level of its tests.
const (
	Confidence = 0.95
	Alpha      = 1 - Confidence
)

// MinRepeatsForMedianCI is the fewest samples whose median has a finite
// 95% interval (order statistics, as benchstat computes it): with 5 the
// widest interval, [min, max], only reaches 93.75%.
const MinRepeatsForMedianCI = 6

// Summary is a metric's median with its distribution-free 95% interval.
type Summary struct {
	Median, Lo, Hi float64
	N              int
}

// Summarize summarizes the samples the way benchstat does
// (benchmath.AssumeNothing). Lo and Hi are infinite when there are too
// few samples for the confidence level.
func Summarize(samples []float64) (Summary, bool) {
	if len(samples) == 0 {
		return Summary{}, false
	}
	s := benchmath.AssumeNothing.Summary(benchmath.NewSample(slices.Clone(samples), &benchmath.DefaultThresholds), Confidence)
	return Summary{Median: s.Center, Lo: s.Lo, Hi: s.Hi, N: len(samples)}, true
}

// Finite says whether the interval is bounded.
func (s Summary) Finite() bool { return !math.IsInf(s.Lo, 0) && !math.IsInf(s.Hi, 0) }

// Ratio compares two samples: the ratio of their medians, a 95% interval
// for the ratio, and the Mann-Whitney U test's p-value (benchstat's test).
type Ratio struct {
	Value, Lo, Hi float64
	P             float64
	N1, N2        int
}

// Significant says whether the two samples differ: the U test rejects
// equality at Alpha and the interval excludes 1. benchstat shows a
// difference that is not significant as "~", and so does a set.
func (r Ratio) Significant() bool {
	return r.P <= Alpha && (r.Lo > 1 || r.Hi < 1)
}

// CompareSamples returns num ÷ den. The interval is the distribution-free
// interval for a shift in log space that inverts the U test (Bauer 1972,
// the Hodges-Lehmann family): all n1·n2 log ratios of one sample of num to
// one of den, sorted, cut at the U distribution's α/2 quantile. It needs
// positive samples; false when either side is empty, or not positive.
func CompareSamples(num, den []float64) (Ratio, bool) {
	n1, n2 := len(num), len(den)
	if n1 == 0 || n2 == 0 {
		return Ratio{}, false
	}
	for _, v := range slices.Concat(num, den) {
		if !(v > 0) {
			return Ratio{}, false
		}
	}
	a, _ := Summarize(num)
	b, _ := Summarize(den)
	th := benchmath.DefaultThresholds
	th.CompareAlpha = Alpha
	cmp := benchmath.AssumeNothing.Compare(benchmath.NewSample(slices.Clone(num), &th), benchmath.NewSample(slices.Clone(den), &th))
	r := Ratio{Value: a.Median / b.Median, P: cmp.P, N1: n1, N2: n2, Lo: 0, Hi: math.Inf(1)}

	logs := make([]float64, 0, n1*n2)
	for _, x := range num {
		for _, y := range den {
			logs = append(logs, math.Log(x)-math.Log(y))
		}
	}
	slices.Sort(logs)
	// c is the largest count with P(U <= c) <= α/2 under the null; the
	// interval drops the c smallest and c largest log ratios.
	u := stats.UDist{N1: n1, N2: n2}
	c := -1
	for k := 0; k < n1*n2; k++ {
		if u.CDF(float64(k)) > Alpha/2 {
			break
		}
		c = k
	}
	if c >= 0 {
		r.Lo, r.Hi = math.Exp(logs[c]), math.Exp(logs[len(logs)-1-c])
	}
	return r, true
}

// String renders the ratio as a set's tables show it: "0.35× [0.31, 0.40]",
// "~ [0.82, 1.3]" when the difference is not significant, or "~ (n=2+2)"
// when the samples are too few for any interval.
func (r Ratio) String() string {
	iv := fmt.Sprintf("[%s, %s]", sig3(r.Lo), sig3(r.Hi))
	if math.IsInf(r.Hi, 1) {
		// Too few samples for any interval at this confidence.
		iv = fmt.Sprintf("(n=%d+%d)", r.N1, r.N2)
	}
	if !r.Significant() {
		return "~ " + iv
	}
	return formatRatio(r.Value) + " " + iv
}

// CIString renders a median with its interval as benchstat does, "12.3 ms
// ±4%", or "±∞" when there are too few samples for one.
func (s Summary) CIString(unit string) string {
	return formatValue(unit, s.Median) + " ±" + benchmath.Summary{Center: s.Median, Lo: s.Lo, Hi: s.Hi}.PctRangeString()
}
