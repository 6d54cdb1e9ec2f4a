package result

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotLine is one unit of a plot group, drawn for every series.
type plotLine struct {
	unit, label string
	dashed      bool
}

// plotGroup is one kind of plot; each kernel gets its own file of it.
type plotGroup struct {
	name, title, bench string
	lines              []plotLine
	direct             bool // draw the direct baseline as its own series
}

var plotGroups = []plotGroup{
	{"sync", "Sync time", Sync, []plotLine{{UnitFullSec, "full", false}, {UnitColdFullSec, "cold", false}, {UnitPartialSec, "partial", true}}, false},
	{"programming", "Programming latency: rules in the kernel", Programming, []plotLine{{UnitRulesP50Sec, "p50", false}, {UnitRulesP99Sec, "p99", true}}, false},
	{"connect", "Programming latency: first connection", Programming, []plotLine{{UnitConnP50Sec, "p50", false}, {UnitConnP99Sec, "p99", true}}, false},
	{"latency", "Data-plane latency", DataPlane, []plotLine{{UnitP50Sec, "p50", false}, {UnitP99Sec, "p99", true}}, true},
}

// plotSpec is one plot file: a group drawn for one kernel, or (group nil)
// the data-plane latency by rule position at one size.
type plotSpec struct {
	file, kernel, title string
	group               *plotGroup
	points              []*Point
}

// plotPlan lists the plots a set has data for: one per group and kernel
// with at least one positive value (a log axis cannot show zero).
func plotPlan(s *Set) []plotSpec {
	kernels := s.Kernels()
	slugs := kernelSlugs(kernels)
	var plan []plotSpec
	for _, kernel := range kernels {
		for gi := range plotGroups {
			g := &plotGroups[gi]
			var pts []*Point
			for _, p := range kernelPoints(s, kernel) {
				if (p.Mode == ModeDirect && !g.direct) || p.Error != "" {
					continue
				}
				if slices.ContainsFunc(g.lines, func(l plotLine) bool { v, ok := p.Median(g.bench, l.unit); return ok && v > 0 && p.Services > 0 }) {
					pts = append(pts, p)
				}
			}
			if len(pts) > 0 {
				plan = append(plan, plotSpec{
					file:   g.name + "-" + slugs[kernel] + ".svg",
					kernel: kernel,
					title:  g.title + ", " + kernel,
					group:  g,
					points: pts,
				})
			}
		}
		if spec, ok := positionPlan(kernel, slugs[kernel], kernelPoints(s, kernel)); ok {
			plan = append(plan, spec)
		}
	}
	return plan
}

// positionPlan plots, at the largest size that has them, each point's
// per-target latencies against their rule positions.
func positionPlan(kernel, slug string, pts []*Point) (plotSpec, bool) {
	size := 0
	for _, p := range pts {
		if p.Error == "" && len(p.Positions) > 0 {
			size = max(size, p.Services)
		}
	}
	var at []*Point
	for _, p := range pts {
		if p.Error == "" && len(p.Positions) > 0 && p.Services == size {
			at = append(at, p)
		}
	}
	if len(at) == 0 {
		return plotSpec{}, false
	}
	return plotSpec{
		file:   "position-" + slug + ".svg",
		kernel: kernel,
		title:  fmt.Sprintf("Latency by rule position, %d Services, %s", size, kernel),
		points: at,
	}, true
}

// Plot draws the set's plots into dir as SVG and returns their paths: per
// kernel, sync time, programming latency (rules and first connection) and
// data-plane latency against the Service count, one line per mode and
// implementation (and direct for data-plane latency). A point missing a
// value, and a failed point, is left out of its line, which joins its
// neighbours; a line with one point shows as a marker.
func Plot(dir string, set *Set) ([]string, error) {
	s := set.sorted()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, spec := range plotPlan(s) {
		name := filepath.Join(dir, spec.file)
		svg, err := drawPlot(spec, "svg")
		if err != nil {
			return files, fmt.Errorf("plotting %s: %w", name, err)
		}
		if err := os.WriteFile(name, svg, 0o644); err != nil {
			return files, err
		}
		files = append(files, name)
	}
	return files, nil
}

// drawPlot renders one plot in a gonum/plot format ("svg", "png"). gonum/plot panics on values it cannot place;
// the plan only passes positive ones, and the recover turns any surprise
// into an error instead of losing the rest of a long run's output.
func drawPlot(spec plotSpec, format string) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("gonum/plot: %v", r)
		}
	}()
	if spec.group == nil {
		return drawPositions(spec, format)
	}
	g := spec.group
	p := newPlot(spec.title)
	p.X.Label.Text = "Services (log scale)"

	multiEndpoints := len(endpointCounts(spec.points)) > 1
	type seriesKey struct {
		name      string
		endpoints int
	}
	var keys []seriesKey
	for _, pt := range spec.points {
		k := seriesKey{pt.series(), pt.EndpointsPerService}
		if !multiEndpoints {
			k.endpoints = 0
		}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}

	var xs, ys []float64
	colorIndex := 0
	for _, k := range keys {
		c := color.Color(color.Black)
		if k.name != ModeDirect {
			c = plotutil.Color(colorIndex)
			colorIndex++
		}
		for li, l := range g.lines {
			var xy plotter.XYs
			for _, pt := range spec.points {
				if pt.series() != k.name || (multiEndpoints && pt.EndpointsPerService != k.endpoints) {
					continue
				}
				if v, ok := pt.Median(g.bench, l.unit); ok && v > 0 && pt.Services > 0 {
					xy = append(xy, plotter.XY{X: float64(pt.Services), Y: v})
				}
			}
			if len(xy) == 0 {
				continue
			}
			slices.SortFunc(xy, func(a, b plotter.XY) int { return cmpFloat(a.X, b.X) })
			line, points, err := plotter.NewLinePoints(xy)
			if err != nil {
				return nil, err
			}
			line.Color = c
			line.Width = vg.Points(1.5)
			if l.dashed {
				line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
			}
			points.Color = c
			points.Shape = plotutil.Shape(li)
			points.Radius = vg.Points(2.5)
			p.Add(line, points)
			label := k.name + " " + l.label
			if multiEndpoints {
				label = fmt.Sprintf("%s ×%d endpoints %s", k.name, k.endpoints, l.label)
			}
			p.Legend.Add(label, line, points)
			for _, v := range xy {
				xs, ys = append(xs, v.X), append(ys, v.Y)
			}
		}
	}

	// The Service axis is logarithmic and ticked at the counts measured.
	xmin, xmax := slices.Min(xs), slices.Max(xs)
	p.X.Scale = plot.LogScale{}
	var xt plot.ConstantTicks
	for _, x := range uniqueSorted(xs) {
		xt = append(xt, plot.Tick{Value: x, Label: strconv.FormatFloat(x, 'f', -1, 64)})
	}
	p.X.Tick.Marker = xt
	p.X.Min, p.X.Max = xmin/1.3, xmax*1.3

	// Times that span decades (sync from 100 Services to 30k) read better
	// on a log axis; a narrow range reads better linear from zero.
	ymin, ymax := slices.Min(ys), slices.Max(ys)
	if ymax/ymin >= 30 {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logSecondTicks{}
		p.Y.Min, p.Y.Max = ymin/1.5, ymax*1.5
		p.Y.Label.Text = "time (log scale)"
	} else {
		p.Y.Tick.Marker = linearSecondTicks{}
		p.Y.Min, p.Y.Max = 0, ymax*1.15
		p.Y.Label.Text = "time"
	}

	return encode(p, format)
}

// newPlot is a plot with the set's fonts, a legend at the top left and a
// grid.
func newPlot(title string) *plot.Plot {
	p := plot.New()
	for _, f := range []*font.Font{&p.Title.TextStyle.Font, &p.X.Label.TextStyle.Font, &p.Y.Label.TextStyle.Font,
		&p.X.Tick.Label.Font, &p.Y.Tick.Label.Font, &p.Legend.TextStyle.Font} {
		f.Variant = "Sans"
	}
	p.Title.Text = title
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())
	return p
}

// drawPositions scatters each target's median latency against its
// Service's rule position, one colour per mode and implementation: a
// linear walk shows as a slope.
func drawPositions(spec plotSpec, format string) ([]byte, error) {
	p := newPlot(spec.title)
	p.X.Label.Text = "position of the Service's rule in the dispatch chain"
	p.Y.Label.Text = "p50 latency of the Service's requests"
	p.Y.Tick.Marker = linearSecondTicks{}
	xmax, ymax := 0.0, 0.0
	for i, pt := range spec.points {
		var xy plotter.XYs
		for _, pos := range pt.Positions {
			if pos.P50Sec > 0 {
				xy = append(xy, plotter.XY{X: float64(pos.Index), Y: pos.P50Sec})
				xmax, ymax = max(xmax, float64(pos.Index)), max(ymax, pos.P50Sec)
			}
		}
		if len(xy) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(xy)
		if err != nil {
			return nil, err
		}
		sc.Color = plotutil.Color(i)
		sc.Shape = plotutil.Shape(i)
		sc.Radius = vg.Points(2.5)
		p.Add(sc)
		p.Legend.Add(pt.series(), sc)
	}
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, xmax*1.05+1, 0, ymax*1.15
	return encode(p, format)
}

// encode renders a plot in a gonum/plot format ("svg", "png").
func encode(p *plot.Plot, format string) ([]byte, error) {
	wt, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, format)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return nil, err
	}
	if format != "svg" {
		return buf.Bytes(), nil
	}
	// The SVG names the font its layout was measured with, Liberation Sans,
	// and nothing else; a viewer without it falls back to its default font,
	// often a wider one that spills over the ticks. Arial and Helvetica have
	// Liberation Sans's metrics.
	return bytes.ReplaceAll(buf.Bytes(), []byte("font-family:Liberation Sans;"),
		[]byte("font-family:'Liberation Sans',Arial,Helvetica,sans-serif;")), nil
}

func endpointCounts(pts []*Point) []int {
	var eps []int
	for _, p := range pts {
		if !slices.Contains(eps, p.EndpointsPerService) {
			eps = append(eps, p.EndpointsPerService)
		}
	}
	return eps
}

func uniqueSorted(xs []float64) []float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return slices.Compact(s)
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// tickSeconds labels a tick in seconds with the fewest digits.
func tickSeconds(v float64) string {
	s := formatSeconds(v)
	num, unit, _ := strings.Cut(s, " ")
	if strings.Contains(num, ".") {
		num = strings.TrimRight(strings.TrimRight(num, "0"), ".")
	}
	return num + " " + unit
}

// linearSecondTicks are gonum's default ticks labelled as times.
type linearSecondTicks struct{}

func (linearSecondTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = tickSeconds(ticks[i].Value)
		}
	}
	return ticks
}

// logSecondTicks mark 1, 2 and 5 of every decade (only 1 when the range
// spans many decades), labelled as times.
type logSecondTicks struct{}

func (logSecondTicks) Ticks(min, max float64) []plot.Tick {
	lo, hi := int(math.Floor(math.Log10(min))), int(math.Ceil(math.Log10(max)))
	labelled := []int{1, 2, 5}
	if hi-lo > 3 {
		labelled = []int{1}
	}
	var ticks []plot.Tick
	for d := lo; d <= hi; d++ {
		for m := 1; m <= 9; m++ {
			v := float64(m) * math.Pow10(d)
			if v < min || v > max {
				continue
			}
			t := plot.Tick{Value: v}
			if slices.Contains(labelled, m) {
				t.Label = tickSeconds(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}
