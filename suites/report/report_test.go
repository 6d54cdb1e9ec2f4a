package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample() *Run {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	r := New("conformance", map[string]string{"mode": "iptables", "impl": "reference", "provider": "local"}, "selection=random")
	r.Started, r.Finished = t0, t0.Add(90*time.Second)
	f := r.Feature("random choice", "random", "")
	r.Add(f, &Assessment{Name: "uniform", Status: Pass, Duration: 2 * time.Second,
		Evidence: []string{"counts a=300 b=290 c=310", "X^2=0.67 p=0.72"}})
	g := r.Feature("retry on failure", "retry", "")
	r.Add(g, &Assessment{Name: "refuse", Status: Fail, Duration: time.Second,
		Failures: []string{"failure fraction 0.00 outside [0.21, 0.47]\nmore detail"}})
	r.Add(g, &Assessment{Name: "blackhole", Status: NotRun, Reason: "an earlier assessment failed"})
	return r
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	sample().WriteTable(&b)
	out := b.String()
	for _, want := range []string{"mode=iptables", "random choice", "X^2=0.67 p=0.72", "FAILED: failure fraction 0.00", "NOT RUN", "1 passed, 1 failed, 1 skipped"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "more detail") {
		t.Error("the table shows only the first line of a failure")
	}
}

func TestJUnit(t *testing.T) {
	var b bytes.Buffer
	r := sample()
	r.Errorf("leftover: network namespace pm-conf-node-1")
	if err := r.WriteJUnit(&b); err != nil {
		t.Fatal(err)
	}
	var got junitSuites
	if err := xml.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	s := got.Suites[0]
	if s.Tests != 4 || s.Failures != 1 || s.Skipped != 1 || s.Errors != 1 {
		t.Errorf("counts: %+v", s)
	}
	if s.Cases[0].Class != "conformance.random choice" || s.Cases[1].Failure == nil || !strings.Contains(s.Cases[1].Failure.Text, "more detail") {
		t.Errorf("cases: %+v", s.Cases)
	}
}

func TestJSONAndFiles(t *testing.T) {
	dir := t.TempDir()
	r := sample()
	if !r.Failed() {
		t.Error("a run with a failed assessment failed")
	}
	if err := r.WriteFiles(filepath.Join(dir, "run")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "run", "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["summary"].(map[string]any)["failed"].(float64) != 1 || len(got["features"].([]any)) != 2 {
		t.Errorf("json: %s", b)
	}
	for _, f := range []string{"junit.xml", "summary.txt"} {
		if _, err := os.Stat(filepath.Join(dir, "run", f)); err != nil {
			t.Error(err)
		}
	}
}

func TestFeatureStatus(t *testing.T) {
	f := &Feature{}
	if f.Status() != Skip {
		t.Error("empty feature")
	}
	f.Assessments = []*Assessment{{Status: Skip}, {Status: Pass}}
	if f.Status() != Pass {
		t.Error("pass + skip")
	}
	f.Assessments = append(f.Assessments, &Assessment{Status: Fail})
	if f.Status() != Fail {
		t.Error("any failure fails the feature")
	}
}
