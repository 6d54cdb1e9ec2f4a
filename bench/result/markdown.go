package result

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// column is one measured quantity in the Markdown tables.
type column struct {
	bench, unit, head string
}

// columns are the known metrics in table order; metrics not listed here get
// a column of their own after these (see setColumns).
var columns = []column{
	{Sync, UnitFullSec, "sync full"},
	{Sync, UnitColdFullSec, "sync cold"},
	{Sync, UnitPartialSec, "sync partial"},
	{Programming, UnitRulesP50Sec, "rules p50"},
	{Programming, UnitRulesP99Sec, "rules p99"},
	{Programming, UnitConnP50Sec, "conn p50"},
	{Programming, UnitConnP99Sec, "conn p99"},
	{DataPlane, UnitP50Sec, "p50"},
	{DataPlane, UnitP90Sec, "p90"},
	{DataPlane, UnitP99Sec, "p99"},
	{DataPlane, UnitReqPerSec, "req/s"},
	{DataPlane, UnitLost, "lost"},
	{Resources, UnitCPUSec, "CPU"},
	{Resources, UnitRSSBytes, "RSS"},
	{Rules, UnitIPTablesRules, "iptables rules"},
	{Rules, UnitIPVSServices, "IPVS services"},
	{Rules, UnitIPVSDests, "IPVS dests"},
	{Rules, UnitNFTRules, "nft rules"},
	{Rules, UnitNFTElements, "nft elements"},
}

// ratioNote says how to read a ratio cell.
const ratioNote = "In brackets, the ratio's 95% confidence interval (distribution-free: the interval that inverts " +
	"benchstat's Mann-Whitney U test, on log ratios). \"~\" means no significant difference: the U test's p > 0.05 " +
	"or the interval includes 1×. Counts of programmed state are exact."

// directColumns are the data-plane metrics compared against direct.
var directColumns = columns[7:11]

const glossary = `Columns: **sync full**: the first sync of a proxier restarted over its own rules; **sync cold**: the first sync of a proxier started on a node its --cleanup has just cleared, the same starting state for every implementation; **sync partial**: one sync after one Service changed.
**rules p50/p99**: from an EndpointSlice change to the node's proxier having applied it (its last-sync timestamp); **conn p50/p99**: to the first connection through the VIP that reaches the new endpoints (percentiles over the changes of one point, each made with the proxier idle; with fewer than 100 changes p99 is the slowest).
**p50/p90/p99** and **req/s**: request latency and throughput through a Service; **lost**: requests of a run that got no response within 20 s (the median over runs; "Lost requests" below the tables totals them by error).
**CPU** and **RSS**: CPU time and peak resident memory of the proxier.
**iptables rules**, **IPVS services**, **IPVS dests**, **nft rules** and **nft elements** (of the nftables mode's sets and maps, where it keeps one entry per Service): programmed state once synced.
A mode with a backend, e.g. **iptables-legacy** or **iptables-nft**, is the iptables mode with its rules written through that iptables backend.`

const kernelNote = `**Host-kernel and UML figures are not comparable.** A user-mode Linux (UML) guest runs its kernel
as an ordinary process, so everything measured in it is slower than on the host, by a factor that
depends on the workload. Every table, ratio and plot below keeps each kernel apart: no ratio and no
plot panel ever mixes two kernels.`

// WriteMarkdown writes a summary of the set for people: environment, the
// medians of every point per kernel and size, the reference ÷ kube-proxy
// and mode ÷ direct ratios, and the failed points. plots are the file names
// of plots to embed, relative to where the Markdown goes, as written by
// Plot; each lands in its kernel's section.
func WriteMarkdown(w io.Writer, set *Set, plots ...string) error {
	s := set.sorted()
	var b bytes.Buffer
	label := s.Label
	if label == "" {
		label = "(no label)"
	}
	fmt.Fprintf(&b, "# Benchmark results: %s\n\n", label)
	if line := runLine(s); line != "" {
		fmt.Fprintf(&b, "%s\n\n", line)
	}
	fmt.Fprintf(&b, "%s\n\n", kernelNote)
	b.WriteString("Compare two result sets with `proxymodes report OLD NEW` (or `make report A=OLD B=NEW`).\n" +
		"`bench.txt` is in Go benchmark format for benchstat, e.g. `benchstat -col /impl bench.txt`; to compare two sets with benchstat,\n" +
		"give it `-table ''` (the commit and versions at the top of each file would otherwise split every table in two).\n\n")

	writeNFTablesLead(&b, s)
	b.WriteString("## Environment\n\n")
	writeTable(&b, 2, []string{"", ""}, envRows(&s.Env))
	b.WriteString("## Sweep\n\n")
	writeTable(&b, 2, []string{"", ""}, sweepRows(&s.Sweep))

	var failed [][]string
	for i := range s.Points {
		if p := &s.Points[i]; p.Error != "" {
			failed = append(failed, []string{p.Name(), p.Error})
		}
	}
	if len(failed) > 0 {
		b.WriteString("## Failed points\n\nThese points failed. The median tables keep what they measured before failing, marked (failed); " +
			"ratios and plots leave them out.\n\n")
		for _, f := range failed {
			fmt.Fprintf(&b, "- %s: %s\n", f[0], oneLine(f[1]))
		}
		b.WriteString("\n")
	}

	var lost []string
	for i := range s.Points {
		if p := &s.Points[i]; len(p.LostBy) > 0 {
			lost = append(lost, fmt.Sprintf("- %s: %s\n", p.Name(), oneLine(CountsByMessage(p.LostBy))))
		}
	}
	if len(lost) > 0 {
		b.WriteString("## Lost requests\n\nRequests that got no response within the per-request timeout, by the requester's error. " +
			"Their latency is in no percentile; the **lost** column counts them per run.\n\n")
		b.WriteString(strings.Join(lost, ""))
		b.WriteString("\n")
	}

	if len(s.Skipped) > 0 {
		b.WriteString("## Not measured\n\nThe sweep skipped these points, each for the reason given.\n\n")
		for _, k := range s.Skipped {
			what := modeLabel(k.Mode, k.Backend)
			if k.Impl != "" {
				what += "/" + k.Impl
			}
			fmt.Fprintf(&b, "- %s, %s, %d Services: %s\n", k.Kernel, what, k.Services, oneLine(k.Reason))
		}
		b.WriteString("\n")
	}

	if len(s.Points) == 0 {
		b.WriteString("This set has no points.\n")
	} else {
		b.WriteString(glossary + "\n\n")
	}

	plan := plotPlan(s)
	placed := map[string]bool{}
	cols := setColumns(s)
	for _, kernel := range s.Kernels() {
		pts := kernelPoints(s, kernel)
		fmt.Fprintf(&b, "## %s\n\n", kernel)
		writeMedians(&b, pts, cols)
		writeImplRatios(&b, pts, cols)
		writeDirectRatios(&b, pts)
		var imgs []string
		for _, name := range plots {
			for _, spec := range plan {
				if spec.kernel == kernel && spec.file == path.Base(name) {
					imgs = append(imgs, fmt.Sprintf("![%s](%s)", spec.title, name))
					placed[name] = true
				}
			}
		}
		if len(imgs) > 0 {
			b.WriteString("### Plots\n\n")
			for _, img := range imgs {
				b.WriteString(img + "\n\n")
			}
		}
	}
	var rest []string
	for _, name := range plots {
		if !placed[name] {
			rest = append(rest, fmt.Sprintf("![%s](%s)", name, name))
		}
	}
	if len(rest) > 0 {
		b.WriteString("## Other plots\n\n")
		for _, img := range rest {
			b.WriteString(img + "\n\n")
		}
	}
	out := bytes.TrimRight(b.Bytes(), "\n")
	_, err := w.Write(append(out, '\n'))
	return err
}

func runLine(s *Set) string {
	const layout = "2006-01-02 15:04 MST"
	var parts []string
	if !s.Started.IsZero() {
		line := "Run on " + s.Started.UTC().Format(layout)
		if !s.Finished.IsZero() {
			line += fmt.Sprintf(" for %s", s.Finished.Sub(s.Started).Round(time.Second))
		}
		parts = append(parts, line)
	}
	if s.Env.Commit != "" {
		parts = append(parts, fmt.Sprintf("proxymodes commit `%s`", s.Env.Commit))
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, ", ") + "."
}

func envRows(e *Env) [][]string {
	var rows [][]string
	add := func(k, v string) {
		if v != "" && v != "0" {
			rows = append(rows, []string{k, v})
		}
	}
	add("host kernel", e.Kernel)
	add("UML kernel", e.UMLKernel)
	add("OS/arch", strings.Trim(e.OS+"/"+e.Arch, "/"))
	add("CPU", e.CPU)
	add("cores", strconv.Itoa(e.Cores))
	if e.MemoryBytes > 0 {
		add("memory", formatBytes(float64(e.MemoryBytes)))
	}
	add("Go", e.GoVersion)
	add("Kubernetes", e.Kubernetes)
	add("proxymodes commit", e.Commit)
	add("host's iptables", e.IPTablesBackend)
	for _, k := range sortedKeys(e.Extra) {
		add(k, e.Extra[k])
	}
	return rows
}

func sweepRows(sw *Sweep) [][]string {
	var rows [][]string
	add := func(k, v string) {
		if v != "" && v != "0" {
			rows = append(rows, []string{k, v})
		}
	}
	ints := func(xs []int) string {
		var ss []string
		for _, x := range xs {
			ss = append(ss, strconv.Itoa(x))
		}
		return strings.Join(ss, ", ")
	}
	add("Services", ints(sw.Services))
	add("endpoints per Service", strconv.Itoa(sw.EndpointsPerService))
	add("modes", strings.Join(sw.Modes, ", "))
	add("implementations", strings.Join(sw.Impls, ", "))
	add("kernels", strings.Join(sw.Kernels, ", "))
	add("iptables backends", strings.Join(sw.Backends, ", "))
	if sw.Direct {
		add("direct baseline", "yes (load sent straight to a pod IP)")
	}
	add("repetitions", strconv.Itoa(sw.Repetitions))
	add("requests per repetition", strconv.Itoa(sw.Requests))
	add("concurrency", strconv.Itoa(sw.Concurrency))
	add("nodes", strconv.Itoa(sw.Nodes))
	for _, k := range sortedKeys(sw.Extra) {
		add(k, sw.Extra[k])
	}
	return rows
}

// CountsByMessage lists error counts as "3 × message; 1 × other", by
// message.
func CountsByMessage(byMsg map[string]int) string {
	if len(byMsg) == 0 {
		return "the requester gave no error message"
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(byMsg)) {
		out = append(out, fmt.Sprintf("%d × %s", byMsg[k], k))
	}
	return strings.Join(out, "; ")
}

// setColumns returns the known columns followed by one per metric the set
// has that is not known.
func setColumns(s *Set) []column {
	cols := slices.Clone(columns)
	var extra []Metric
	for _, p := range s.Points {
		for _, m := range p.Metrics {
			known := slices.ContainsFunc(cols, func(c column) bool { return c.bench == m.Bench && c.unit == m.Unit })
			dup := slices.ContainsFunc(extra, func(e Metric) bool { return e.Bench == m.Bench && e.Unit == m.Unit })
			if !known && !dup {
				extra = append(extra, Metric{Bench: m.Bench, Unit: m.Unit})
			}
		}
	}
	slices.SortFunc(extra, compareMetrics)
	for _, m := range extra {
		cols = append(cols, column{m.Bench, m.Unit, m.Bench + " " + m.Unit})
	}
	return cols
}

func kernelPoints(s *Set, kernel string) []*Point {
	var pts []*Point
	for i := range s.Points {
		if s.Points[i].Kernel == kernel {
			pts = append(pts, &s.Points[i])
		}
	}
	return pts
}

// size is a point's Services and endpoints per Service.
type size struct{ services, endpoints int }

func (z size) String() string { return fmt.Sprintf("%d × %d", z.services, z.endpoints) }

func sizes(pts []*Point) []size {
	var zs []size
	for _, p := range pts {
		if z := (size{p.Services, p.EndpointsPerService}); !slices.Contains(zs, z) {
			zs = append(zs, z)
		}
	}
	return zs
}

// present keeps the columns that have a value in at least one point, so a
// host run without IPVS has no empty IPVS columns.
func present(cols []column, pts []*Point) []column {
	var out []column
	for _, c := range cols {
		if slices.ContainsFunc(pts, func(p *Point) bool { _, ok := p.Median(c.bench, c.unit); return ok }) {
			out = append(out, c)
		}
	}
	return out
}

func implCell(p *Point) string {
	impl := p.Impl
	if p.Mode == ModeDirect && impl == "" {
		impl = "(no proxy)"
	}
	if p.Error != "" {
		impl += " (failed)"
	}
	return impl
}

func writeMedians(b *bytes.Buffer, pts []*Point, all []column) {
	cols := present(all, pts)
	b.WriteString("### Medians\n\nMedian of the repetitions ± its 95% confidence interval, computed as benchstat does " +
		"(order statistics, no assumption about the distribution; ±∞ with fewer than " + strconv.Itoa(MinRepeatsForMedianCI) +
		" repetitions); " + missing + " means not measured.\n\n")
	for _, z := range sizes(pts) {
		fmt.Fprintf(b, "#### %d Services, %d endpoints each\n\n", z.services, z.endpoints)
		head := []string{"mode", "impl"}
		for _, c := range cols {
			head = append(head, c.head)
		}
		var rows [][]string
		for _, p := range pts {
			if (size{p.Services, p.EndpointsPerService}) != z {
				continue
			}
			row := []string{p.ModeLabel(), implCell(p)}
			for _, c := range cols {
				if sum, ok := Summarize(p.Samples(c.bench, c.unit)); ok {
					row = append(row, medianCell(c, sum))
				} else {
					row = append(row, missing)
				}
			}
			rows = append(rows, row)
		}
		writeTable(b, 2, head, rows)
	}
}

// exact says whether a column counts programmed state: every repetition
// gives the same number, so it has no interval and its ratio is exact.
func exact(c column) bool { return c.bench == Rules }

func medianCell(c column, s Summary) string {
	if exact(c) {
		return formatValue(c.unit, s.Median)
	}
	return s.CIString(c.unit)
}

// ratio renders num ÷ den for a table: with its 95% interval, and "~" when
// the difference is not significant (CompareSamples); exact columns get
// the plain ratio. False when either side is missing or not positive.
func ratio(num, den *Point, c column) (string, bool) {
	if exact(c) {
		n, ok1 := num.Median(c.bench, c.unit)
		d, ok2 := den.Median(c.bench, c.unit)
		if !ok1 || !ok2 || d == 0 {
			return "", false
		}
		return formatRatio(n / d), true
	}
	r, ok := CompareSamples(num.Samples(c.bench, c.unit), den.Samples(c.bench, c.unit))
	if !ok {
		return "", false
	}
	return r.String(), true
}

// implPair is a reference point and another implementation's point of
// the same mode and size, both successful.
type implPair struct{ ref, other *Point }

func implPairs(pts []*Point, other string) []implPair {
	var pairs []implPair
	for _, ref := range pts {
		if ref.Impl != ImplReference || ref.Error != "" {
			continue
		}
		for _, o := range pts {
			if o.Impl == other && o.Error == "" && o.Mode == ref.Mode && o.Backend == ref.Backend && o.Services == ref.Services && o.EndpointsPerService == ref.EndpointsPerService {
				pairs = append(pairs, implPair{ref, o})
			}
		}
	}
	return pairs
}

// writeImplRatios writes reference ÷ kube-proxy, and reference ÷ its twin
// where the set is an A/A check.
func writeImplRatios(b *bytes.Buffer, pts []*Point, all []column) {
	twins := implPairs(pts, ImplReferenceTwin)
	for _, other := range []string{ImplKubeProxy, ImplReferenceTwin} {
		pairs := implPairs(pts, other)
		if other == ImplReferenceTwin && len(pairs) == 0 {
			continue
		}
		if other == ImplKubeProxy && len(pairs) == 0 && len(twins) > 0 {
			continue // an A/A set: no kube-proxy to compare with
		}
		fmt.Fprintf(b, "### reference ÷ %s\n\n", other)
		if len(pairs) == 0 {
			b.WriteString("No mode has a reference and a kube-proxy point that both succeeded in this kernel.\n\n")
			continue
		}
		if other == ImplReferenceTwin {
			b.WriteString("The A/A check: the same reference proxier measured twice in a row, as if it were two " +
				"implementations. Every ratio should be ~; a significant one is a flaw of the method, not a difference of proxies. ")
			b.WriteString(aaCheck(pairs, all).String() + "\n\n")
		} else {
			b.WriteString("The reference proxier's median divided by kube-proxy's, in the same kernel, mode and size. " +
				"Below 1× the reference is faster or smaller; for req/s, above 1× it serves more. ")
		}
		b.WriteString(ratioNote + "\n\n")
		var rows []ratioRow
		for _, p := range pairs {
			rows = append(rows, ratioRow{[]string{p.ref.ModeLabel(), size{p.ref.Services, p.ref.EndpointsPerService}.String()}, p.ref, p.other})
		}
		writeRatioTable(b, []string{"mode", "Services × endpoints"}, rows, all)
	}
}

// ratioRow is one line of a ratio table: its text cells, then num ÷ den
// for each column.
type ratioRow struct {
	labels   []string
	num, den *Point
}

// writeRatioTable writes the ratios of rows in those of cols that at least
// one row has, after the text columns head names.
func writeRatioTable(b *bytes.Buffer, head []string, rows []ratioRow, all []column) {
	var cols []column
	for _, c := range all {
		if slices.ContainsFunc(rows, func(r ratioRow) bool { _, ok := ratio(r.num, r.den, c); return ok }) {
			cols = append(cols, c)
		}
	}
	left := len(head)
	head = slices.Clone(head)
	for _, c := range cols {
		head = append(head, c.head)
	}
	var cells [][]string
	for _, r := range rows {
		row := slices.Clone(r.labels)
		for _, c := range cols {
			if v, ok := ratio(r.num, r.den, c); ok {
				row = append(row, v)
			} else {
				row = append(row, missing)
			}
		}
		cells = append(cells, row)
	}
	writeTable(b, left, head, cells)
}

// leadColumns are what the nftables ÷ iptables comparison that opens a
// set shows: a full sync, the latency of programming one endpoint change,
// and the data plane.
var leadColumns = []column{columns[0], columns[1], columns[3], columns[4], columns[5], columns[6], columns[7], columns[9]}

// nftIPTPair is an nftables point and an iptables point (of one backend)
// of the same implementation, kernel and size, both successful.
type nftIPTPair struct{ nft, ipt *Point }

func nftIPTPairs(pts []*Point) []nftIPTPair {
	var pairs []nftIPTPair
	for _, n := range pts {
		if n.Mode != ModeNFTables || n.Error != "" {
			continue
		}
		for _, i := range pts {
			if i.Mode == ModeIPTables && i.Error == "" && i.Impl == n.Impl && i.Services == n.Services && i.EndpointsPerService == n.EndpointsPerService {
				pairs = append(pairs, nftIPTPair{n, i})
			}
		}
	}
	return pairs
}

// writeNFTablesLead opens a set that measured both nftables and iptables
// with their comparison, per kernel: the mode users are moving to against
// the one they are leaving, then both against direct. Sets without both
// modes get nothing.
func writeNFTablesLead(b *bytes.Buffer, s *Set) {
	type kernelPairs struct {
		kernel string
		pairs  []nftIPTPair
		pts    []*Point
	}
	var all []kernelPairs
	for _, kernel := range s.Kernels() {
		pts := kernelPoints(s, kernel)
		if pairs := nftIPTPairs(pts); len(pairs) > 0 {
			all = append(all, kernelPairs{kernel, pairs, pts})
		}
	}
	if len(all) == 0 {
		return
	}
	b.WriteString("## nftables ÷ iptables\n\n")
	b.WriteString("Each implementation's nftables median divided by its own iptables median, for each iptables backend, " +
		"in the same kernel and at the same size: below 1× nftables is faster. **sync full** and **sync cold** are whole syncs, " +
		"**rules** and **conn** p50/p99 the latency of programming one endpoint change, **p50** and **p99** a request's latency " +
		"through a Service. " + ratioNote + "\n\n")
	for _, k := range all {
		if len(all) > 1 {
			fmt.Fprintf(b, "### %s\n\n", k.kernel)
		}
		var rows []ratioRow
		for _, p := range k.pairs {
			rows = append(rows, ratioRow{[]string{p.nft.Impl, p.ipt.ModeLabel(), size{p.nft.Services, p.nft.EndpointsPerService}.String()}, p.nft, p.ipt})
		}
		writeRatioTable(b, []string{"impl", "nftables ÷", "Services × endpoints"}, rows, leadColumns)
		var dataPlane []*Point
		for _, p := range k.pts {
			if p.Mode == ModeNFTables || p.Mode == ModeIPTables || p.Mode == ModeDirect {
				dataPlane = append(dataPlane, p)
			}
		}
		writeDirectTable(b, "Both modes' data-plane medians divided by direct's (load sent straight to a pod IP) at the same size: what each adds to a request.",
			"Brackets and ~ as above.", dataPlane)
	}
}

func writeDirectRatios(b *bytes.Buffer, pts []*Point) {
	b.WriteString("### each mode ÷ direct\n\n")
	writeDirectTable(b, "Each mode's data-plane median divided by direct's (load sent straight to a pod IP, no proxy) "+
		"at the same size: what the proxy adds.", ratioNote, pts)
}

// writeDirectTable writes the ratio of each proxied point's data-plane
// medians to direct's at its size, after intro and how to read a ratio.
func writeDirectTable(b *bytes.Buffer, intro, note string, pts []*Point) {
	head := []string{"mode", "impl", "Services × endpoints"}
	for _, c := range directColumns {
		head = append(head, c.head)
	}
	var rows [][]string
	for _, p := range pts {
		if p.Mode == ModeDirect || p.Error != "" {
			continue
		}
		var direct *Point
		for _, d := range pts {
			if d.Mode == ModeDirect && d.Error == "" && d.Services == p.Services && d.EndpointsPerService == p.EndpointsPerService {
				direct = d
			}
		}
		if direct == nil {
			continue
		}
		row := []string{p.ModeLabel(), implCell(p), size{p.Services, p.EndpointsPerService}.String()}
		any := false
		for _, c := range directColumns {
			if r, ok := ratio(p, direct, c); ok {
				row = append(row, r)
				any = true
			} else {
				row = append(row, missing)
			}
		}
		if any {
			rows = append(rows, row)
		}
	}
	if len(rows) == 0 {
		b.WriteString("No data-plane point has a direct baseline of the same size in this kernel (failed points left out).\n\n")
		return
	}
	b.WriteString(intro + " Latency above 1× is slower than direct; req/s below 1× serves less. " + note + "\n\n")
	writeTable(b, 3, head, rows)
}

// writeTable writes a Markdown table whose first left columns are text and
// the rest right-aligned numbers.
func writeTable(b *bytes.Buffer, left int, head []string, rows [][]string) {
	cell := func(s string) string { return strings.ReplaceAll(oneLine(s), "|", `\|`) }
	b.WriteString("|")
	for _, h := range head {
		b.WriteString(" " + cell(h) + " |")
	}
	b.WriteString("\n|")
	for i := range head {
		if i < left {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	for _, row := range rows {
		b.WriteString("|")
		for _, c := range row {
			b.WriteString(" " + cell(c) + " |")
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
