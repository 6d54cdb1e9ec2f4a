package dryrun

import (
	"fmt"
	"slices"
	"strings"
)

// Shortening makes one step of a job run shorter in the dry run, by
// environment the Makefile reads (?=, so the environment wins; checked)
// or, where the workflow hard-codes a number on the make line, by
// rewriting that one piece of the step's run: text. The rewrite must be
// found exactly once, so a changed workflow stops the dry run instead of
// silently running the long version.
type Shortening struct {
	Job, Step string
	Old, New  string
	Env       []KV
	Why       string
}

// Whole is a job the dry run deliberately runs as the workflow does.
type Whole struct {
	Job, Why string
}

// Feature is the one conformance feature the shortened runs select: it
// runs in every mode, for both implementations and on every provider,
// none of its three assessments skips by promise, and it takes ~15 s.
const Feature = "endpoints"

// Shortenings is the dry run's one table of changes to the workflow.
var Shortenings = []Shortening{
	{Job: "conformance", Step: "Conformance", Env: []KV{{"FEATURE", Feature}},
		Why: "one feature goes the whole way a full run does (node image, kind cluster, the proxier's DaemonSet or kube-proxy, setup, assessments, summary and results, teardown, leak check); the other features are make test's"},
	{Job: "conformance-local", Step: "Conformance", Env: []KV{{"FEATURE", Feature}},
		Why: "as for kind: one feature takes the local lab's whole path"},
	{Job: "soak", Step: "Soak", Old: " N=20 ", New: " N=1 ",
		Why: "a soak repeats one compiled suite; one run goes through the same build, run directory and SOAK.md tally as twenty"},
	{Job: "soak", Step: "Soak", Env: []KV{{"FEATURE", Feature}},
		Why: "the tally covers whatever ran; one feature is a run like all of them"},
	{Job: "bench", Step: "Benchmark", Env: []KV{{"BENCH_ARGS", "--services 100 --repeats 1 --changes 3 --requests 300 --concurrency 4"}},
		Why: "make test's bench smoke settings (bench/sweep TestSmoke): every mode and implementation still gets its point, lab, syncs, load runs, result set and plots; the numbers mean nothing"},
	{Job: "bench-aa", Step: "A/A check", Env: []KV{{"AA_ARGS", "--services 100 --modes userspace,iptables --kernels host --repeats 3 --changes 3 --requests 300 --concurrency 4"}},
		Why: "AA_ARGS replaces the Makefile's default whole, so its modes and kernels are kept (a test checks); 3 repeats a side let every ratio be compared, and the U test's smallest p for 3 against 3 is 0.1, above Alpha 0.05: the check runs and cannot fail by chance"},
}

// Wholes are the jobs run as the workflow does, and why.
var Wholes = []Whole{
	{Job: "selftest", Why: "the Makefile has no way to run fewer cases (SELFTEST_JOBS only runs them side by side, in isolated labs the workflow does not use): every broken build and the unbroken proxier over the whole suite, per mode"},
}

// Shortened is what the table does to one step.
type Shortened struct {
	Run  string
	Env  []KV
	Why  []string
	Desc []string
}

// ApplyShortenings checks the table against the workflow and the Makefile
// and returns the change to each step it shortens.
func ApplyShortenings(wf *Workflow, makefile []byte, table []Shortening, wholes []Whole) (map[*Step]*Shortened, error) {
	out := map[*Step]*Shortened{}
	for _, sh := range table {
		s, err := findStep(wf, sh.Job, sh.Step)
		if err != nil {
			return nil, fmt.Errorf("shortening %s/%s: %w", sh.Job, sh.Step, err)
		}
		if s.Run == "" {
			return nil, fmt.Errorf("shortening %s/%s: not a run: step", sh.Job, sh.Step)
		}
		o := out[s]
		if o == nil {
			o = &Shortened{Run: s.Run}
			out[s] = o
		}
		if sh.Old != "" {
			if n := strings.Count(o.Run, sh.Old); n != 1 {
				return nil, fmt.Errorf("shortening %s/%s: %q occurs %d times in its run: text, not once: the dry run would not shorten it", sh.Job, sh.Step, sh.Old, n)
			}
			o.Run = strings.Replace(o.Run, sh.Old, sh.New, 1)
			o.Desc = append(o.Desc, fmt.Sprintf("%q → %q", strings.TrimSpace(sh.Old), strings.TrimSpace(sh.New)))
		}
		for _, kv := range sh.Env {
			if err := CheckEnvWins(makefile, kv.Key); err != nil {
				return nil, fmt.Errorf("shortening %s/%s: %w", sh.Job, sh.Step, err)
			}
			o.Env = append(o.Env, kv)
			o.Desc = append(o.Desc, kv.Key+"="+shellQuote(kv.Value))
		}
		o.Why = append(o.Why, sh.Why)
	}
	for _, w := range wholes {
		if !slices.ContainsFunc(wf.Jobs, func(j *Job) bool { return j.ID == w.Job }) {
			return nil, fmt.Errorf("the table runs job %s whole, and the workflow has no such job", w.Job)
		}
	}
	return out, nil
}

func findStep(wf *Workflow, job, step string) (*Step, error) {
	for _, j := range wf.Jobs {
		if j.ID != job {
			continue
		}
		var found *Step
		for _, s := range j.Steps {
			if s.Name == step {
				if found != nil {
					return nil, fmt.Errorf("two steps are named %q", step)
				}
				found = s
			}
		}
		if found == nil {
			return nil, fmt.Errorf("job %s has no step %q", job, step)
		}
		return found, nil
	}
	return nil, fmt.Errorf("the workflow has no job %s", job)
}
