package dryrun

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestShorteningsApplyToTheNightly checks every entry of the table against
// the real workflow and Makefile: its step exists, its rewrite is found
// once, its variables are the environment's to set.
func TestShorteningsApplyToTheNightly(t *testing.T) {
	wf := loadNightly(t)
	short, err := ApplyShortenings(wf, readMakefile(t), Shortenings, Wholes)
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range Shortenings {
		s, err := findStep(wf, sh.Job, sh.Step)
		if err != nil {
			t.Fatal(err)
		}
		o := short[s]
		if o == nil {
			t.Fatalf("%s/%s: not shortened", sh.Job, sh.Step)
		}
		if sh.Old != "" && (strings.Contains(o.Run, sh.Old) || !strings.Contains(o.Run, sh.New)) {
			t.Errorf("%s/%s: %q was not rewritten to %q: %s", sh.Job, sh.Step, sh.Old, sh.New, o.Run)
		}
		if sh.Why == "" {
			t.Errorf("%s/%s: no reason why it is safe", sh.Job, sh.Step)
		}
	}
	soak, _ := findStep(wf, "soak", "Soak")
	if !strings.Contains(short[soak].Run, " N=1 ") {
		t.Errorf("the soak is not shortened to one run: %s", short[soak].Run)
	}
}

func TestShorteningsRefuseDrift(t *testing.T) {
	wf := loadNightly(t)
	mk := readMakefile(t)
	for _, c := range []struct {
		sh   Shortening
		want string
	}{
		{Shortening{Job: "soak", Step: "Soak", Old: " N=30 ", New: " N=1 "}, "occurs 0 times"},
		{Shortening{Job: "soak", Step: "Soak", Old: "$RUNNER_TEMP", New: "x"}, "occurs 2 times"},
		{Shortening{Job: "soak", Step: "Soak", Env: []KV{{"PROXYMODES", "x"}}}, "environment would not win"},
		{Shortening{Job: "soak", Step: "Soak", Env: []KV{{"NOT_IN_THE_MAKEFILE", "x"}}}, "has no NOT_IN_THE_MAKEFILE"},
		{Shortening{Job: "soak", Step: "Soaking"}, "no step"},
		{Shortening{Job: "nope", Step: "Soak"}, "no job"},
		{Shortening{Job: "soak", Step: "Name the artifact", Old: "ARTIFACT", New: "X"}, ""},
	} {
		_, err := ApplyShortenings(wf, mk, []Shortening{c.sh}, nil)
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.sh, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.sh, err, c.want)
		}
	}
	if _, err := ApplyShortenings(wf, mk, nil, []Whole{{Job: "nope"}}); err == nil {
		t.Error("a whole job the workflow lacks was accepted")
	}
}

// TestShortenedArgsKeepTheDefaults: AA_ARGS replaces the Makefile's
// default whole, so the shortened value must keep every flag of it but
// the Service counts; BENCH_ARGS adds to an empty default.
func TestShortenedArgsKeepTheDefaults(t *testing.T) {
	mk := readMakefile(t)
	def := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + ` \?=(.*)$`).FindSubmatch(mk)
		if m == nil {
			t.Fatalf("the Makefile has no %s ?=", name)
		}
		return strings.TrimSpace(string(m[1]))
	}
	flags := func(s string) map[string]string {
		f := strings.Fields(s)
		out := map[string]string{}
		for i := 0; i+1 < len(f); i += 2 {
			out[f[i]] = f[i+1]
		}
		return out
	}
	env := map[string]string{}
	for _, sh := range Shortenings {
		for _, kv := range sh.Env {
			env[kv.Key] = kv.Value
		}
	}
	short := flags(env["AA_ARGS"])
	for k, v := range flags(def("AA_ARGS")) {
		if k != "--services" && short[k] != v {
			t.Errorf("the shortened AA_ARGS has %s %q, the Makefile's default %q", k, short[k], v)
		}
	}
	if d := def("BENCH_ARGS"); d != "" {
		t.Errorf("BENCH_ARGS defaults to %q now: the shortening replaces it", d)
	}
}

// TestFeatureIsTheSuites: the one feature the shortened runs select is a
// feature label of suites/conformance, and the Makefile hands FEATURE to
// e2e-framework's label filter in both targets.
func TestFeatureIsTheSuites(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(root, "suites", "conformance", "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found = found || regexp.MustCompile(`suite\.NewFeature\("[^"]*", "`+regexp.QuoteMeta(Feature)+`"`).Match(b)
	}
	if !found {
		t.Errorf("no feature of suites/conformance is labelled feature=%s", Feature)
	}
	mk := string(readMakefile(t))
	if n := strings.Count(mk, "-labels feature=$(FEATURE)"); n != 2 {
		t.Errorf("the Makefile passes FEATURE to -labels %d times, want 2 (conformance and soak)", n)
	}
}
