// Package result is the data model of one benchmark run (a result set) and
// everything that writes it: JSON to keep it, Go benchmark lines for
// benchstat, a Markdown summary and plots for people.
//
// A result set lives in results/<YYYY-MM-DD>-<label>/ (see Dir and WriteAll).
// Its JSON is the source of truth; the other files can be rendered again from
// it (proxymodes report DIR).
//
// Figures measured in different kernels are never compared with each other:
// a user-mode Linux guest is much slower than the host, so a ratio or a shared
// plot line across kernels would measure the kernel, not the proxy mode.
// Every writer here groups by Point.Kernel first.
package result

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// SchemaVersion is written into results.json. ReadJSON refuses any other
// version rather than guess at fields whose meaning may have changed.
const SchemaVersion = "proxymodes.bench/v1"

// Benchmark families. Each is one Go benchmark (BenchmarkSync, ...) in
// bench.txt, and each unit below belongs to exactly one family.
const (
	Sync        = "Sync"        // proxier sync time
	Programming = "Programming" // endpoints changed -> rules applied -> first connection to the new endpoints
	DataPlane   = "DataPlane"   // request latency and throughput through a Service
	Resources   = "Resources"   // the proxier's CPU and memory
	Rules       = "Rules"       // size of the programmed state
)

// Units, in Go benchmark style: a value's unit says what it measures, and
// the "-sec" and "-B" suffixes let benchstat scale them (ms, MiB, ...).
const (
	// Sync
	UnitFullSec = "full-sec" // the first (full) sync after a restart over the proxier's own rules
	// UnitColdFullSec is the first sync of a proxier started on a node
	// that its --cleanup has just cleared: the state a fresh node has,
	// the same for every implementation.
	UnitColdFullSec = "cold-full-sec"
	UnitPartialSec  = "partial-sec" // one sync after a single Service changed

	// Programming: per-Service latency percentiles over one repetition.
	UnitRulesP50Sec = "rules-p50-sec" // EndpointSlice changed until the proxier applied it
	UnitRulesP99Sec = "rules-p99-sec"
	UnitConnP50Sec  = "conn-p50-sec" // EndpointSlice changed until a connection reaches a new endpoint
	UnitConnP99Sec  = "conn-p99-sec"

	// DataPlane: request latency percentiles and throughput.
	UnitP50Sec    = "p50-sec"
	UnitP90Sec    = "p90-sec"
	UnitP99Sec    = "p99-sec"
	UnitReqPerSec = "req/s"
	// UnitLost counts a run's requests that got no response within the
	// per-request timeout. A benchmark records loss as a figure, as hey
	// and wrk do, rather than dropping the point's other figures.
	UnitLost = "lost-requests"

	// Resources of the proxier process(es) over the run.
	UnitCPUSec   = "cpu-sec"
	UnitRSSBytes = "rss-B" // peak resident set size

	// Rules: programmed state once synced.
	UnitIPTablesRules = "iptables-rules"
	UnitIPVSServices  = "ipvs-services"
	UnitIPVSDests     = "ipvs-dests"
	// The nftables mode's table holds rules and, apart from them, the
	// elements of its sets and maps: a Service's dispatch is a map
	// element, not a rule, so counting rules alone would miss it.
	UnitNFTRules    = "nft-rules"
	UnitNFTElements = "nft-elements"
)

// Modes and implementations.
const (
	ModeUserspace = "userspace"
	ModeIPTables  = "iptables"
	ModeIPVS      = "ipvs"
	ModeNFTables  = "nftables"
	// ModeDirect sends the load straight to a pod IP: no proxy at all, the
	// floor every mode is measured against. Its points have no Impl.
	ModeDirect = "direct"

	ImplReference = "reference"
	ImplKubeProxy = "kube-proxy"
	// ImplReferenceTwin is the reference proxier measured a second time,
	// right after itself, as if it were another implementation: the A/A
	// check. Any significant difference it shows is the method's.
	ImplReferenceTwin = "reference-twin"
)

// iptables backends: the kernel API a proxier's iptables rules go
// through. Where the kernel has both, one set can measure the iptables
// mode with each, as two curves (Point.Backend).
const (
	BackendLegacy = "legacy" // x_tables, iptables-legacy
	BackendNFT    = "nft"    // nf_tables through iptables-nft
)

// Set is one benchmark run: what was asked (Sweep), where it ran (Env) and
// what was measured (Points).
type Set struct {
	Schema   string    `json:"schema"`
	Label    string    `json:"label"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Env      Env       `json:"env"`
	Sweep    Sweep     `json:"sweep"`
	Points   []Point   `json:"points"`
	// Skipped are points the sweep did not run, and why.
	Skipped []Skip `json:"skipped,omitempty"`
}

// Skip is a point left out of a sweep on purpose.
type Skip struct {
	Kernel   string `json:"kernel"`
	Mode     string `json:"mode"`
	Backend  string `json:"backend,omitempty"` // as Point.Backend
	Impl     string `json:"impl"`
	Services int    `json:"services"`
	Reason   string `json:"reason"`
}

// Env is the machine and the versions a run used.
type Env struct {
	Kernel          string `json:"kernel"`              // host kernel release (uname -r)
	UMLKernel       string `json:"umlKernel,omitempty"` // user-mode Linux guest release, when a point ran in it
	OS              string `json:"os"`                  // GOOS
	Arch            string `json:"arch"`                // GOARCH
	CPU             string `json:"cpu"`                 // model name
	Cores           int    `json:"cores"`
	MemoryBytes     int64  `json:"memoryBytes"`
	GoVersion       string `json:"goVersion"`
	Kubernetes      string `json:"kubernetes"`      // e.g. v1.37.2
	Commit          string `json:"commit"`          // proxymodes git commit
	IPTablesBackend string `json:"iptablesBackend"` // the host's own iptables, nft or legacy; each iptables point has its Backend
	// Extra holds anything else worth keeping; keys should be lower-case
	// words joined by '-' so they can also be benchstat configuration keys.
	Extra map[string]string `json:"extra,omitempty"`
}

// Sweep is what the run was asked to measure.
type Sweep struct {
	Services            []int             `json:"services"`
	EndpointsPerService int               `json:"endpointsPerService"`
	Modes               []string          `json:"modes"`
	Impls               []string          `json:"impls"`
	Kernels             []string          `json:"kernels,omitempty"`  // "host", "uml"
	Backends            []string          `json:"backends,omitempty"` // iptables backends the iptables mode ran with
	Direct              bool              `json:"direct"`             // whether a direct (no proxy) baseline was measured
	Repetitions         int               `json:"repetitions"`
	Requests            int               `json:"requests"` // data-plane requests per repetition
	Concurrency         int               `json:"concurrency"`
	Nodes               int               `json:"nodes"`
	Extra               map[string]string `json:"extra,omitempty"`
}

// Point is one combination of kernel, mode, implementation and size.
type Point struct {
	// Kernel is where the data plane ran, e.g. "host 6.18.5" or "uml 6.1.176".
	// Points with different kernels are never compared with each other.
	Kernel              string   `json:"kernel"`
	Mode                string   `json:"mode"`
	Backend             string   `json:"backend,omitempty"` // iptables points: BackendLegacy or BackendNFT, two curves of one mode
	Impl                string   `json:"impl"`              // "" for ModeDirect
	Services            int      `json:"services"`
	EndpointsPerService int      `json:"endpointsPerService"`
	Metrics             []Metric `json:"metrics"`
	// Positions are the data-plane latency of each load target by its
	// Service's place in the rules a packet walks (iptables and userspace
	// modes), so that the cost of a linear walk shows.
	Positions []Position `json:"positions,omitempty"`
	// Error is why the point failed; it keeps whatever metrics it got.
	Error string `json:"error,omitempty"`
	// LostBy counts the point's lost requests (UnitLost) by the
	// requester's error message, over every repetition.
	LostBy map[string]int `json:"lostBy,omitempty"`
}

// Position is one load target's share of one repetition: where its
// Service's dispatch rule sits (0 is the first rule a packet meets in the
// chain that dispatches Services) and the median latency of its requests.
type Position struct {
	Rep    int     `json:"rep"`
	Index  int     `json:"index"`
	P50Sec float64 `json:"p50Sec"`
}

// Metric is every repetition's value of one unit of one benchmark family.
type Metric struct {
	Bench   string    `json:"bench"`
	Unit    string    `json:"unit"`
	Samples []float64 `json:"samples"`
}

// Add appends samples to the point's (bench, unit) metric, creating it if
// needed.
func (p *Point) Add(bench, unit string, v ...float64) {
	if m := p.Metric(bench, unit); m != nil {
		m.Samples = append(m.Samples, v...)
		return
	}
	p.Metrics = append(p.Metrics, Metric{Bench: bench, Unit: unit, Samples: append([]float64(nil), v...)})
}

// Metric returns the point's (bench, unit) metric, or nil.
func (p *Point) Metric(bench, unit string) *Metric {
	for i := range p.Metrics {
		if p.Metrics[i].Bench == bench && p.Metrics[i].Unit == unit {
			return &p.Metrics[i]
		}
	}
	return nil
}

// Samples returns the point's samples of (bench, unit), or nil.
func (p *Point) Samples(bench, unit string) []float64 {
	if m := p.Metric(bench, unit); m != nil {
		return m.Samples
	}
	return nil
}

// Median returns the median of (bench, unit), and false when the point has
// no sample of it.
func (p *Point) Median(bench, unit string) (float64, bool) {
	if m := p.Metric(bench, unit); m != nil {
		return m.Median()
	}
	return 0, false
}

// Median returns the median of the samples, and false when there are none.
func (m *Metric) Median() (float64, bool) {
	n := len(m.Samples)
	if n == 0 {
		return 0, false
	}
	s := slices.Sorted(slices.Values(m.Samples))
	if n%2 == 1 {
		return s[n/2], true
	}
	return (s[n/2-1] + s[n/2]) / 2, true
}

// Name is a short human name of the point, e.g. "iptables-nft/reference,
// 1000 Services × 2 endpoints (host 6.18.5)".
func (p *Point) Name() string {
	return fmt.Sprintf("%s, %d Services × %d endpoints (%s)", p.series(), p.Services, p.EndpointsPerService, p.Kernel)
}

// series is the point's line in a plot and row label in a table: the mode
// (with its backend) and implementation.
func (p *Point) series() string {
	if p.Impl == "" {
		return p.ModeLabel()
	}
	return p.ModeLabel() + "/" + p.Impl
}

// ModeLabel is the mode as tables show it: with the backend where the
// point has one, e.g. "iptables-legacy".
func (p *Point) ModeLabel() string { return modeLabel(p.Mode, p.Backend) }

func modeLabel(mode, backend string) string {
	if backend == "" {
		return mode
	}
	return mode + "-" + backend
}

// Find returns the point with these coordinates, or nil.
func (s *Set) Find(kernel, mode, backend, impl string, services, endpoints int) *Point {
	for i := range s.Points {
		p := &s.Points[i]
		if p.Kernel == kernel && p.Mode == mode && p.Backend == backend && p.Impl == impl && p.Services == services && p.EndpointsPerService == endpoints {
			return p
		}
	}
	return nil
}

// Kernels returns the distinct Point.Kernel values, host kernels first.
func (s *Set) Kernels() []string {
	var ks []string
	for _, p := range s.Points {
		if !slices.Contains(ks, p.Kernel) {
			ks = append(ks, p.Kernel)
		}
	}
	slices.SortFunc(ks, compareKernels)
	return ks
}

// Validate reports the first thing that would make the set unreadable or
// misleading: a point without a kernel, a non-finite sample, a unit that
// does not fit in a benchmark line.
func (s *Set) Validate() error {
	for i := range s.Points {
		p := &s.Points[i]
		where := fmt.Sprintf("point %d (%s)", i, p.Name())
		switch {
		case strings.TrimSpace(p.Kernel) == "":
			return fmt.Errorf("%s has no Kernel: set it to where the data plane ran, e.g. \"host 6.18.5\" or \"uml 6.1.176\"", where)
		case p.Mode == "":
			return fmt.Errorf("%s has no Mode: set it to userspace, iptables, ipvs, nftables or direct", where)
		case p.Mode == ModeDirect && p.Impl != "":
			return fmt.Errorf("%s is a direct point with Impl %q: direct has no proxy, leave Impl empty", where, p.Impl)
		case p.Mode != ModeDirect && p.Impl == "":
			return fmt.Errorf("%s has no Impl: set it to reference or kube-proxy", where)
		case p.Backend != "" && p.Backend != BackendLegacy && p.Backend != BackendNFT:
			return fmt.Errorf("%s has Backend %q: use %s or %s (the iptables backend), or leave it empty", where, p.Backend, BackendLegacy, BackendNFT)
		case p.Backend != "" && (p.Mode == ModeDirect || p.Mode == ModeNFTables):
			return fmt.Errorf("%s is a %s point with Backend %q: it writes no iptables rules, leave Backend empty", where, p.Mode, p.Backend)
		}
		for _, m := range p.Metrics {
			if m.Bench == "" || strings.ContainsAny(m.Bench, " \t\n/") {
				return fmt.Errorf("%s has a metric with bench name %q: use a family constant such as result.Sync", where, m.Bench)
			}
			if m.Unit == "" || strings.ContainsAny(m.Unit, " \t\n") {
				return fmt.Errorf("%s has a %s metric with unit %q: units must be one word, e.g. result.UnitFullSec", where, m.Bench, m.Unit)
			}
			for _, v := range m.Samples {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("%s has a %v sample of %s %s: leave a failed measurement out and say why in Point.Error", where, v, m.Bench, m.Unit)
				}
			}
		}
	}
	return nil
}

// sorted returns a copy of the set with points and metrics in a stable
// order, so that writing the same measurements gives the same bytes.
func (s *Set) sorted() *Set {
	c := *s
	c.Points = make([]Point, len(s.Points))
	for i, p := range s.Points {
		p.Metrics = slices.Clone(p.Metrics)
		slices.SortStableFunc(p.Metrics, compareMetrics)
		c.Points[i] = p
	}
	slices.SortStableFunc(c.Points, comparePoints)
	return &c
}

var (
	modeOrder    = []string{ModeUserspace, ModeIPTables, ModeIPVS, ModeNFTables, ModeDirect}
	backendOrder = []string{"", BackendLegacy, BackendNFT}
	implOrder    = []string{ImplReference, ImplKubeProxy, ImplReferenceTwin}
	familyOrder  = []string{Sync, Programming, DataPlane, Resources, Rules}
	unitOrder    = []string{
		UnitFullSec, UnitColdFullSec, UnitPartialSec,
		UnitRulesP50Sec, UnitRulesP99Sec, UnitConnP50Sec, UnitConnP99Sec,
		UnitP50Sec, UnitP90Sec, UnitP99Sec, UnitReqPerSec, UnitLost,
		UnitCPUSec, UnitRSSBytes,
		UnitIPTablesRules, UnitIPVSServices, UnitIPVSDests, UnitNFTRules, UnitNFTElements,
	}
)

// compareKnown orders known values by their position in order, before
// unknown ones, which sort alphabetically.
func compareKnown(order []string, a, b string) int {
	ia, ib := slices.Index(order, a), slices.Index(order, b)
	if ia < 0 {
		ia = len(order)
	}
	if ib < 0 {
		ib = len(order)
	}
	return cmp.Or(cmp.Compare(ia, ib), strings.Compare(a, b))
}

// compareKernels puts host kernels before UML ones, then sorts by name.
func compareKernels(a, b string) int {
	rank := func(k string) int {
		switch kernelKind(k) {
		case "host":
			return 0
		case "uml":
			return 1
		}
		return 2
	}
	return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a, b))
}

func comparePoints(a, b Point) int {
	return cmp.Or(
		compareKernels(a.Kernel, b.Kernel),
		cmp.Compare(a.Services, b.Services),
		cmp.Compare(a.EndpointsPerService, b.EndpointsPerService),
		compareKnown(modeOrder, a.Mode, b.Mode),
		compareKnown(backendOrder, a.Backend, b.Backend),
		compareKnown(implOrder, a.Impl, b.Impl),
	)
}

func compareMetrics(a, b Metric) int {
	return cmp.Or(compareKnown(familyOrder, a.Bench, b.Bench), compareKnown(unitOrder, a.Unit, b.Unit))
}

// kernelKind is the first word of a Point.Kernel: "host", "uml", ...
func kernelKind(k string) string {
	f := strings.Fields(strings.ToLower(k))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}

// kernelSlugs names each kernel for file names: its kind ("host"), or the
// whole kernel string when two kernels of one kind share a set.
func kernelSlugs(kernels []string) map[string]string {
	kinds := map[string]int{}
	for _, k := range kernels {
		kinds[kernelKind(k)]++
	}
	slugs := map[string]string{}
	for _, k := range kernels {
		if kinds[kernelKind(k)] == 1 {
			slugs[k] = slug(kernelKind(k))
		} else {
			slugs[k] = slug(k)
		}
	}
	return slugs
}

// slug keeps letters, digits, '.', '_' and '-', and turns anything else into
// '-', so the result is safe in a file name and in a benchmark name.
func slug(s string) string {
	var b strings.Builder
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	return b.String()
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
