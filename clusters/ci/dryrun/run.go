package dryrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/version"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Status is a leg's outcome.
type Status int

const (
	Passed Status = iota
	// PassedHere: every step that could run passed; a step that cannot
	// run on this machine (and that the rest of the leg does not need)
	// did not. Counted apart from Passed: that step is unproven here.
	PassedHere
	CannotRun
	Failed
	Interrupted
)

// Result is one leg's outcome.
type Result struct {
	Leg    Leg
	Status Status
	// Why says what failed or cannot run, and why.
	Why  string
	Time time.Duration
	// Log is the leg's output; RunnerTemp is kept when the leg failed.
	Log, RunnerTemp string
	// Artifacts lists where the leg's uploads went.
	Artifacts []string
}

func (r Result) String() string {
	switch r.Status {
	case Passed:
		return "passed"
	case PassedHere:
		return "passed, but " + r.Why
	case CannotRun:
		return "cannot run here: " + r.Why
	case Interrupted:
		return "INTERRUPTED: " + r.Why
	}
	return "FAILED: " + r.Why
}

// Options are a run's.
type Options struct {
	// OutDir receives each leg's log, its RUNNER_TEMP and its artifacts.
	OutDir string
	// Out gets the progress lines; Verbose also the steps' output.
	Out     io.Writer
	Verbose bool
	// AlwaysTimeout bounds the if: always() steps that run after a leg's
	// timeout, as Actions still runs them after cancelling a job.
	AlwaysTimeout time.Duration
}

// Run runs the selected legs in order. It stops early only when ctx is
// cancelled (an interrupt); a failed leg does not stop the others, as
// fail-fast: false does not.
func (d *DryRun) Run(ctx context.Context, o Options) ([]Result, error) {
	if o.AlwaysTimeout == 0 {
		o.AlwaysTimeout = 10 * time.Minute
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	r := &runner{d: d, o: o, names: map[string]string{}}
	if d.cfg.SudoShim {
		bin := filepath.Join(o.OutDir, "sudo-shim")
		if err := WriteSudoShim(bin); err != nil {
			return nil, err
		}
		r.path = bin
	}
	var results []Result
	for _, l := range d.legs {
		if ctx.Err() != nil {
			break
		}
		res := r.leg(ctx, l)
		results = append(results, res)
		fmt.Fprintf(o.Out, "nightly-dry-run: %s: %s in %s (log %s)\n", l.ID(), res, res.Time.Round(time.Second), res.Log)
	}
	return results, nil
}

type runner struct {
	d *DryRun
	o Options
	// path is the sudo shim's directory, put first in PATH, or "".
	path string
	// names are the artifacts uploaded so far, by leg: upload-artifact v4
	// refuses a second artifact of a name in one workflow run.
	names map[string]string
}

// upload is an artifact a leg uploaded, moved out at the leg's end.
type upload struct {
	name  string
	paths []string
}

type legRun struct {
	*legState
	res *Result
	// log gets the steps' output: the leg's log file, and with Verbose
	// the terminal too; file is the log file alone.
	log, file io.Writer
	start     time.Time
	before    map[string]bool
	uploads   []upload
	failed    bool
	notHere   []string
	stopWhy   string
	stepTail  *tail
}

func (r *runner) leg(parent context.Context, l Leg) Result {
	start := time.Now()
	res := Result{Leg: l}
	slug := strings.NewReplacer("/", "-", " ", "_").Replace(l.ID())
	res.Log = filepath.Join(r.o.OutDir, slug+".log")
	fail := func(format string, a ...any) Result {
		res.Status, res.Why, res.Time = Failed, fmt.Sprintf(format, a...), time.Since(start)
		return res
	}
	logf, err := os.Create(res.Log)
	if err != nil {
		return fail("%v", err)
	}
	defer logf.Close()
	tmp, err := os.MkdirTemp(r.o.OutDir, slug+"-runner-temp-")
	if err != nil {
		return fail("%v", err)
	}
	// Kept unless the leg ends well; cleared when it is removed.
	res.RunnerTemp = tmp
	st, err := r.d.startLeg(l, tmp)
	if err != nil {
		return fail("%v", err)
	}
	var log io.Writer = logf
	if r.o.Verbose {
		log = io.MultiWriter(logf, r.o.Out)
	}
	lr := &legRun{legState: st, res: &res, log: log, file: logf, start: start, before: map[string]bool{}}
	fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: RUNNER_TEMP %s\n", l.ID(), tmp)
	// The plan of this leg heads its log: what was to run, then what ran.
	if err := r.d.planLeg(logf, l); err != nil {
		return fail("%v", err)
	}
	r.snapshotUploads(lr)

	ctx, cancel := context.WithTimeout(parent, l.Job.Timeout)
	defer cancel()
	for _, s := range l.Job.Steps {
		cond, err := ParseIf(s.If)
		if err != nil {
			return fail("step %d: %v", s.Index, err)
		}
		if parent.Err() != nil {
			res.Status, res.Why = Interrupted, fmt.Sprintf("before step %d (%s)", s.Index, s.Title())
			break
		}
		if !cond.Runs(lr.failed) {
			why := "no step failed"
			if lr.failed {
				why = "after a failed step"
			}
			r.progress(lr, s, "skipped (if: "+cond.String()+", "+why+")", 0)
			continue
		}
		sctx := ctx
		if ctx.Err() != nil && cond == IfAlways {
			// Actions still runs always() steps once a job timed out.
			var c context.CancelFunc
			sctx, c = context.WithTimeout(context.WithoutCancel(parent), r.o.AlwaysTimeout)
			defer c()
		}
		t0 := time.Now()
		out := r.step(sctx, lr, s)
		if parent.Err() != nil {
			r.progress(lr, s, "interrupted", time.Since(t0))
			res.Status, res.Why = Interrupted, fmt.Sprintf("during step %d (%s)", s.Index, s.Title())
			break
		}
		r.progress(lr, s, out.String(), time.Since(t0))
		switch out.kind {
		case stepFailed:
			if !lr.failed {
				res.Why = fmt.Sprintf("step %d (%s): %s", s.Index, s.Title(), out.why)
			}
			lr.failed = true
			if lr.stepTail != nil && !r.o.Verbose {
				fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: the step's last lines:\n%s", l.ID(), lr.stepTail.String())
			}
		case stepNotHere:
			lr.notHere = append(lr.notHere, fmt.Sprintf("step %d (%s) cannot run here: %s", s.Index, s.Title(), out.why))
			if out.stop != "" {
				lr.stopWhy = fmt.Sprintf("%s; the rest of the leg needs it: %s", out.why, out.stop)
			}
		}
		if lr.stopWhy != "" {
			break
		}
	}
	res.Time = time.Since(start)
	switch {
	case res.Status == Interrupted:
	case parent.Err() != nil:
		res.Status, res.Why = Interrupted, "interrupted"
	case lr.failed:
		res.Status = Failed
		if ctx.Err() == context.DeadlineExceeded {
			res.Why += fmt.Sprintf(" (the job's timeout-minutes, %s, ran out)", l.Job.Timeout)
		}
	case lr.stopWhy != "":
		res.Status, res.Why = CannotRun, lr.stopWhy
	case len(lr.notHere) > 0:
		res.Status, res.Why = PassedHere, strings.Join(lr.notHere, "; ")
	}
	r.moveUploads(lr)
	if res.Status == Failed || res.Status == Interrupted {
		fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: RUNNER_TEMP kept: %s\n", l.ID(), tmp)
	} else if err := removeRunnerTemp(tmp); err != nil {
		fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: RUNNER_TEMP %s left in place: %v\n", l.ID(), tmp, err)
	} else {
		res.RunnerTemp = ""
	}
	return res
}

func (r *runner) progress(lr *legRun, s *Step, what string, d time.Duration) {
	line := fmt.Sprintf("nightly-dry-run: %s: step %d/%d %s: %s", lr.leg.ID(), s.Index, len(lr.leg.Job.Steps), s.Title(), what)
	if d > 0 {
		line += fmt.Sprintf(" (%s)", d.Round(time.Second))
	}
	fmt.Fprintln(r.o.Out, line)
	fmt.Fprintln(lr.file, line)
}

type stepKind int

const (
	stepPassed stepKind = iota
	stepFailed
	stepNotHere
)

type stepOutcome struct {
	kind stepKind
	// why: what failed, what cannot run here, or what an action did.
	why string
	// stop, for a step that cannot run here, says why the rest of the
	// leg needs it; "" lets the leg go on.
	stop string
}

func (o stepOutcome) String() string {
	switch o.kind {
	case stepFailed:
		return "FAILED: " + o.why
	case stepNotHere:
		s := "cannot run here: " + o.why
		if o.stop != "" {
			s += "; the leg stops: " + o.stop
		}
		return s
	}
	if o.why != "" {
		return "passed: " + o.why
	}
	return "passed"
}

func failed(format string, a ...any) stepOutcome {
	return stepOutcome{kind: stepFailed, why: fmt.Sprintf(format, a...)}
}

func (r *runner) step(ctx context.Context, lr *legRun, s *Step) stepOutcome {
	lr.stepTail = nil
	fmt.Fprintf(lr.log, "\n==> step %d: %s\n", s.Index, s.Title())
	senv, err := r.d.stepEnv(lr.legState, s)
	if err != nil {
		return failed("%v", err)
	}
	c := r.d.context(lr.legState, senv)
	if s.Run != "" {
		return r.runStep(ctx, lr, s, c, senv)
	}
	with, err := r.d.expandWith(c, s)
	if err != nil {
		return failed("%v", err)
	}
	name, _ := action(s.Uses)
	switch name {
	case "actions/checkout":
		return stepOutcome{why: "the checkout is the working tree"}
	case "actions/setup-go":
		return r.setupGo(ctx, lr, with)
	case "actions/cache":
		return r.cache(lr, with)
	case "actions/upload-artifact":
		return r.upload(lr, with)
	}
	return failed("%s is not emulated", s.Uses)
}

// env is a step's process environment, as Actions builds it: the host's,
// the runner's variables, the workflow's and job's env:, GITHUB_ENV's,
// the step's env: and the dry run's shortening.
func (r *runner) env(lr *legRun, githubEnv string, layers ...[]KV) []string {
	env := slices.Clone(r.d.hostEnv)
	if r.path != "" {
		env = setEnv(env, KV{"PATH", r.path + ":" + getenv(env, "PATH")})
	}
	env = setEnv(env, runnerEnv...)
	env = setEnv(env, KV{"GITHUB_WORKSPACE", r.d.cfg.Workspace}, KV{"RUNNER_TEMP", lr.runnerTemp}, KV{"GITHUB_ENV", githubEnv})
	env = setEnv(env, lr.base...)
	env = setEnv(env, lr.githubEnv...)
	for _, l := range layers {
		env = setEnv(env, l...)
	}
	return env
}

func (r *runner) runStep(ctx context.Context, lr *legRun, s *Step, c *Context, senv []KV) stepOutcome {
	run, extra := s.Run, []KV(nil)
	if sh := r.d.short[s]; sh != nil {
		run, extra = sh.Run, sh.Env
	}
	run, err := c.Expand(run)
	if err != nil {
		return failed("run: %v", err)
	}
	dir := filepath.Join(lr.runnerTemp, "_dry_run")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return failed("%v", err)
	}
	script := filepath.Join(dir, fmt.Sprintf("step-%d.sh", s.Index))
	if err := os.WriteFile(script, []byte(run), 0o644); err != nil {
		return failed("%v", err)
	}
	// Actions gives each step a fresh file and reads it after the step.
	ghEnv := filepath.Join(dir, fmt.Sprintf("set_env_%d", s.Index))
	if err := os.WriteFile(ghEnv, nil, 0o666); err != nil {
		return failed("%v", err)
	}
	// Actions' default shell on Linux, with {0} the script.
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-eo", "pipefail", script)
	cmd.Dir = r.d.cfg.Workspace
	cmd.Env = r.env(lr, ghEnv, senv, extra)
	lr.stepTail = &tail{max: 40}
	cmd.Stdout = io.MultiWriter(lr.log, lr.stepTail)
	cmd.Stderr = cmd.Stdout
	// Its own process group, so that a timeout or an interrupt reaches
	// make and the suites under bash, which tear their labs down on
	// SIGINT, as Actions' cancellation starts with SIGINT.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
	cmd.WaitDelay = 2 * time.Minute
	runErr := cmd.Run()
	if cmd.Process != nil && ctx.Err() != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	b, err := os.ReadFile(ghEnv)
	if err == nil {
		var kv []KV
		if kv, err = ParseGithubEnv(b); err == nil {
			lr.githubEnv = append(lr.githubEnv, kv...)
			for _, p := range kv {
				fmt.Fprintf(lr.log, "GITHUB_ENV: %s=%s\n", p.Key, p.Value)
			}
		}
	}
	if runErr != nil {
		if ctx.Err() != nil {
			return failed("%v (%v)", runErr, context.Cause(ctx))
		}
		for _, lim := range r.d.cfg.Limits {
			if !lim.Loads(s) {
				continue
			}
			if why := lim.Missing(); why != "" {
				o := stepOutcome{kind: stepNotHere, why: why}
				needs, because := lim.Needs(lr.leg)
				if needs {
					o.stop = because
				} else {
					o.why += "; the leg goes on: " + because
				}
				return o
			}
		}
		return failed("%v", runErr)
	}
	if err != nil {
		return failed("reading GITHUB_ENV: %v", err)
	}
	return stepOutcome{}
}

var goVersionRE = regexp.MustCompile(`go version (go\S+)`)

func (r *runner) setupGo(ctx context.Context, lr *legRun, with map[string]string) stepOutcome {
	want, err := goModVersion(filepath.Join(r.d.cfg.Workspace, with["go-version-file"]))
	if err != nil {
		return failed("%v", err)
	}
	cmd := exec.CommandContext(ctx, "go", "version")
	cmd.Dir = r.d.cfg.Workspace
	cmd.Env = r.env(lr, "")
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(lr.log, "%s", out)
	if err != nil {
		return failed("go version: %v (setup-go would install Go %s: install it here)", err, want)
	}
	m := goVersionRE.FindSubmatch(out)
	if m == nil {
		return failed("go version printed %q", bytes.TrimSpace(out))
	}
	got := string(m[1])
	if version.Compare(got, "go"+want) < 0 {
		return failed("%s is older than %s's go %s, which setup-go would install", got, with["go-version-file"], want)
	}
	return stepOutcome{why: fmt.Sprintf("%s satisfies %s's go %s", got, with["go-version-file"], want)}
}

func (r *runner) cache(lr *legRun, with map[string]string) stepOutcome {
	links, err := r.d.cacheLinks(lr.runnerTemp, with["path"])
	if err != nil {
		return failed("%v", err)
	}
	var said []string
	for _, kv := range links {
		state := "hit, this machine's cache"
		if _, err := os.Stat(kv.Value); err != nil {
			// Actions saves a missed cache after the job; linking the
			// created directory has this leg fill it for the next.
			if err := os.MkdirAll(kv.Value, 0o755); err != nil {
				return failed("%v", err)
			}
			state = "miss: created, this leg fills it"
		}
		if err := os.MkdirAll(filepath.Dir(kv.Key), 0o755); err != nil {
			return failed("%v", err)
		}
		if err := os.Symlink(kv.Value, kv.Key); err != nil {
			return failed("%v", err)
		}
		said = append(said, fmt.Sprintf("%s → %s (%s)", kv.Key, kv.Value, state))
	}
	fmt.Fprintf(lr.log, "linked %s\n", strings.Join(said, "; "))
	return stepOutcome{why: strings.Join(said, "; ")}
}

// snapshotUploads records what the leg's upload paths match before it
// runs, so that what the leg writes into the checkout (results/*-nightly)
// can be taken out of it afterwards, and nothing that was there before.
func (r *runner) snapshotUploads(lr *legRun) {
	for _, s := range lr.leg.Job.Steps {
		if name, _ := action(s.Uses); name != "actions/upload-artifact" {
			continue
		}
		for _, kv := range s.With {
			if kv.Key != "path" {
				continue
			}
			// A path that needs a later step's GITHUB_ENV cannot be
			// matched yet; nothing is then moved out of the checkout.
			p, err := r.d.context(lr.legState, nil).Expand(kv.Value)
			if err != nil {
				continue
			}
			for _, pat := range lines(p) {
				m, _ := Glob(r.d.cfg.Workspace, pat, false)
				for _, x := range m {
					lr.before[x] = true
				}
			}
		}
	}
}

// upload checks what upload-artifact would take: at least one non-empty
// file that this leg wrote. The workflow says if-no-files-found: warn, but
// a job that wrote nothing is broken, and a glob matching an older result
// set (results/*-nightly) proves nothing about this one.
func (r *runner) upload(lr *legRun, with map[string]string) stepOutcome {
	name := with["name"]
	if leg, ok := r.names[name]; ok {
		return failed("artifact %s was uploaded by %s already: upload-artifact v4 refuses a second artifact of one name in a run", name, leg)
	}
	var matches []string
	for _, p := range lines(with["path"]) {
		m, err := Glob(r.d.cfg.Workspace, p, false)
		if err != nil {
			return failed("%v", err)
		}
		matches = append(matches, m...)
	}
	if len(matches) == 0 {
		return failed("artifact %s: %s matches nothing", name, with["path"])
	}
	fresh, stale, size := 0, 0, int64(0)
	for _, m := range matches {
		_ = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			fi, err := d.Info()
			if err != nil || fi.Size() == 0 {
				return nil
			}
			// One second of slack for file systems with coarse times.
			if fi.ModTime().After(lr.start.Add(-time.Second)) {
				fresh++
				size += fi.Size()
			} else {
				stale++
			}
			return nil
		})
	}
	if fresh == 0 {
		if stale > 0 {
			return failed("artifact %s: %s matches only files older than this leg (%s)", name, with["path"], strings.Join(matches, ", "))
		}
		return failed("artifact %s: %s matches only empty files or directories (%s)", name, with["path"], strings.Join(matches, ", "))
	}
	r.names[name] = lr.leg.ID()
	lr.uploads = append(lr.uploads, upload{name: name, paths: matches})
	return stepOutcome{why: fmt.Sprintf("artifact %s: %d non-empty files (%d bytes) written by this leg in %s", name, fresh, size, strings.Join(matches, ", "))}
}

// moveUploads takes each uploaded path out to OutDir/artifacts/<name>:
// out of RUNNER_TEMP, which goes when the leg passed, and out of the
// checkout, which on a runner is thrown away after the job, but here is
// someone's working tree. Paths the checkout had before the leg stay.
func (r *runner) moveUploads(lr *legRun) {
	for _, u := range lr.uploads {
		dst := filepath.Join(r.o.OutDir, "artifacts", u.name)
		for _, p := range u.paths {
			inTemp := strings.HasPrefix(p, lr.runnerTemp+"/")
			inTree := strings.HasPrefix(p, r.d.cfg.Workspace+"/") && !lr.before[p]
			if !inTemp && !inTree {
				continue
			}
			if err := os.MkdirAll(dst, 0o755); err != nil {
				fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: artifact %s: %v\n", lr.leg.ID(), u.name, err)
				continue
			}
			to := filepath.Join(dst, filepath.Base(p))
			if err := move(p, to); err != nil {
				fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: artifact %s: %v (left in %s)\n", lr.leg.ID(), u.name, err, p)
				continue
			}
			lr.res.Artifacts = append(lr.res.Artifacts, to)
			fmt.Fprintf(r.o.Out, "nightly-dry-run: %s: artifact %s: %s → %s\n", lr.leg.ID(), u.name, p, to)
		}
	}
}

func move(from, to string) error {
	err := os.Rename(from, to)
	var le *os.LinkError
	if errors.As(err, &le) && errors.Is(le.Err, syscall.EXDEV) {
		if out, err := exec.Command("mv", "--", from, to).CombinedOutput(); err != nil {
			return fmt.Errorf("mv: %v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
	return err
}

// removeRunnerTemp removes a leg's RUNNER_TEMP unless something is still
// mounted in it. Its cache links are removed, not followed.
func removeRunnerTemp(dir string) error {
	m, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	if len(m) > 0 {
		return fmt.Errorf("still mounted in it: %s", strings.Join(m, ", "))
	}
	return os.RemoveAll(dir)
}

// Table writes the results, one leg a line, and a count of each outcome.
func Table(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tLEG\tRESULT\tTIME")
	count := map[Status]int{}
	for _, r := range results {
		leg := r.Leg.Name()
		if leg == "" {
			leg = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Leg.Job.ID, leg, r, r.Time.Round(time.Second))
		count[r.Status]++
	}
	tw.Flush()
	fmt.Fprintf(w, "%d legs: %d passed, %d passed but for steps that cannot run here, %d cannot run here, %d FAILED",
		len(results), count[Passed], count[PassedHere], count[CannotRun], count[Failed])
	if count[Interrupted] > 0 {
		fmt.Fprintf(w, ", %d INTERRUPTED", count[Interrupted])
	}
	fmt.Fprintln(w)
}

// OK says whether no leg failed or was interrupted.
func OK(results []Result) bool {
	return !slices.ContainsFunc(results, func(r Result) bool { return r.Status == Failed || r.Status == Interrupted })
}

// tail keeps the last lines written to it.
type tail struct {
	max   int
	lines []string
	part  string
}

func (t *tail) Write(p []byte) (int, error) {
	s := t.part + string(p)
	parts := strings.Split(s, "\n")
	t.part = parts[len(parts)-1]
	t.lines = append(t.lines, parts[:len(parts)-1]...)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	var b strings.Builder
	for _, l := range t.lines {
		b.WriteString("  " + l + "\n")
	}
	if t.part != "" {
		b.WriteString("  " + t.part + "\n")
	}
	return b.String()
}
