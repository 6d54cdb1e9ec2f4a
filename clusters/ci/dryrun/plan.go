package dryrun

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Config is what a dry run needs.
type Config struct {
	Workflow  *Workflow
	Workspace string
	// Makefile is the workspace's Makefile, which the shortenings' ?=
	// variables are checked against.
	Makefile []byte
	// MachineCache is this machine's proxymodes cache, which the cache
	// steps stand for (the Makefile's CACHE default).
	MachineCache string
	Shortenings  []Shortening
	Wholes       []Whole
	Limits       []HostLimit
	// Only selects legs: "job" or "job/leg", a leg prefix of whole
	// elements selecting several ("conformance/ipvs").
	Only []string
	// Environ is this machine's environment (os.Environ()).
	Environ []string
	// SudoShim puts a stand-in for sudo first in PATH (root, no sudo).
	SudoShim bool
	// SudoNote says how the steps' sudo works here, for the plan.
	SudoNote string
	// Git answers github.ref and github.sha.
	Git func(field string) (string, error)
}

// DryRun is a checked plan: every leg's every expression expands and
// every action is known, or New fails.
type DryRun struct {
	cfg     Config
	legs    []Leg
	short   map[*Step]*Shortened
	hostEnv []string
	dropped []string
}

// New checks the configuration and the whole plan.
func New(cfg Config) (*DryRun, error) {
	d := &DryRun{cfg: cfg}
	var err error
	if d.short, err = ApplyShortenings(cfg.Workflow, cfg.Makefile, cfg.Shortenings, cfg.Wholes); err != nil {
		return nil, err
	}
	if d.legs, err = SelectLegs(cfg.Workflow, cfg.Only); err != nil {
		return nil, err
	}
	d.hostEnv, d.dropped = HostEnv(cfg.Environ, MakefileVars(cfg.Makefile))
	if err := d.Plan(io.Discard); err != nil {
		return nil, err
	}
	return d, nil
}

// Legs are the selected legs in run order.
func (d *DryRun) Legs() []Leg { return d.legs }

// SelectLegs lists every leg of every job in file order, or those only
// names. A selection that names nothing is an error, listing the legs.
func SelectLegs(wf *Workflow, only []string) ([]Leg, error) {
	var all, out []Leg
	for _, j := range wf.Jobs {
		all = append(all, j.Legs()...)
	}
	if len(only) == 0 {
		return all, nil
	}
	used := make([]bool, len(only))
	for _, l := range all {
		for i, o := range only {
			if o == l.Job.ID || o == l.ID() || strings.HasPrefix(l.ID(), o+"/") {
				used[i] = true
				out = append(out, l)
				break
			}
		}
	}
	for i, u := range used {
		if !u {
			var ids []string
			for _, l := range all {
				ids = append(ids, l.ID())
			}
			return nil, fmt.Errorf("--only %s names no job or leg; the workflow has %s", only[i], strings.Join(ids, ", "))
		}
	}
	return out, nil
}

// placeholder stands for the leg's RUNNER_TEMP in a plan.
const placeholder = "$RUNNER_TEMP"

// legState is what expressions and steps see of a leg as it goes.
type legState struct {
	leg        Leg
	runnerTemp string
	// base is the workflow's and the job's env:, expanded.
	base []KV
	// githubEnv is what steps appended to GITHUB_ENV, in order.
	githubEnv []KV
	// pending names GITHUB_ENV variables only a run knows (plans).
	pending map[string]string
}

func (d *DryRun) context(st *legState, extra []KV) *Context {
	var m map[string]string
	if st.leg.Job.Matrix != nil {
		m = map[string]string{}
		for _, kv := range st.leg.Matrix {
			m[kv.Key] = kv.Value
		}
	}
	env := map[string]string{}
	for _, l := range [][]KV{st.base, st.githubEnv, extra} {
		for _, kv := range l {
			env[kv.Key] = kv.Value
		}
	}
	job := st.leg.Job.ID
	return &Context{Matrix: m, RunnerTemp: st.runnerTemp, Workspace: d.cfg.Workspace, Env: env, Pending: st.pending,
		Github: func(f string) (string, error) {
			switch f {
			case "workspace":
				return d.cfg.Workspace, nil
			case "job":
				return job, nil
			case "event_name":
				// The nightly's on-demand trigger: a dry run is one.
				return "workflow_dispatch", nil
			}
			if d.cfg.Git == nil {
				return "", fmt.Errorf("github.%s needs git, which the dry run was not given", f)
			}
			return d.cfg.Git(f)
		}}
}

// startLeg expands the workflow's and the job's env: for a leg.
func (d *DryRun) startLeg(l Leg, runnerTemp string) (*legState, error) {
	st := &legState{leg: l, runnerTemp: runnerTemp}
	for _, kvs := range [][]KV{d.cfg.Workflow.Env, l.Job.Env} {
		for _, kv := range kvs {
			v, err := d.context(st, nil).Expand(kv.Value)
			if err != nil {
				return nil, fmt.Errorf("%s: env %s: %w", l.ID(), kv.Key, err)
			}
			st.base = append(st.base, KV{kv.Key, v})
		}
	}
	return st, nil
}

// stepEnv expands a step's env:.
func (d *DryRun) stepEnv(st *legState, s *Step) ([]KV, error) {
	var out []KV
	for _, kv := range s.Env {
		v, err := d.context(st, out).Expand(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", kv.Key, err)
		}
		out = append(out, KV{kv.Key, v})
	}
	return out, nil
}

// action is a uses: step's action, without its version.
func action(uses string) (name, ref string) {
	name, ref, _ = strings.Cut(uses, "@")
	return name, ref
}

// knownInputs are the with: inputs the dry run emulates per action; an
// unknown input (fetch-depth, go-version, …) changes what a step does,
// so it is an error rather than ignored.
var knownInputs = map[string][]string{
	"actions/checkout":        nil,
	"actions/setup-go":        {"go-version-file"},
	"actions/cache":           {"path", "key", "restore-keys"},
	"actions/upload-artifact": {"name", "path", "if-no-files-found", "retention-days"},
}

// expandWith checks a uses: step's action and inputs and expands them.
func (d *DryRun) expandWith(c *Context, s *Step) (map[string]string, error) {
	name, _ := action(s.Uses)
	known, ok := knownInputs[name]
	if !ok {
		var names []string
		for n := range knownInputs {
			names = append(names, n)
		}
		slices.Sort(names)
		return nil, fmt.Errorf("uses: %s is an action the dry run does not emulate (it knows %s)", s.Uses, strings.Join(names, ", "))
	}
	with := map[string]string{}
	for _, kv := range s.With {
		if !slices.Contains(known, kv.Key) {
			return nil, fmt.Errorf("%s: input %s is not emulated by the dry run (it knows %s)", s.Uses, kv.Key, strings.Join(known, ", "))
		}
		v, err := c.Expand(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: with %s: %w", s.Uses, kv.Key, err)
		}
		with[kv.Key] = v
	}
	switch name {
	case "actions/setup-go":
		if with["go-version-file"] == "" {
			return nil, fmt.Errorf("%s: the dry run checks the Go version against go-version-file, which the step does not give", s.Uses)
		}
	case "actions/cache":
		if with["path"] == "" || with["key"] == "" {
			return nil, fmt.Errorf("%s: needs path and key", s.Uses)
		}
	case "actions/upload-artifact":
		if with["name"] == "" || with["path"] == "" {
			return nil, fmt.Errorf("%s: the dry run needs the artifact's name and path", s.Uses)
		}
		switch with["if-no-files-found"] {
		case "", "warn", "error", "ignore":
		default:
			return nil, fmt.Errorf("%s: if-no-files-found %q is not warn, error or ignore", s.Uses, with["if-no-files-found"])
		}
	}
	return with, nil
}

// cacheLinks maps an actions/cache path: to this machine's cache. The
// workflow's runs pass CACHE="$RUNNER_TEMP/proxymodes-cache" and restore
// parts of it; here those parts are this machine's cache directory's.
func (d *DryRun) cacheLinks(runnerTemp, paths string) ([]KV, error) {
	var out []KV
	root := filepath.Join(runnerTemp, "proxymodes-cache")
	for _, p := range lines(paths) {
		rel, ok := strings.CutPrefix(filepath.Clean(p), root+"/")
		if !ok || rel == "" {
			return nil, fmt.Errorf("actions/cache path %s is not under %s: the dry run knows no cache of this machine for it", p, root)
		}
		out = append(out, KV{p, filepath.Join(d.cfg.MachineCache, rel)})
	}
	return out, nil
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// goModVersion reads a go.mod's go line.
func goModVersion(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s has no go line", path)
	}
	return string(m[1]), nil
}

// Plan prints every selected leg's steps: the commands, their
// environment and what each action does here. It runs nothing; it reads
// the files hashFiles hashes and probes the host's limits.
func (d *DryRun) Plan(w io.Writer) error {
	wf := d.cfg.Workflow
	group := ""
	if wf.Concurrency != "" {
		// Not needed to run anything; expanded so that an expression the
		// dry run does not know fails here too.
		st := &legState{leg: Leg{Job: &Job{ID: "(workflow)"}}}
		var err error
		if group, err = d.context(st, nil).Expand(wf.Concurrency); err != nil {
			return fmt.Errorf("concurrency: %w", err)
		}
		group = "; concurrency group " + group
	}
	fmt.Fprintf(w, "nightly-dry-run: plan of %s (%q%s), in %s\n", wf.Path, wf.Name, group, d.cfg.Workspace)
	fmt.Fprintf(w, "Legs run one after another in the workflow's order. Each `run:` step is `bash --noprofile --norc -eo pipefail <script>` in %s, as Actions runs it; a step runs if its `if:` allows it (success(), the default: not after a failed step; always(): even then).\n", d.cfg.Workspace)
	fmt.Fprintf(w, "Every step's environment: this machine's")
	if len(d.dropped) > 0 {
		fmt.Fprintf(w, " less %s (a fresh runner has none of them)", strings.Join(d.dropped, " "))
	}
	fmt.Fprintf(w, "; then")
	for _, kv := range runnerEnv {
		fmt.Fprintf(w, " %s=%s", kv.Key, kv.Value)
	}
	fmt.Fprintf(w, " GITHUB_WORKSPACE=%s RUNNER_TEMP=%s (a fresh directory per leg, removed after it unless it failed) GITHUB_ENV=<a fresh file per step: its NAME=value lines reach the later steps>; then the workflow's, the job's, GITHUB_ENV's and the step's env.\n", d.cfg.Workspace, placeholder)
	if d.cfg.SudoNote != "" {
		fmt.Fprintf(w, "sudo: %s\n", d.cfg.SudoNote)
	}
	fmt.Fprintf(w, "Shortened (clusters/ci/dryrun/shorten.go):\n")
	for _, sh := range d.cfg.Shortenings {
		what := sh.Old
		if what != "" {
			what = fmt.Sprintf("%q → %q", strings.TrimSpace(sh.Old), strings.TrimSpace(sh.New))
		}
		for _, kv := range sh.Env {
			what = strings.TrimSpace(what + " " + kv.Key + "=" + shellQuote(kv.Value))
		}
		fmt.Fprintf(w, "  %s, step %q: %s: %s\n", sh.Job, sh.Step, what, sh.Why)
	}
	for _, wh := range d.cfg.Wholes {
		fmt.Fprintf(w, "  %s: run whole: %s\n", wh.Job, wh.Why)
	}
	for _, lim := range d.cfg.Limits {
		why := lim.Missing()
		if why == "" {
			fmt.Fprintf(w, "Host limit %s: present here; the steps that load it run as any other.\n", lim.Name)
			continue
		}
		fmt.Fprintf(w, "Host limit %s: %s. A step loading it that fails here is \"cannot run here\", not failed; a leg whose rest needs it stops there.\n", lim.Name, why)
	}
	for i, l := range d.legs {
		if i == 0 || d.legs[i-1].Job != l.Job {
			j := l.Job
			fmt.Fprintf(w, "\njob %s (line %d, runs-on %s, timeout %s)\n", j.ID, j.Line, j.RunsOn, j.Timeout)
		}
		if err := d.planLeg(w, l); err != nil {
			return err
		}
	}
	return nil
}

func (d *DryRun) planLeg(w io.Writer, l Leg) error {
	st, err := d.startLeg(l, placeholder)
	if err != nil {
		return err
	}
	st.pending = map[string]string{}
	name := l.Job.Name
	if name != "" {
		if name, err = d.context(st, nil).Expand(name); err != nil {
			return fmt.Errorf("%s: name: %w", l.ID(), err)
		}
	}
	leg := l.Name()
	if leg == "" {
		leg = "(no matrix)"
	}
	fmt.Fprintf(w, "  leg %s: %q\n", leg, name)
	if len(st.base) > 0 {
		fmt.Fprintf(w, "    env: %s\n", kvString(st.base))
	}
	for _, lim := range d.cfg.Limits {
		missing := lim.Missing()
		if missing == "" || !slices.ContainsFunc(l.Job.Steps, lim.Loads) {
			continue
		}
		if needs, why := lim.Needs(l); needs {
			fmt.Fprintf(w, "    here: no %s, which this leg needs (%s): it stops as \"cannot run here\" once the step loading it fails\n", lim.Name, why)
		} else {
			fmt.Fprintf(w, "    here: no %s; the step loading it cannot run here, and the leg goes on: %s\n", lim.Name, why)
		}
	}
	for _, s := range l.Job.Steps {
		if err := d.planStep(w, st, s); err != nil {
			return fmt.Errorf("%s: step %d (%s, line %d): %w", l.ID(), s.Index, s.Title(), s.Line, err)
		}
	}
	return nil
}

func (d *DryRun) planStep(w io.Writer, st *legState, s *Step) error {
	cond, err := ParseIf(s.If)
	if err != nil {
		return err
	}
	senv, err := d.stepEnv(st, s)
	if err != nil {
		return err
	}
	c := d.context(st, senv)
	title, err := c.Expand(s.Title())
	if err != nil {
		return fmt.Errorf("name: %w", err)
	}
	head := fmt.Sprintf("    %d. %s", s.Index, title)
	if cond != IfSuccess {
		head += " [if: " + cond.String() + "]"
	}
	if s.Run != "" {
		run := s.Run
		sh := d.short[s]
		if sh != nil {
			run = sh.Run
		}
		run, err := c.Expand(run)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		fmt.Fprintf(w, "%s: run\n", head)
		if len(senv) > 0 {
			fmt.Fprintf(w, "       env: %s\n", kvString(senv))
		}
		if sh != nil {
			fmt.Fprintf(w, "       shortened: %s\n", strings.Join(sh.Desc, ", "))
		}
		for _, line := range strings.Split(strings.TrimRight(run, "\n"), "\n") {
			fmt.Fprintf(w, "       | %s\n", line)
		}
		for _, lim := range d.cfg.Limits {
			if lim.Loads(s) {
				if why := lim.Missing(); why != "" {
					fmt.Fprintf(w, "       here: loads %s, which this host lacks: if it fails, \"cannot run here\", not failed\n", lim.Name)
				}
			}
		}
		for _, name := range GithubEnvWrites(s.Run) {
			st.pending[name] = fmt.Sprintf("<%s, from step %d's GITHUB_ENV>", name, s.Index)
		}
		return nil
	}
	with, err := d.expandWith(c, s)
	if err != nil {
		return err
	}
	name, _ := action(s.Uses)
	if s.Name != "" {
		head += ": " + s.Uses
	}
	fmt.Fprintf(w, "%s: ", head)
	switch name {
	case "actions/checkout":
		fmt.Fprintf(w, "nothing: the checkout is the working tree\n")
	case "actions/setup-go":
		v, err := goModVersion(filepath.Join(d.cfg.Workspace, with["go-version-file"]))
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "check that `go version` is at least %s's go %s\n", with["go-version-file"], v)
	case "actions/cache":
		links, err := d.cacheLinks(st.runnerTemp, with["path"])
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "key %s; a warm hit:", with["key"])
		for _, kv := range links {
			state := "present here"
			if _, err := os.Stat(kv.Value); err != nil {
				state = "missing here: created, so this leg fills it as Actions saves a missed cache"
			}
			fmt.Fprintf(w, " link %s → %s (%s)", kv.Key, kv.Value, state)
		}
		fmt.Fprintln(w)
	case "actions/upload-artifact":
		fmt.Fprintf(w, "artifact %s: %s must hold a non-empty file this leg wrote", with["name"], strings.Join(lines(with["path"]), ", "))
		if v := with["if-no-files-found"]; v != "" && v != "error" {
			fmt.Fprintf(w, " (the workflow's if-no-files-found: %s; here nothing is a failure)", v)
		}
		fmt.Fprintln(w)
	}
	return nil
}

func kvString(kv []KV) string {
	var parts []string
	for _, p := range kv {
		parts = append(parts, p.Key+"="+shellQuote(p.Value))
	}
	return strings.Join(parts, " ")
}

var plainRE = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./$<>()-]*$`)

func shellQuote(s string) string {
	if plainRE.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
