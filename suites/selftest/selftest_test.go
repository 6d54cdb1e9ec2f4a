package selftest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/suites/report"
)

func TestEveryFaultHasACase(t *testing.T) {
	have := map[fault.Fault]int{}
	for _, mode := range Modes {
		cs, err := Cases(mode)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, c := range cs {
			if seen[c.Name()] {
				t.Errorf("%s: fault %s has two cases in feature %s", mode, c.Fault, c.Feature)
			}
			seen[c.Name()] = true
			have[c.Fault]++
			if len(c.Assessments) == 0 || c.Feature == "" {
				t.Errorf("%s/%s: no feature or assessment", mode, c.Fault)
			}
		}
	}
	for _, name := range fault.Names() {
		if have[fault.Fault(name)] == 0 {
			t.Errorf("fault %s has no case in any mode", name)
		}
	}
	if _, err := Cases("nope"); err == nil {
		t.Error("an unknown mode has cases")
	}
}

func write(t *testing.T, dir string, run *report.Run) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(run)
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(f string, status report.Status, assessments ...string) *report.Run {
	feat := &report.Feature{Name: "x", Label: "x"}
	for _, a := range assessments {
		feat.Assessments = append(feat.Assessments, &report.Assessment{Name: a, Status: status, Failures: []string{"the evidence\nmore"}})
	}
	return &report.Run{Settings: map[string]string{"fault": f}, Features: []*report.Feature{feat}}
}

func TestEvaluate(t *testing.T) {
	dir := t.TempDir()
	cs, _ := Cases("iptables")
	for _, c := range cs {
		write(t, filepath.Join(dir, c.Name()), run(string(c.Fault), report.Fail, c.Assessments...))
	}
	var all []string
	for _, c := range cs {
		all = append(all, c.Assessments...)
	}
	write(t, filepath.Join(dir, Unbroken), run("", report.Pass, all...))
	res, err := Evaluate(dir, "iptables")
	if err != nil || !res.OK() {
		t.Fatalf("every fault caught, unbroken passed: OK()=false: %+v %v", res, err)
	}
	var b strings.Builder
	res.WriteMarkdown(&b)
	if !strings.Contains(b.String(), "| the evidence |") || !strings.Contains(b.String(), "unbroken proxier passed the whole suite") {
		t.Errorf("table:\n%s", b.String())
	}

	// A fault the suite does not catch fails the self-test.
	early := filepath.Join(dir, Case{Fault: fault.AffinityEarlyExpiry, Feature: "affinity"}.Name())
	write(t, early, run(string(fault.AffinityEarlyExpiry), report.Pass, idle))
	if res, _ := Evaluate(dir, "iptables"); res.OK() {
		t.Error("an uncaught fault passed the self-test")
	}
	write(t, early, run(string(fault.AffinityEarlyExpiry), report.Fail, idle))

	// So does a run that did not run the broken build.
	np := filepath.Join(dir, Case{Fault: fault.NodePortIgnored, Feature: "nodeport"}.Name())
	write(t, np, run("", report.Fail, nodePortRW))
	if res, _ := Evaluate(dir, "iptables"); res.OK() {
		t.Error("a run without its fault counted as caught")
	}
	write(t, np, run(string(fault.NodePortIgnored), report.Fail, nodePortRW))

	// And an unbroken proxier that fails.
	write(t, filepath.Join(dir, Unbroken), run("", report.Fail, stick))
	if res, _ := Evaluate(dir, "iptables"); res.OK() {
		t.Error("a failing unbroken proxier passed the self-test")
	}
	// One that skipped, or never ran, an assessment a fault must fail.
	write(t, filepath.Join(dir, Unbroken), run("", report.Skip, all...))
	if res, _ := Evaluate(dir, "iptables"); res.OK() {
		t.Error("an unbroken proxier that skipped the assessments passed the self-test")
	}
	write(t, filepath.Join(dir, Unbroken), run("", report.Pass, all[1:]...))
	if res, _ := Evaluate(dir, "iptables"); res.OK() {
		t.Error("an unbroken run without one of the assessments passed the self-test")
	}
	os.RemoveAll(filepath.Join(dir, Unbroken))
	if res, _ := Evaluate(dir, "iptables"); res.OK() {
		t.Error("a missing unbroken run passed the self-test")
	}
}

func TestRuns(t *testing.T) {
	cs, _ := Cases("userspace")
	runs := Runs(cs)
	if runs[0] != "affinity-ignored@affinity feature=affinity" {
		t.Errorf("first run %q", runs[0])
	}
	if last := runs[len(runs)-1]; last != "unbroken" {
		t.Errorf("unbroken run %q", last)
	}
}

// A renamed assessment would make every fault look uncaught: the names
// here must be the suite's, and the labels its features'.
func TestCasesNameTheSuitesAssessments(t *testing.T) {
	files, _ := filepath.Glob("../conformance/*.go")
	var src strings.Builder
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
	}
	for _, mode := range Modes {
		cs, _ := Cases(mode)
		for _, c := range cs {
			if !strings.Contains(src.String(), fmt.Sprintf("%q,\n", c.Feature)) {
				t.Errorf("%s: no feature labelled %q in suites/conformance", c.Fault, c.Feature)
			}
			for _, a := range c.Assessments {
				if !strings.Contains(src.String(), fmt.Sprintf("Assess(%q", a)) {
					t.Errorf("%s: no assessment %q in suites/conformance", c.Fault, a)
				}
			}
		}
	}
}
