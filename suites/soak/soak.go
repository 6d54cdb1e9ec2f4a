// Package soak tallies repeated conformance runs: for every assessment, how
// often it passed, failed and was skipped, and where each failure's
// evidence is. A flake that shows once in twenty runs is invisible in one
// run's summary and obvious here.
package soak

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/suites/report"
)

// RunDirPrefix names each run's results directory inside a soak directory:
// run-01, run-02, ...
const RunDirPrefix = "run-"

// Row is one assessment over all runs.
type Row struct {
	Feature, Assessment     string
	Pass, Fail, Skip, NotRn int
	// Failures name the run and its first failure message.
	Failures []string
	// Slowest is the longest the assessment took in any run.
	Slowest time.Duration
}

// RunLine is one run's wall time and what its proxiers' syncs took (the
// "proxier syncs" setting the suite records; each sync is in the run's
// proxier-syncs.log). A slow sync is what stretched the convergence
// deadlines of that run, so a soak keeps them beside its counts.
type RunLine struct {
	Name  string
	Wall  time.Duration
	Syncs string
}

// Tally is a soak's result.
type Tally struct {
	Runs int
	// PerRun has one line per run with results, in order.
	PerRun []RunLine
	// Broken lists runs without a readable results.json, or with
	// run-level errors (setup, teardown, leak check): a soak counts them
	// as failures, never drops them.
	Broken []string
	Rows   []*Row
	Wall   time.Duration
}

// Failed counts the failing assessments and broken runs.
func (t *Tally) Failed() int {
	n := len(t.Broken)
	for _, r := range t.Rows {
		n += r.Fail
	}
	return n
}

// Load reads every run-* directory of dir.
func Load(dir string) (*Tally, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), RunDirPrefix) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s has no %s* directories: is it a soak directory (make soak writes one)?", dir, RunDirPrefix)
	}
	sort.Strings(names)
	t := &Tally{}
	rows := map[string]*Row{}
	var order []string
	for _, name := range names {
		t.Runs++
		run, err := report.ReadDir(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			t.Broken = append(t.Broken, fmt.Sprintf("%s: no results (%v): the run died before it wrote them; see %s", name, err, filepath.Join(dir, name+".log")))
			continue
		}
		if err != nil {
			t.Broken = append(t.Broken, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		line := RunLine{Name: name, Syncs: run.Settings[report.SettingProxierSyncs]}
		if !run.Started.IsZero() && run.Finished.After(run.Started) {
			line.Wall = run.Finished.Sub(run.Started)
			t.Wall += line.Wall
		}
		t.PerRun = append(t.PerRun, line)
		for _, e := range run.Errors {
			t.Broken = append(t.Broken, fmt.Sprintf("%s: %s", name, report.FirstLine(e)))
		}
		for _, f := range run.Features {
			for _, a := range f.Assessments {
				key := f.Name + "\x00" + a.Name
				r := rows[key]
				if r == nil {
					r = &Row{Feature: f.Name, Assessment: a.Name}
					rows[key] = r
					order = append(order, key)
				}
				if a.Duration > r.Slowest {
					r.Slowest = a.Duration
				}
				switch a.Status {
				case report.Pass:
					r.Pass++
				case report.Fail:
					r.Fail++
					msg := "failed"
					if len(a.Failures) > 0 {
						msg = report.FirstLine(a.Failures[0])
					}
					r.Failures = append(r.Failures, name+": "+msg)
				case report.Skip:
					r.Skip++
				default:
					r.NotRn++
				}
			}
		}
	}
	for _, k := range order {
		t.Rows = append(t.Rows, rows[k])
	}
	return t, nil
}

// WriteMarkdown writes the table and then every failure with its run.
func (t *Tally) WriteMarkdown(w io.Writer, title string) {
	fmt.Fprintf(w, "# %s\n\n", title)
	fmt.Fprintf(w, "%d runs, %d failed assessments, %d broken runs; %s of suite time in all.\n\n",
		t.Runs, t.Failed()-len(t.Broken), len(t.Broken), t.Wall.Round(time.Second))
	fmt.Fprintln(w, "| feature | assessment | pass | fail | skip | not run | slowest |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %d | %s |\n",
			r.Feature, r.Assessment, r.Pass, r.Fail, r.Skip, r.NotRn, r.Slowest.Round(100*time.Millisecond))
	}
	if len(t.PerRun) > 0 {
		fmt.Fprintln(w, "\n## Runs: wall time and proxier syncs (each sync in the run's proxier-syncs.log)")
		fmt.Fprintln(w, "\n| run | wall | proxier syncs |\n|---|---|---|")
		for _, l := range t.PerRun {
			syncs := l.Syncs
			if syncs == "" {
				syncs = "not recorded"
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", l.Name, l.Wall.Round(time.Second), syncs)
		}
	}
	var fails []string
	for _, r := range t.Rows {
		for _, f := range r.Failures {
			fails = append(fails, fmt.Sprintf("- %s / %s, %s", r.Feature, r.Assessment, f))
		}
	}
	if len(t.Broken) > 0 {
		fmt.Fprintln(w, "\n## Broken runs")
		for _, b := range t.Broken {
			fmt.Fprintf(w, "- %s\n", b)
		}
	}
	if len(fails) > 0 {
		fmt.Fprintln(w, "\n## Failures (each run's directory keeps its summary, lab logs and snapshots/)")
		for _, f := range fails {
			fmt.Fprintln(w, f)
		}
	}
}
