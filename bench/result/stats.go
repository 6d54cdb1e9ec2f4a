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

// AACheck is the verdict of an A/A comparison: with m ratios each tested
// at Alpha, about m·Alpha come out significant by chance, so the verdict
// uses Holm's correction for the m comparisons (family-wise error at
// Alpha). The check passes when none is significant after it.
type AACheck struct {
	Compared, Significant, AfterHolm int
	// Worst names the smallest p-value's ratio.
	Worst string
}

// OK says whether the A/A check found no difference.
func (a AACheck) OK() bool { return a.AfterHolm == 0 }

func (a AACheck) String() string {
	if a.Compared == 0 {
		return "A/A check: no ratio had samples on both sides."
	}
	verdict := "PASS: no difference after Holm's correction"
	if !a.OK() {
		verdict = fmt.Sprintf("FAIL: %d significant after Holm's correction", a.AfterHolm)
	}
	return fmt.Sprintf("A/A check, %s: %d ratios compared, %d significant at %.2f each (about %.1f expected by chance); smallest p: %s.",
		verdict, a.Compared, a.Significant, Alpha, float64(a.Compared)*Alpha, a.Worst)
}

func aaCheck(pairs []implPair, cols []column) AACheck {
	type test struct {
		p    float64
		name string
	}
	var tests []test
	var out AACheck
	for _, pr := range pairs {
		for _, c := range cols {
			if exact(c) {
				continue
			}
			r, ok := CompareSamples(pr.ref.Samples(c.bench, c.unit), pr.other.Samples(c.bench, c.unit))
			if !ok {
				continue
			}
			tests = append(tests, test{r.P, fmt.Sprintf("%s %s, %d Services: p=%.3g", pr.ref.ModeLabel(), c.head, pr.ref.Services, r.P)})
			if r.Significant() {
				out.Significant++
			}
		}
	}
	out.Compared = len(tests)
	slices.SortStableFunc(tests, func(a, b test) int { return cmpFloat(a.p, b.p) })
	if len(tests) > 0 {
		out.Worst = tests[0].name
	}
	// Holm: reject the i-th smallest while p <= Alpha/(m-i).
	for i, t := range tests {
		if t.p > Alpha/float64(len(tests)-i) {
			break
		}
		out.AfterHolm++
	}
	return out
}

// AA runs the A/A check over every kernel of the set: reference against
// its twin. ok is false when the set has no twin points.
func (s *Set) AA() (AACheck, bool) {
	var pts []*Point
	for i := range s.Points {
		pts = append(pts, &s.Points[i])
	}
	var pairs []implPair
	for _, k := range s.Kernels() {
		var kp []*Point
		for _, p := range pts {
			if p.Kernel == k {
				kp = append(kp, p)
			}
		}
		pairs = append(pairs, implPairs(kp, ImplReferenceTwin)...)
	}
	if len(pairs) == 0 {
		return AACheck{}, false
	}
	return aaCheck(pairs, setColumns(s)), true
}
