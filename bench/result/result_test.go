package result

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/perf/benchfmt"

	"github.com/proxymodes/proxymodes/harness/golden"
)

const (
	host = "host 6.18.5"
	uml  = "uml 6.1.176"
)

// testSet is a small run: two sizes on the host with both implementations
// and a direct baseline, the iptables mode with both backends at one size,
// the nftables mode, a UML point, a failed point, a skipped one and a
// metric this package does not know. Points are added out of order on
// purpose.
func testSet() *Set {
	s := &Set{
		Label:    "default",
		Started:  time.Date(2026, 11, 26, 14, 3, 0, 0, time.UTC),
		Finished: time.Date(2026, 11, 26, 16, 41, 30, 0, time.UTC),
		Env: Env{
			Kernel: "6.18.5", UMLKernel: "6.1.176", OS: "linux", Arch: "amd64",
			CPU: "AMD EPYC 7B13", Cores: 2, MemoryBytes: 24 << 30, GoVersion: "go1.26.8",
			Kubernetes: "v1.37.2", Commit: "38827bb", IPTablesBackend: "nft",
			Extra: map[string]string{"hostname": "bench-1"},
		},
		Sweep: Sweep{
			Services: []int{1000, 10000}, EndpointsPerService: 2,
			Modes: []string{ModeIPTables, ModeIPVS, ModeNFTables}, Impls: []string{ImplReference, ImplKubeProxy},
			Kernels: []string{"host", "uml"}, Backends: []string{BackendNFT, BackendLegacy}, Direct: true,
			Repetitions: 3, Requests: 20000, Concurrency: 16, Nodes: 2,
		},
	}
	add := func(p Point, f func(p *Point)) {
		f(&p)
		s.Points = append(s.Points, p)
	}
	for _, services := range []int{10000, 1000} {
		k := float64(services) / 1000
		add(Point{Kernel: host, Mode: ModeIPTables, Backend: BackendNFT, Impl: ImplKubeProxy, Services: services, EndpointsPerService: 2}, func(p *Point) {
			p.Add(DataPlane, UnitP50Sec, 110e-6, 112e-6, 111e-6)
			for i := range 4 { // a linear walk: 10 ns more per rule
				idx := (2*i + 1) * services / 8
				p.Positions = append(p.Positions, Position{Rep: 0, Index: idx, P50Sec: 100e-6 + float64(idx)*1e-8})
			}
			p.Add(DataPlane, UnitP90Sec, 150e-6, 151e-6, 149e-6)
			p.Add(DataPlane, UnitP99Sec, 300e-6*k, 310e-6*k, 290e-6*k)
			p.Add(DataPlane, UnitReqPerSec, 41000/k, 40500/k, 40800/k)
			p.Add(DataPlane, UnitLost, 0, 1, 0)
			p.LostBy = map[string]int{"Get \"http://198.19.0.9/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)": 1}
			p.Add(Sync, UnitFullSec, 0.3*k, 0.31*k, 0.29*k, 0.305*k, 0.295*k, 0.302*k) // 6: a finite interval
			p.Add(Sync, UnitPartialSec, 0.1*k, 0.1*k, 0.11*k)
			p.Add(Programming, UnitRulesP50Sec, 0.5*k, 0.52*k, 0.49*k)
			p.Add(Programming, UnitRulesP99Sec, 0.9*k, 0.95*k, 0.91*k)
			p.Add(Resources, UnitCPUSec, 3.1*k, 3.0*k, 3.2*k)
			p.Add(Resources, UnitRSSBytes, 80e6+k*5e6, 81e6+k*5e6, 79e6+k*5e6)
			p.Add(Rules, UnitIPTablesRules, 12*float64(services)+40, 12*float64(services)+40, 12*float64(services)+40)
		})
		add(Point{Kernel: host, Mode: ModeIPTables, Backend: BackendNFT, Impl: ImplReference, Services: services, EndpointsPerService: 2}, func(p *Point) {
			p.Add(Sync, UnitFullSec, 0.2*k, 0.21*k, 0.22*k, 0.205*k, 0.215*k, 0.198*k)
			p.Add(Sync, UnitPartialSec, 0.02*k, 0.02*k, 0.025*k)
			p.Add(Programming, UnitRulesP50Sec, 0.3*k, 0.31*k, 0.29*k)
			p.Add(Programming, UnitRulesP99Sec, 0.6*k, 0.62*k, 0.61*k)
			p.Add(Programming, UnitConnP50Sec, 0.35*k, 0.36*k, 0.34*k)
			p.Add(Programming, UnitConnP99Sec, 0.7*k, 0.72*k, 0.71*k)
			p.Add(DataPlane, UnitP50Sec, 105e-6, 106e-6, 104e-6)
			p.Add(DataPlane, UnitP90Sec, 140e-6, 141e-6, 139e-6)
			p.Add(DataPlane, UnitP99Sec, 250e-6*k, 260e-6*k, 240e-6*k)
			p.Add(DataPlane, UnitReqPerSec, 43000/k, 42500/k, 42800/k)
			p.Add(Resources, UnitCPUSec, 1.1*k, 1.0*k, 1.2*k)
			p.Add(Resources, UnitRSSBytes, 40e6+k*3e6, 41e6+k*3e6, 39e6+k*3e6)
			p.Add(Rules, UnitIPTablesRules, 10*float64(services)+20, 10*float64(services)+20, 10*float64(services)+20)
			p.Add("Custom", "widgets", 7)
		})
		add(Point{Kernel: host, Mode: ModeDirect, Services: services, EndpointsPerService: 2}, func(p *Point) {
			p.Add(DataPlane, UnitP50Sec, 50e-6, 51e-6, 49e-6)
			p.Add(DataPlane, UnitP90Sec, 70e-6, 71e-6, 69e-6)
			p.Add(DataPlane, UnitP99Sec, 100e-6, 101e-6, 99e-6)
			p.Add(DataPlane, UnitReqPerSec, 90000, 91000, 89000)
		})
	}
	// The legacy backend beside nft, at one size: its own curve and rows.
	for impl, sync := range map[string][]float64{ImplReference: {0.05, 0.051, 0.049}, ImplKubeProxy: {0.075, 0.076, 0.074}} {
		add(Point{Kernel: host, Mode: ModeIPTables, Backend: BackendLegacy, Impl: impl, Services: 1000, EndpointsPerService: 2}, func(p *Point) {
			p.Add(Sync, UnitFullSec, sync...)
			p.Add(Programming, UnitRulesP50Sec, 0.2, 0.21, 0.19)
			p.Add(DataPlane, UnitP50Sec, 100e-6, 101e-6, 99e-6)
			p.Add(Rules, UnitIPTablesRules, 10020, 10020, 10020)
		})
	}
	for impl, rules := range map[string]float64{ImplReference: 4000, ImplKubeProxy: 4800} {
		add(Point{Kernel: host, Mode: ModeNFTables, Impl: impl, Services: 1000, EndpointsPerService: 2}, func(p *Point) {
			p.Add(Sync, UnitFullSec, rules/5e4, rules/5e4+0.001, rules/5e4-0.001)
			p.Add(Sync, UnitPartialSec, 0.01, 0.011, 0.009)
			p.Add(Programming, UnitRulesP50Sec, 0.05, 0.051, 0.049)
			p.Add(DataPlane, UnitP50Sec, 90e-6, 91e-6, 89e-6)
			p.Add(Rules, UnitIPTablesRules, 0, 0, 0)
			p.Add(Rules, UnitNFTRules, rules, rules, rules)
			p.Add(Rules, UnitNFTElements, 1000, 1000, 1000)
		})
	}
	s.Skipped = append(s.Skipped,
		Skip{Kernel: uml, Mode: ModeNFTables, Impl: ImplReference, Services: 1000, Reason: "the user-mode Linux guest has no nf_tables"},
		Skip{Kernel: uml, Mode: ModeIPTables, Backend: BackendNFT, Impl: ImplReference, Services: 1000, Reason: "the guest has no IPv4 nf_tables"})
	add(Point{Kernel: uml, Mode: ModeIPVS, Impl: ImplReference, Services: 1000, EndpointsPerService: 2}, func(p *Point) {
		p.Add(Sync, UnitFullSec, 4.5)
		p.Add(DataPlane, UnitP50Sec, 2.1e-3)
		p.Add(DataPlane, UnitP99Sec, 9.5e-3)
		p.Add(Rules, UnitIPVSServices, 1000)
		p.Add(Rules, UnitIPVSDests, 2000)
	})
	add(Point{Kernel: uml, Mode: ModeIPVS, Impl: ImplKubeProxy, Services: 1000, EndpointsPerService: 2,
		Error: "kube-proxy did not sync within 5m0s:\nlast log line: \"syncProxyRules took 6m\""}, func(p *Point) {
		p.Add(Rules, UnitIPVSServices, 612)
	})
	return s
}

func TestAddAndMedian(t *testing.T) {
	var p Point
	p.Add(Sync, UnitFullSec, 3, 1)
	p.Add(Sync, UnitFullSec, 2)
	p.Add(Sync, UnitPartialSec, 4, 1)
	if got := p.Samples(Sync, UnitFullSec); !slices.Equal(got, []float64{3, 1, 2}) {
		t.Errorf("samples = %v, want [3 1 2]", got)
	}
	if m, ok := p.Median(Sync, UnitFullSec); !ok || m != 2 {
		t.Errorf("median full = %v %v, want 2", m, ok)
	}
	if m, ok := p.Median(Sync, UnitPartialSec); !ok || m != 2.5 {
		t.Errorf("median partial = %v %v, want 2.5", m, ok)
	}
	if _, ok := p.Median(DataPlane, UnitP50Sec); ok {
		t.Error("median of an absent metric reported ok")
	}
	if len(p.Metrics) != 2 {
		t.Errorf("got %d metrics, want 2", len(p.Metrics))
	}
}

func TestJSON(t *testing.T) {
	set := testSet()
	var b bytes.Buffer
	if err := WriteJSON(&b, set); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "set.json", b.Bytes())
	if set.Points[0].Mode != ModeIPTables || set.Points[0].Backend != BackendNFT || set.Points[0].Services != 10000 {
		t.Error("WriteJSON reordered the caller's points")
	}

	got, err := ReadJSON(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := WriteJSON(&again, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), again.Bytes()) {
		t.Error("JSON does not round-trip: writing what was read gives other bytes")
	}
}

func TestReadJSONRefusesUnknownSchema(t *testing.T) {
	for in, want := range map[string]string{
		`{"schema": "proxymodes.bench/v0", "points": []}`: `schema "proxymodes.bench/v0" but this proxymodes reads "proxymodes.bench/v1"`,
		`{"points": []}`: `no "schema" field`,
		`not json`:       `is it a results.json written by proxymodes?`,
	} {
		_, err := ReadJSON(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadJSON(%s) = %v, want an error containing %q", in, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		p    Point
		want string
	}{
		{Point{Mode: ModeIPTables, Impl: ImplReference}, "has no Kernel"},
		{Point{Kernel: host, Mode: ModeDirect, Impl: ImplReference}, "leave Impl empty"},
		{Point{Kernel: host, Mode: ModeIPVS}, "has no Impl"},
		{Point{Kernel: host, Mode: ModeIPVS, Impl: ImplReference, Metrics: []Metric{{Bench: Sync, Unit: "full sec"}}}, "units must be one word"},
		{Point{Kernel: host, Mode: ModeIPVS, Impl: ImplReference, Metrics: []Metric{{Bench: "Sync/x", Unit: UnitFullSec}}}, "bench name"},
		{Point{Kernel: host, Impl: ImplReference}, "set it to userspace, iptables, ipvs, nftables or direct"},
		{Point{Kernel: host, Mode: ModeIPTables, Backend: "iptables-nft", Impl: ImplReference}, `Backend "iptables-nft": use legacy or nft`},
		{Point{Kernel: host, Mode: ModeNFTables, Backend: BackendNFT, Impl: ImplReference}, "nftables point with Backend \"nft\": it writes no iptables rules"},
		{Point{Kernel: host, Mode: ModeDirect, Backend: BackendLegacy}, "leave Backend empty"},
	} {
		s := &Set{Points: []Point{tc.p}}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error containing %q", tc.p, err, tc.want)
		}
	}
	nan := &Set{Points: []Point{{Kernel: host, Mode: ModeIPVS, Impl: ImplReference}}}
	nan.Points[0].Add(Sync, UnitFullSec, 1, zero/zero)
	if err := WriteJSON(new(bytes.Buffer), nan); err == nil || !strings.Contains(err.Error(), "NaN sample") {
		t.Errorf("WriteJSON with a NaN sample = %v, want a NaN error", err)
	}
}

var zero = 0.0

// Points sort by mode (nftables after ipvs, direct last), then backend
// (a set from before backends first), then implementation; the backend is
// part of every name a reader sees.
func TestOrderAndNamesWithBackends(t *testing.T) {
	s := &Set{Points: []Point{
		{Kernel: host, Mode: ModeDirect, Services: 100},
		{Kernel: host, Mode: ModeNFTables, Impl: ImplKubeProxy, Services: 100},
		{Kernel: host, Mode: ModeIPTables, Backend: BackendNFT, Impl: ImplReference, Services: 100},
		{Kernel: host, Mode: ModeNFTables, Impl: ImplReference, Services: 100},
		{Kernel: host, Mode: ModeIPVS, Impl: ImplReference, Services: 100},
		{Kernel: host, Mode: ModeIPTables, Backend: BackendLegacy, Impl: ImplKubeProxy, Services: 100},
		{Kernel: host, Mode: ModeIPTables, Impl: ImplReference, Services: 100},
		{Kernel: host, Mode: ModeIPTables, Backend: BackendLegacy, Impl: ImplReference, Services: 100},
	}}
	var got []string
	for _, p := range s.sorted().Points {
		got = append(got, p.series())
	}
	want := []string{"iptables/reference", "iptables-legacy/reference", "iptables-legacy/kube-proxy", "iptables-nft/reference",
		"ipvs/reference", "nftables/reference", "nftables/kube-proxy", "direct"}
	if !slices.Equal(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
	p := Point{Kernel: host, Mode: ModeIPTables, Backend: BackendLegacy, Impl: ImplKubeProxy, Services: 1000, EndpointsPerService: 2}
	if got, want := p.Name(), "iptables-legacy/kube-proxy, 1000 Services × 2 endpoints (host 6.18.5)"; got != want {
		t.Errorf("Name() = %q, want %q", got, want)
	}
	if got, want := BenchName(Sync, &p), "Sync/kernel=host-6.18.5/mode=iptables/backend=legacy/impl=kube-proxy/services=1000/endpoints=2"; got != want {
		t.Errorf("BenchName = %q, want %q", got, want)
	}
	p.Backend = ""
	if got, want := BenchName(Sync, &p), "Sync/kernel=host-6.18.5/mode=iptables/impl=kube-proxy/services=1000/endpoints=2"; got != want {
		t.Errorf("BenchName without a backend = %q, want the name older sets have, %q", got, want)
	}
	if s.Find(host, ModeIPTables, BackendLegacy, ImplKubeProxy, 100, 0) == nil || s.Find(host, ModeIPTables, BackendNFT, ImplKubeProxy, 100, 0) != nil {
		t.Error("Find does not tell the backends apart")
	}
}

func TestWriteBench(t *testing.T) {
	set := testSet()
	var b bytes.Buffer
	if err := WriteBench(&b, set); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "set.bench.txt", b.Bytes())

	// Parse what was written and check it holds exactly the set's samples.
	type key struct{ name, unit string }
	got := map[key][]float64{}
	r := benchfmt.NewReader(bytes.NewReader(b.Bytes()), "bench.txt")
	var config map[string]string
	for r.Scan() {
		switch rec := r.Result().(type) {
		case *benchfmt.SyntaxError:
			t.Errorf("benchfmt cannot parse a line: %v", rec)
		case *benchfmt.Result:
			if config == nil {
				config = map[string]string{}
				for _, c := range rec.Config {
					config[c.Key] = string(c.Value)
				}
			}
			if rec.Iters != 1 {
				t.Errorf("%s: iters = %d, want 1", rec.Name, rec.Iters)
			}
			for _, v := range rec.Values {
				k := key{rec.Name.String(), v.Unit}
				got[k] = append(got[k], v.Value)
			}
		}
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[key][]float64{}
	for i := range set.Points {
		p := &set.Points[i]
		for _, m := range p.Metrics {
			want[key{BenchName(m.Bench, p), m.Unit}] = m.Samples
		}
	}
	if len(got) != len(want) {
		t.Errorf("read %d (benchmark, unit) pairs, want %d", len(got), len(want))
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("%s %s: read %v, want %v", k.name, k.unit, got[k], w)
		}
	}
	for k, v := range map[string]string{"goos": "linux", "kernel": "6.18.5", "uml-kernel": "6.1.176", "proxymodes": "38827bb", "kubernetes": "v1.37.2", "cpu": "AMD EPYC 7B13", "hostname": "bench-1"} {
		if config[k] != v {
			t.Errorf("config %s = %q, want %q", k, config[k], v)
		}
	}
	if a := r.Units().GetAssumption(UnitIPTablesRules); a.SummaryLabel() != "exact" {
		t.Errorf("iptables-rules assumption = %s, want exact", a.SummaryLabel())
	}
	if r.Units().GetBetter(UnitReqPerSec) != 1 {
		t.Error("req/s is not marked better=higher")
	}

	// The name parts benchstat projects on (-col /impl, /mode, ...).
	name := benchfmt.Name(BenchName(DataPlane, &set.Points[2]))
	base, parts := name.Parts()
	if string(base) != DataPlane {
		t.Errorf("base name = %q, want %q", base, DataPlane)
	}
	var ps []string
	for _, p := range parts {
		ps = append(ps, string(p))
	}
	if want := []string{"/kernel=host-6.18.5", "/mode=direct", "/impl=none", "/services=10000", "/endpoints=2"}; !slices.Equal(ps, want) {
		t.Errorf("name parts = %q, want %q", ps, want)
	}
}

func TestWriteMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := WriteMarkdown(&b, testSet(), "sync-host.svg", "latency-uml.svg", "elsewhere.svg"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "set.md", b.Bytes())
	md := b.String()
	for _, want := range []string{"not comparable", "| iptables-nft | 1000 × 2 |", "| iptables-legacy | kube-proxy | 75.0 ms ±∞ |", "| nftables | kube-proxy | 96.0 ms ±∞ |", "## Lost requests", "iptables-nft/kube-proxy, 1000 Services × 2 endpoints (host 6.18.5): 1 × Get", "- uml 6.1.176, iptables-nft/reference, 1000 Services: ", "![Sync time, host 6.18.5](sync-host.svg)", "kube-proxy did not sync"} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q", want)
		}
	}
}

// TestNFTablesLead: a set with both nftables and iptables opens with their
// comparison, per iptables backend; one without nftables has none.
func TestNFTablesLead(t *testing.T) {
	var b bytes.Buffer
	if err := WriteMarkdown(&b, testSet()); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	lead, env := strings.Index(md, "## nftables ÷ iptables"), strings.Index(md, "## Environment")
	if lead < 0 || lead > env {
		t.Fatalf("the nftables ÷ iptables section is at %d, the environment at %d: it must come first", lead, env)
	}
	for _, want := range []string{"| kube-proxy | iptables-nft | 1000 × 2 | 0.32× [0.31, 0.33] |", "| reference | iptables-legacy | 1000 × 2 |"} {
		if !strings.Contains(md[lead:env], want) {
			t.Errorf("the lead lacks %q", want)
		}
	}
	noNFT := testSet()
	noNFT.Points = slices.DeleteFunc(noNFT.Points, func(p Point) bool { return p.Mode == ModeNFTables })
	b.Reset()
	if err := WriteMarkdown(&b, noNFT); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "nftables ÷ iptables") {
		t.Error("a set without nftables points has an nftables ÷ iptables section")
	}
}

func TestPlot(t *testing.T) {
	dir := t.TempDir()
	files, err := Plot(dir, testSet())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 1000 || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s is not an SVG plot (%d bytes)", f, len(b))
		}
	}
	want := []string{"sync-host.svg", "programming-host.svg", "connect-host.svg", "latency-host.svg", "position-host.svg", "sync-uml.svg", "latency-uml.svg"}
	if !slices.Equal(names, want) {
		t.Errorf("plots = %q, want %q", names, want)
	}
	// Each backend is a line of its own, beside the other.
	if b, _ := os.ReadFile(filepath.Join(dir, "sync-host.svg")); !bytes.Contains(b, []byte("iptables-legacy/reference")) ||
		!bytes.Contains(b, []byte("iptables-nft/reference")) || !bytes.Contains(b, []byte("nftables/kube-proxy")) {
		t.Error("sync-host.svg lacks an iptables-legacy, iptables-nft or nftables line")
	}
}

func TestPlotOnePointAndZeros(t *testing.T) {
	s := &Set{Points: []Point{{Kernel: host, Mode: ModeIPTables, Impl: ImplReference, Services: 100, EndpointsPerService: 1}}}
	s.Points[0].Add(Sync, UnitFullSec, 0.5)
	s.Points[0].Add(DataPlane, UnitP50Sec, 0) // cannot go on a log axis: left out
	files, err := Plot(t.TempDir(), s)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || filepath.Base(files[0]) != "sync-host.svg" {
		t.Errorf("plots = %q, want only sync-host.svg", files)
	}
}

func TestDir(t *testing.T) {
	d := time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)
	for label, want := range map[string]string{
		"default":     "results/2026-11-26-default",
		"ipvs on uml": "results/2026-11-26-ipvs-on-uml",
		"":            "results/2026-11-26-default",
		"a/../b":      "results/2026-11-26-a-..-b",
	} {
		if got := Dir("results", d, label); got != want {
			t.Errorf("Dir(%q) = %q, want %q", label, got, want)
		}
	}
}

func TestWriteAllAndLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "2026-11-26-default")
	set := testSet()
	if err := WriteAll(dir, set); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{BenchFile, JSONFile, SummaryFile, "sync-host.svg", "latency-uml.svg"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v (size %v)", f, err, fi)
		}
	}
	readme, _ := os.ReadFile(filepath.Join(dir, SummaryFile))
	if !bytes.Contains(readme, []byte("](latency-uml.svg)")) {
		t.Error("README.md does not embed latency-uml.svg")
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Points) != len(set.Points) || got.Label != "default" {
		t.Errorf("Load read %d points labelled %q, want %d labelled default", len(got.Points), got.Label, len(set.Points))
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "is it a result set?") {
		t.Errorf("Load of an empty directory = %v, want an error asking if it is a result set", err)
	}
}
