// Package compare compares two result sets the way benchstat does: per
// benchmark family and unit, the median and 95% confidence interval of each
// set, and whether the difference is significant (Mann-Whitney U test,
// alpha 0.05; "~" when it is not).
//
// Rows are matched by their full benchmark name, which holds the kernel,
// mode, implementation, Services and endpoints. So two sets measured in
// different kernels share no row: a host figure is never compared with a
// UML one, or with another host kernel's.
//
// Sets written before points carried their iptables backend name their
// iptables rows without backend=; such a row is read as the backend its
// set ran with (legacy in a UML guest, the only one it has; on the host,
// the set's "iptables" configuration line), so that it still matches a
// newer set's row.
//
// File configuration lines (commit, versions) are not used to match rows,
// unlike plain benchstat, which splits them into separate tables when the
// commit differs; they are listed, with what changed, above the tables.
package compare

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchmath"
	"golang.org/x/perf/benchunit"
)

// benchFile is the file of a result set directory that Compare reads; it
// matches result.BenchFile (not imported, to keep this package free of the
// plotting dependencies).
const benchFile = "bench.txt"

// confidence is the level of the intervals, as benchstat's default.
const confidence = 0.95

// Compare writes the comparison of the old and new result sets to w. Each
// path is a result set directory (holding bench.txt) or a bench.txt file.
func Compare(w io.Writer, oldPath, newPath string) error {
	old, err := load(oldPath)
	if err != nil {
		return err
	}
	cur, err := load(newPath)
	if err != nil {
		return err
	}
	return write(w, old, cur)
}

// set is the contents of one bench.txt.
type set struct {
	label  string
	config []benchfmt.Config // file configuration of the first result
	tables []table           // in the order first seen
	rows   map[table]*rows
	units  benchfmt.UnitMetadataMap
	// renamed counts the rows read under the backend their set ran with
	// (withBackend).
	renamed int
}

// rows are the samples of one table by benchmark name, names in the order
// first seen.
type rows struct {
	names   []string
	samples map[string][]float64
}

func (s *set) rowNames(t table) []string {
	if r := s.rows[t]; r != nil {
		return r.names
	}
	return nil
}

func (s *set) samples(t table, name string) []float64 {
	if r := s.rows[t]; r != nil {
		return r.samples[name]
	}
	return nil
}

// table is one benchmark family and unit, e.g. Sync and full-sec.
type table struct{ bench, unit string }

func (t table) String() string { return t.bench + " " + t.unit }

func load(path string) (*set, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: give a result set directory (results/<date>-<label>) or its %s", path, benchFile)
	}
	if err != nil {
		return nil, err
	}
	name := path
	if fi.IsDir() {
		name = filepath.Join(path, benchFile)
		if _, err := os.Stat(name); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s has no %s: is it a result set? (it should hold %s and results.json)", path, benchFile, benchFile)
		}
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := read(f, name)
	if err != nil {
		return nil, err
	}
	s.label = path
	return s, nil
}

// read parses Go benchmark lines, keeping every sample of every (family,
// unit, name) and the first result's file configuration.
func read(r io.Reader, name string) (*set, error) {
	s := &set{rows: map[table]*rows{}}
	br := benchfmt.NewReader(r, name)
	n := 0
	for br.Scan() {
		switch rec := br.Result().(type) {
		case *benchfmt.SyntaxError:
			return nil, fmt.Errorf("%v: fix or delete that line", rec)
		case *benchfmt.Result:
			n++
			if s.config == nil {
				for _, c := range rec.Config {
					if c.File {
						s.config = append(s.config, benchfmt.Config{Key: c.Key, Value: slices.Clone(c.Value), File: true})
					}
				}
				if s.config == nil {
					s.config = []benchfmt.Config{}
				}
			}
			base := string(rec.Name.Base())
			row := strings.TrimPrefix(rec.Name.String()[len(base):], "/")
			if row == "" {
				row = base
			}
			if named := withBackend(row, configValue(s.config, "iptables")); named != row {
				row = named
				s.renamed++
			}
			for _, v := range rec.Values {
				t := table{base, v.Unit}
				rs := s.rows[t]
				if rs == nil {
					rs = &rows{samples: map[string][]float64{}}
					s.rows[t] = rs
					s.tables = append(s.tables, t)
				}
				if _, ok := rs.samples[row]; !ok {
					rs.names = append(rs.names, row)
				}
				rs.samples[row] = append(rs.samples[row], v.Value)
			}
		}
	}
	if err := br.Err(); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%s has no benchmark lines: is it a proxymodes bench.txt?", name)
	}
	s.units = br.Units()
	return s, nil
}

// withBackend gives an iptables row of an older set, which has no
// backend= part, the backend that set ran with: legacy in a UML guest
// (it has no IPv4 nf_tables), else the host's (hostIPTables, from the
// set's "iptables" line; the row stays as it is when that is unknown).
func withBackend(row, hostIPTables string) string {
	parts := strings.Split(row, "/")
	mode, kernel := -1, ""
	for i, p := range parts {
		switch {
		case strings.HasPrefix(p, "backend="):
			return row
		case p == "mode=iptables":
			mode = i
		case strings.HasPrefix(p, "kernel="):
			kernel = strings.TrimPrefix(p, "kernel=")
		}
	}
	backend := hostIPTables
	if strings.HasPrefix(kernel, "uml-") {
		backend = "legacy"
	}
	if mode < 0 || (backend != "legacy" && backend != "nft") {
		return row
	}
	return strings.Join(slices.Insert(parts, mode+1, "backend="+backend), "/")
}

func configValue(cfg []benchfmt.Config, key string) string {
	for _, c := range cfg {
		if c.Key == key {
			return string(c.Value)
		}
	}
	return ""
}

// rowOrder lists the names of a table's rows: the old set's in its order,
// then those only the new set has.
func rowOrder(t table, sets ...*set) []string {
	var names []string
	for _, s := range sets {
		for _, n := range s.rowNames(t) {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	return names
}

func write(w io.Writer, old, cur *set) error {
	var b strings.Builder
	fmt.Fprintf(&b, "old: %s\nnew: %s\n", old.label, cur.label)
	for _, s := range []*set{old, cur} {
		if s.renamed > 0 {
			fmt.Fprintf(&b, "note: %s names its iptables rows without a backend; they are read as backend=legacy in UML (its only one) and as its \"iptables:\" line on the host\n", s.label)
		}
	}
	writeConfig(&b, old.config, cur.config)

	var tables []table
	for _, s := range []*set{old, cur} {
		for _, t := range s.tables {
			if !slices.Contains(tables, t) {
				tables = append(tables, t)
			}
		}
	}
	common := 0
	for _, t := range tables {
		common += writeTable(&b, t, old, cur)
	}
	if common == 0 {
		fmt.Fprintf(&b, "\nNo benchmark is in both sets. Rows match only when kernel, mode, backend, impl, Services and endpoints are all equal;\n"+
			"figures from different kernels are never compared (old ran in %s, new in %s).\n",
			strings.Join(kernels(old), ", "), strings.Join(kernels(cur), ", "))
	} else if ko, kn := kernels(old), kernels(cur); !slices.Equal(ko, kn) {
		fmt.Fprintf(&b, "\nNote: old ran in %s, new in %s; rows of a kernel only one set has are not compared.\n",
			strings.Join(ko, ", "), strings.Join(kn, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeConfig lists the file configuration of both sets: once where it is
// the same, "old → new" where it changed.
func writeConfig(b *strings.Builder, old, cur []benchfmt.Config) {
	get := func(cfg []benchfmt.Config, key string) (string, bool) {
		for _, c := range cfg {
			if c.Key == key {
				return string(c.Value), true
			}
		}
		return "", false
	}
	var keys []string
	for _, c := range slices.Concat(old, cur) {
		if !slices.Contains(keys, c.Key) {
			keys = append(keys, c.Key)
		}
	}
	if len(keys) > 0 {
		b.WriteString("\n")
	}
	for _, k := range keys {
		o, inOld := get(old, k)
		n, inNew := get(cur, k)
		switch {
		case inOld && inNew && o == n:
			fmt.Fprintf(b, "%s: %s\n", k, o)
		case inOld && inNew:
			fmt.Fprintf(b, "%s: %s → %s\n", k, o, n)
		case inOld:
			fmt.Fprintf(b, "%s: %s (old only)\n", k, o)
		default:
			fmt.Fprintf(b, "%s: %s (new only)\n", k, n)
		}
	}
}

// kernels lists the kernel= values of a set's benchmark names.
func kernels(s *set) []string {
	var ks []string
	for _, t := range s.tables {
		for _, row := range s.rowNames(t) {
			for _, part := range strings.Split(row, "/") {
				if k, ok := strings.CutPrefix(part, "kernel="); ok && !slices.Contains(ks, k) {
					ks = append(ks, k)
				}
			}
		}
	}
	slices.Sort(ks)
	if len(ks) == 0 {
		return []string{"(no kernel= in the names)"}
	}
	return ks
}

// assumption is the statistics for a unit: exact for counts that a set's
// bench.txt marks "assume=exact", otherwise no assumption (medians and the
// Mann-Whitney U test).
func assumption(unit string, sets ...*set) benchmath.Assumption {
	for _, s := range sets {
		if s.units.GetAssumption(unit) == benchmath.AssumeExact {
			return benchmath.AssumeExact
		}
	}
	return benchmath.AssumeNothing
}

// footnotes numbers the distinct warnings of one table.
type footnotes []string

func (f *footnotes) mark(errs []error) string {
	var m string
	for _, e := range errs {
		i := slices.Index(*f, e.Error())
		if i < 0 {
			*f = append(*f, e.Error())
			i = len(*f) - 1
		}
		m += " " + superscript(i+1)
	}
	return m
}

func superscript(n int) string {
	const digits = "⁰¹²³⁴⁵⁶⁷⁸⁹"
	var out []rune
	for _, r := range fmt.Sprint(n) {
		out = append(out, []rune(digits)[r-'0'])
	}
	return string(out)
}

// writeTable writes one family and unit and returns how many rows both sets
// have.
func writeTable(b *strings.Builder, t table, old, cur *set) int {
	thresholds := benchmath.DefaultThresholds
	assume := assumption(t.unit, old, cur)
	cls := benchunit.ClassOf(t.unit)
	var notes footnotes
	lines := [][]string{{t.String(), "old", "new", "vs old", ""}}
	var geoOld, geoNew []float64
	common := 0
	for _, name := range rowOrder(t, old, cur) {
		oldVs, newVs := old.samples(t, name), cur.samples(t, name)
		var sums []benchmath.Summary
		var samples []*benchmath.Sample
		for _, vs := range [][]float64{oldVs, newVs} {
			if len(vs) == 0 {
				sums, samples = append(sums, benchmath.Summary{}), append(samples, nil)
				continue
			}
			smp := benchmath.NewSample(vs, &thresholds)
			samples = append(samples, smp)
			sums = append(sums, assume.Summary(smp, confidence))
		}
		var centers []float64
		for i, smp := range samples {
			if smp != nil {
				centers = append(centers, sums[i].Center)
			}
		}
		scale := benchunit.CommonScale(centers, cls)
		cells := []string{name}
		for i, smp := range samples {
			if smp == nil {
				cells = append(cells, "–")
				continue
			}
			cell := scale.Format(sums[i].Center)
			if sum := sums[i]; sum.Lo != sum.Center || sum.Hi != sum.Center {
				// An exact count has no interval to show.
				cell += " ± " + sum.PctRangeString()
			}
			cells = append(cells, cell+notes.mark(slices.Concat(smp.Warnings, sums[i].Warnings)))
		}
		switch {
		case samples[0] == nil:
			cells = append(cells, "", "only in new")
		case samples[1] == nil:
			cells = append(cells, "", "only in old")
		default:
			common++
			c := assume.Compare(samples[0], samples[1])
			cells = append(cells, c.FormatDelta(sums[0].Center, sums[1].Center), "("+c.String()+")"+notes.mark(c.Warnings))
			if sums[0].Center > 0 && sums[1].Center > 0 {
				geoOld, geoNew = append(geoOld, sums[0].Center), append(geoNew, sums[1].Center)
			}
		}
		lines = append(lines, cells)
	}
	if len(geoOld) > 1 {
		o, n := geomean(geoOld), geomean(geoNew)
		scale := benchunit.CommonScale([]float64{o, n}, cls)
		delta := "0.00%"
		if o != n {
			delta = fmt.Sprintf("%+.2f%%", (n/o-1)*100)
		}
		lines = append(lines, []string{"geomean", scale.Format(o), scale.Format(n), delta, ""})
	}
	b.WriteString("\n")
	// The test follows its delta after one space, as benchstat prints
	// "~ (p=1.000 n=1)".
	align(b, lines, []bool{false, true, true, true, false}, []string{"", "  ", "  ", "  ", " "})
	for i, n := range notes {
		fmt.Fprintf(b, "%s %s\n", superscript(i+1), n)
	}
	return common
}

func geomean(xs []float64) float64 {
	var sum float64
	for _, x := range xs {
		sum += math.Log(x)
	}
	return math.Exp(sum / float64(len(xs)))
}

// align writes rows as columns, each after its gap and right-aligned where
// right says so, counting runes so that µ, ± and ∞ take one column.
func align(b *strings.Builder, rows [][]string, right []bool, gaps []string) {
	widths := make([]int, len(right))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		var line strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			line.WriteString(gaps[i])
			if right[i] {
				line.WriteString(pad + c)
			} else {
				line.WriteString(c + pad)
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
}
