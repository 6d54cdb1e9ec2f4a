// Package dryrun runs a GitHub Actions workflow's jobs on this machine, in
// the workflow's order, the way a hosted Ubuntu runner would: the matrix
// legs, the runner's environment, GITHUB_ENV, `if: always()` and the
// actions the nightly uses, emulated. It reads the workflow file itself,
// so the dry run cannot drift from it: whatever it does not know (an
// expression, an action, a key that changes how a job runs) stops it,
// named, instead of being skipped.
package dryrun

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Workflow is the part of a workflow file the dry run runs. It is read
// from yaml.v3's node tree rather than through sigs.k8s.io/yaml: that one
// goes through JSON objects, which lose the order of the jobs and of the
// matrix's keys, and both orders are the run's.
type Workflow struct {
	Path        string
	Name        string
	Env         []KV
	Concurrency string
	Jobs        []*Job
}

// KV is one entry of an ordered mapping (env:, with:, a matrix leg).
type KV struct{ Key, Value string }

// Job is one job of the workflow.
type Job struct {
	ID, Name, RunsOn string
	Timeout          time.Duration
	Matrix           *Matrix
	Env              []KV
	Steps            []*Step
	Line             int
}

// Matrix is a strategy.matrix of lists and excludes.
type Matrix struct {
	Keys    []string
	Values  map[string][]string
	Exclude []map[string]string
}

// Step is one step of a job.
type Step struct {
	// Index counts from 1, as the plan and the logs number steps.
	Index                   int
	Name, ID, Uses, Run, If string
	With, Env               []KV
	Line                    int
}

// Title is the step's name, or the one Actions gives an unnamed step.
func (s *Step) Title() string {
	if s.Name != "" {
		return s.Name
	}
	if s.Uses != "" {
		return "Run " + s.Uses
	}
	first, _, _ := strings.Cut(strings.TrimSpace(s.Run), "\n")
	return "Run " + first
}

// Keys the dry run knows at each level. Anything else changes how a job
// runs in a way it does not emulate (needs:, services:, container:,
// defaults:, shell:, working-directory:, continue-on-error:, matrix
// include:), so it refuses the workflow rather than run it differently.
var (
	workflowKeys = []string{"name", "run-name", "on", "permissions", "concurrency", "env", "jobs"}
	jobKeys      = []string{"name", "runs-on", "timeout-minutes", "strategy", "env", "steps", "permissions"}
	strategyKeys = []string{"fail-fast", "matrix", "max-parallel"}
	stepKeys     = []string{"name", "id", "uses", "run", "with", "env", "if"}
)

// DefaultJobTimeout is Actions' timeout-minutes when a job sets none.
const DefaultJobTimeout = 360 * time.Minute

// Load reads and parses a workflow file.
func Load(path string) (*Workflow, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	wf, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	wf.Path = path
	return wf, nil
}

// Parse parses a workflow.
func Parse(b []byte) (*Workflow, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("not a YAML document")
	}
	top := doc.Content[0]
	wf := &Workflow{}
	err := eachPair(top, "the workflow", workflowKeys, func(k string, v *yaml.Node) error {
		var err error
		switch k {
		case "name":
			wf.Name, err = scalar(v, k)
		case "env":
			wf.Env, err = kvs(v, k)
		case "concurrency":
			wf.Concurrency, err = concurrency(v)
		case "jobs":
			wf.Jobs, err = jobs(v)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(wf.Jobs) == 0 {
		return nil, fmt.Errorf("the workflow has no jobs")
	}
	return wf, nil
}

func jobs(n *yaml.Node) ([]*Job, error) {
	var out []*Job
	err := eachPair(n, "jobs", nil, func(id string, v *yaml.Node) error {
		j, err := job(id, v)
		if err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
		out = append(out, j)
		return nil
	})
	return out, err
}

func job(id string, n *yaml.Node) (*Job, error) {
	j := &Job{ID: id, Timeout: DefaultJobTimeout, Line: n.Line}
	err := eachPair(n, "a job", jobKeys, func(k string, v *yaml.Node) error {
		var err error
		switch k {
		case "name":
			j.Name, err = scalar(v, k)
		case "runs-on":
			j.RunsOn, err = scalar(v, k)
			// The dry run is a hosted Ubuntu runner: runner.os is Linux and
			// the default shell bash.
			if err == nil && !strings.HasPrefix(j.RunsOn, "ubuntu-") {
				err = fmt.Errorf("line %d: runs-on %q: the dry run only stands in for ubuntu-* runners", v.Line, j.RunsOn)
			}
		case "timeout-minutes":
			var s string
			if s, err = scalar(v, k); err == nil {
				var m int
				if m, err = strconv.Atoi(s); err != nil || m <= 0 {
					err = fmt.Errorf("line %d: timeout-minutes %q is not a positive whole number", v.Line, s)
				}
				j.Timeout = time.Duration(m) * time.Minute
			}
		case "env":
			j.Env, err = kvs(v, k)
		case "strategy":
			err = eachPair(v, "strategy", strategyKeys, func(k string, v *yaml.Node) error {
				if k != "matrix" {
					// fail-fast and max-parallel only matter to legs
					// running side by side; the dry run runs them in turn
					// and always runs every one.
					return nil
				}
				var err error
				j.Matrix, err = matrix(v)
				return err
			})
		case "steps":
			j.Steps, err = steps(v)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if j.RunsOn == "" {
		return nil, fmt.Errorf("line %d: no runs-on", n.Line)
	}
	if len(j.Steps) == 0 {
		return nil, fmt.Errorf("line %d: no steps", n.Line)
	}
	return j, nil
}

func matrix(n *yaml.Node) (*Matrix, error) {
	if n.Kind != yaml.MappingNode {
		// An expression (fromJSON) builds the legs at run time.
		return nil, fmt.Errorf("line %d: strategy.matrix is not a mapping of lists: the dry run cannot know its legs", n.Line)
	}
	m := &Matrix{Values: map[string][]string{}}
	err := eachPair(n, "strategy.matrix", nil, func(k string, v *yaml.Node) error {
		switch k {
		case "include":
			// include's merge rules (extend a leg or add one) are not
			// emulated; refuse it rather than guess the legs.
			return fmt.Errorf("line %d: matrix include: is not emulated by the dry run", v.Line)
		case "exclude":
			if v.Kind != yaml.SequenceNode {
				return fmt.Errorf("line %d: matrix exclude: is not a list", v.Line)
			}
			for _, e := range v.Content {
				kv, err := kvs(e, "exclude")
				if err != nil {
					return err
				}
				x := map[string]string{}
				for _, p := range kv {
					x[p.Key] = p.Value
				}
				m.Exclude = append(m.Exclude, x)
			}
			return nil
		}
		if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
			return fmt.Errorf("line %d: matrix %s: is not a list of values", v.Line, k)
		}
		for _, e := range v.Content {
			s, err := scalar(e, "matrix "+k)
			if err != nil {
				return err
			}
			m.Values[k] = append(m.Values[k], s)
		}
		m.Keys = append(m.Keys, k)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(m.Keys) == 0 {
		return nil, fmt.Errorf("line %d: the matrix has no keys", n.Line)
	}
	for _, x := range m.Exclude {
		for k, v := range x {
			if !slices.Contains(m.Values[k], v) {
				return nil, fmt.Errorf("matrix exclude %s: %s is not one of the matrix's values: it excludes nothing", k, v)
			}
		}
	}
	return m, nil
}

func steps(n *yaml.Node) ([]*Step, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: steps: is not a list", n.Line)
	}
	var out []*Step
	for i, sn := range n.Content {
		s := &Step{Index: i + 1, Line: sn.Line}
		err := eachPair(sn, "a step", stepKeys, func(k string, v *yaml.Node) error {
			var err error
			switch k {
			case "name":
				s.Name, err = scalar(v, k)
			case "id":
				s.ID, err = scalar(v, k)
			case "uses":
				s.Uses, err = scalar(v, k)
			case "run":
				s.Run, err = scalar(v, k)
			case "if":
				s.If, err = scalar(v, k)
			case "with":
				s.With, err = kvs(v, k)
			case "env":
				s.Env, err = kvs(v, k)
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", i+1, err)
		}
		if (s.Uses == "") == (s.Run == "") {
			return nil, fmt.Errorf("step %d (line %d): needs exactly one of uses: and run:", i+1, sn.Line)
		}
		if s.Run != "" && len(s.With) > 0 {
			return nil, fmt.Errorf("step %d (line %d): a run: step takes no with:", i+1, sn.Line)
		}
		out = append(out, s)
	}
	return out, nil
}

func concurrency(n *yaml.Node) (string, error) {
	if n.Kind == yaml.ScalarNode {
		return n.Value, nil
	}
	var group string
	err := eachPair(n, "concurrency", []string{"group", "cancel-in-progress"}, func(k string, v *yaml.Node) error {
		var err error
		if k == "group" {
			group, err = scalar(v, k)
		}
		return err
	})
	return group, err
}

// eachPair calls fn for every key of a mapping in file order; known, when
// not nil, lists the keys allowed.
func eachPair(n *yaml.Node, what string, known []string, fn func(string, *yaml.Node) error) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: %s is not a mapping", n.Line, what)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if known != nil && !slices.Contains(known, k.Value) {
			return fmt.Errorf("line %d: %s has %q, which the dry run does not emulate (it knows %s)", k.Line, what, k.Value, strings.Join(known, ", "))
		}
		if err := fn(k.Value, v); err != nil {
			return err
		}
	}
	return nil
}

func scalar(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("line %d: %s is not a single value", n.Line, what)
	}
	return n.Value, nil
}

func kvs(n *yaml.Node, what string) ([]KV, error) {
	var out []KV
	err := eachPair(n, what, nil, func(k string, v *yaml.Node) error {
		s, err := scalar(v, what+"."+k)
		out = append(out, KV{k, s})
		return err
	})
	return out, err
}

// Leg is one run of a job: one combination of its matrix, or the job
// itself when it has none.
type Leg struct {
	Job    *Job
	Matrix []KV
}

// Name is the leg's matrix values joined by "/" in the matrix's key
// order ("ipvs/reference"), or "" for a job without a matrix.
func (l Leg) Name() string {
	var v []string
	for _, kv := range l.Matrix {
		v = append(v, kv.Value)
	}
	return strings.Join(v, "/")
}

// ID is job/leg, or the job alone.
func (l Leg) ID() string {
	if n := l.Name(); n != "" {
		return l.Job.ID + "/" + n
	}
	return l.Job.ID
}

// MatrixValue returns the leg's value for a matrix key.
func (l Leg) MatrixValue(k string) (string, bool) {
	for _, kv := range l.Matrix {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return "", false
}

// Legs lists a job's legs in the order Actions creates them: the first
// matrix key varies slowest; excluded combinations are left out.
func (j *Job) Legs() []Leg {
	if j.Matrix == nil {
		return []Leg{{Job: j}}
	}
	combos := [][]KV{nil}
	for _, k := range j.Matrix.Keys {
		var next [][]KV
		for _, c := range combos {
			for _, v := range j.Matrix.Values[k] {
				next = append(next, append(slices.Clone(c), KV{k, v}))
			}
		}
		combos = next
	}
	var out []Leg
	for _, c := range combos {
		if !j.Matrix.excluded(c) {
			out = append(out, Leg{Job: j, Matrix: c})
		}
	}
	return out
}

func (m *Matrix) excluded(c []KV) bool {
	for _, x := range m.Exclude {
		all := true
		for _, kv := range c {
			if v, ok := x[kv.Key]; ok && v != kv.Value {
				all = false
			}
		}
		if all {
			return true
		}
	}
	return false
}
