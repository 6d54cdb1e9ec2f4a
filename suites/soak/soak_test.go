package soak

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/suites/report"
)

func writeRun(t *testing.T, dir, name string, r *report.Run) {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if r == nil {
		return
	}
	f, err := os.Create(filepath.Join(d, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := r.WriteJSON(f); err != nil {
		t.Fatal(err)
	}
}

func run(rrStatus report.Status, failure string, errs ...string) *report.Run {
	r := report.New("conf", nil, "")
	r.Started = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	r.Finished = r.Started.Add(10 * time.Minute)
	f := r.Feature("round-robin", "round-robin", "")
	a := &report.Assessment{Name: "cyclic order", Status: rrStatus, Duration: 5 * time.Second}
	if failure != "" {
		a.Failures = []string{failure + "\nsecond line"}
	}
	r.Add(f, a)
	r.Add(r.Feature("random choice", "random", ""), &report.Assessment{Name: "uniform", Status: report.Skip})
	r.Errors = errs
	r.Settings = map[string]string{report.SettingProxierSyncs: "node-1: 12 syncs, slowest 3.500s"}
	return r
}

func TestTallyCountsEveryRunAndKeepsEveryFailure(t *testing.T) {
	dir := t.TempDir()
	writeRun(t, dir, "run-01", run(report.Pass, ""))
	writeRun(t, dir, "run-02", run(report.Fail, "still not so after 46s"))
	writeRun(t, dir, "run-03", nil) // died before writing results
	writeRun(t, dir, "run-04", run(report.Pass, "", "leak check: namespace pm-conf-node-1 remains"))
	writeRun(t, dir, "other", nil) // not a run

	ty, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ty.Runs != 4 {
		t.Errorf("runs %d, want 4", ty.Runs)
	}
	if len(ty.Rows) != 2 {
		t.Fatalf("rows %+v", ty.Rows)
	}
	rr := ty.Rows[0]
	if rr.Pass != 2 || rr.Fail != 1 || rr.Skip != 0 {
		t.Errorf("round-robin row %+v", rr)
	}
	if ty.Rows[1].Skip != 3 {
		t.Errorf("random row %+v", ty.Rows[1])
	}
	if len(ty.Broken) != 2 {
		t.Errorf("broken %q, want the run without results and the run with a leak", ty.Broken)
	}
	if ty.Failed() != 3 {
		t.Errorf("Failed() = %d, want 3 (one assessment, two broken runs)", ty.Failed())
	}
	var b bytes.Buffer
	ty.WriteMarkdown(&b, "soak")
	out := b.String()
	for _, want := range []string{
		"| round-robin | cyclic order | 2 | 1 | 0 | 0 | 5s |",
		"- round-robin / cyclic order, run-02: still not so after 46s\n",
		"run-03: no results",
		"run-04: leak check: namespace pm-conf-node-1 remains",
		"4 runs, 1 failed assessments, 2 broken runs",
		"| run-02 | 10m0s | node-1: 12 syncs, slowest 3.500s |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q:\n%s", want, out)
		}
	}
}

func TestLoadRefusesADirectoryWithoutRuns(t *testing.T) {
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "make soak") {
		t.Errorf("err = %v", err)
	}
}
