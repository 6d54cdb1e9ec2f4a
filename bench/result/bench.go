package result

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/perf/benchfmt"
)

// exactUnits are counts that do not vary between repetitions; bench.txt
// tells benchstat so ("Unit ... assume=exact"), which makes any change in
// them significant instead of noise.
var exactUnits = []string{UnitIPTablesRules, UnitIPVSServices, UnitIPVSDests, UnitNFTRules, UnitNFTElements}

// higherBetterUnits are the units where more is better; benchstat assumes
// lower for the rest only for its own units, so this is said explicitly.
var higherBetterUnits = []string{UnitReqPerSec}

// BenchName is the Go benchmark name (without "Benchmark") of a family at a
// point, e.g. "Sync/kernel=host-6.18.5/mode=iptables/impl=reference/services=1000/endpoints=2".
// Every part is key=value so that benchstat -col /impl, -col /mode and
// -col /kernel work; values lose spaces and slashes; direct has impl=none.
// A point with an iptables backend has backend= after its mode, so that
// the two backends are two rows (and -col /backend compares them).
func BenchName(family string, p *Point) string {
	return family + "/" + pointKey(p)
}

func pointKey(p *Point) string {
	impl := p.Impl
	if impl == "" {
		impl = "none"
	}
	mode := "mode=" + slug(p.Mode)
	if p.Backend != "" {
		mode += "/backend=" + slug(p.Backend)
	}
	return fmt.Sprintf("kernel=%s/%s/impl=%s/services=%d/endpoints=%d",
		slug(p.Kernel), mode, slug(impl), p.Services, p.EndpointsPerService)
}

// WriteBench writes the set as Go benchmark lines for benchstat: the
// environment as file configuration lines, then one line per benchmark
// family and repetition with that repetition's value of each unit, then
// unit metadata, then a "--- FAIL:" line (which benchstat ignores) per
// failed point.
func WriteBench(w io.Writer, set *Set) error {
	if err := set.Validate(); err != nil {
		return err
	}
	s := set.sorted()
	bw := benchfmt.NewWriter(w)
	config := benchConfig(&s.Env)
	// Lines are grouped by family, as go test groups them by benchmark.
	var fams []string
	for i := range s.Points {
		for _, f := range families(&s.Points[i]) {
			if !slices.Contains(fams, f) {
				fams = append(fams, f)
			}
		}
	}
	slices.SortStableFunc(fams, func(a, b string) int { return compareKnown(familyOrder, a, b) })
	for _, family := range fams {
		for i := range s.Points {
			p := &s.Points[i]
			var ms []*Metric
			reps := 0
			for j := range p.Metrics {
				if m := &p.Metrics[j]; m.Bench == family {
					ms = append(ms, m)
					reps = max(reps, len(m.Samples))
				}
			}
			for rep := 0; rep < reps; rep++ {
				r := &benchfmt.Result{Config: config, Name: benchfmt.Name(BenchName(family, p)), Iters: 1}
				for _, m := range ms {
					if rep < len(m.Samples) {
						r.Values = append(r.Values, benchfmt.Value{Value: m.Samples[rep], Unit: m.Unit})
					}
				}
				if err := bw.Write(r); err != nil {
					return err
				}
			}
		}
	}
	present := map[string]bool{}
	for _, p := range s.Points {
		for _, m := range p.Metrics {
			present[m.Unit] = true
		}
	}
	var meta []*benchfmt.UnitMetadata
	addMeta := func(units []string, key, value string) {
		for _, u := range units {
			if present[u] {
				meta = append(meta, &benchfmt.UnitMetadata{UnitMetadataKey: benchfmt.UnitMetadataKey{Unit: u, Key: key}, OrigUnit: u, Value: value})
			}
		}
	}
	addMeta(exactUnits, "assume", "exact")
	addMeta(higherBetterUnits, "better", "higher")
	for i, m := range meta {
		if i == 0 {
			if _, err := io.WriteString(w, "\n"); err != nil {
				return err
			}
		}
		if err := bw.Write(m); err != nil {
			return err
		}
	}
	sep := "\n"
	for i := range s.Points {
		if p := &s.Points[i]; p.Error != "" {
			if _, err := io.WriteString(w, sep); err != nil {
				return err
			}
			sep = ""
			msg := strings.Join(strings.Fields(p.Error), " ")
			if _, err := fmt.Fprintf(w, "--- FAIL: %s: %s\n", pointKey(p), msg); err != nil {
				return err
			}
		}
	}
	return nil
}

// families returns the point's benchmark families in metric order.
func families(p *Point) []string {
	var fs []string
	for _, m := range p.Metrics {
		if len(fs) == 0 || fs[len(fs)-1] != m.Bench {
			fs = append(fs, m.Bench)
		}
	}
	return fs
}

// benchConfig turns the environment into file configuration lines. Empty
// values are left out: an empty value would delete the key for a reader.
func benchConfig(e *Env) []benchfmt.Config {
	var cfg []benchfmt.Config
	add := func(key, value string) {
		value = strings.Join(strings.Fields(value), " ")
		if value != "" && !slices.ContainsFunc(cfg, func(c benchfmt.Config) bool { return c.Key == key }) {
			cfg = append(cfg, benchfmt.Config{Key: key, Value: []byte(value), File: true})
		}
	}
	add("goos", e.OS)
	add("goarch", e.Arch)
	add("cpu", e.CPU)
	if e.Cores > 0 {
		add("cores", strconv.Itoa(e.Cores))
	}
	if e.MemoryBytes > 0 {
		add("memory", formatBytes(float64(e.MemoryBytes)))
	}
	add("kernel", e.Kernel)
	add("uml-kernel", e.UMLKernel)
	add("iptables", e.IPTablesBackend)
	add("go", e.GoVersion)
	add("kubernetes", e.Kubernetes)
	add("proxymodes", e.Commit)
	for _, k := range sortedKeys(e.Extra) {
		add(configKey(k), e.Extra[k])
	}
	return cfg
}

// configKey makes k a valid configuration key: it must start with a
// lower-case letter and hold no space nor upper-case letter.
func configKey(k string) string {
	k = strings.ToLower(strings.Join(strings.Fields(k), "-"))
	k = strings.ReplaceAll(k, ":", "-")
	if k == "" || k[0] < 'a' || k[0] > 'z' {
		k = "x-" + k
	}
	return k
}
