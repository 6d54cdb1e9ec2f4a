package dryrun

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeWorkflow exercises the runner's semantics without a lab: the
// matrix and exclude, env layers, GITHUB_ENV, the sudo shim, pipefail,
// if: always(), the actions, uploads of what a leg did and did not
// write, the checkout kept clean, and the host-limit rule.
const fakeWorkflow = `
name: fake
on: workflow_dispatch
jobs:
  good:
    runs-on: ubuntu-24.04
    strategy:
      matrix:
        k: [x, y, z]
        exclude:
          - k: z
    env:
      K: ${{ matrix.k }}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-go@v5
        with:
          go-version-file: go.mod
      - name: Restore
        uses: actions/cache@v4
        with:
          path: ${{ runner.temp }}/proxymodes-cache/k8s
          key: k8s-${{ runner.os }}-${{ hashFiles('go.mod') }}
      - name: Write
        run: |
          # One test a line: bash -e stops only at the last command of a && list.
          test "$CI" = true
          test "$GITHUB_ACTIONS" = true
          test "$RUNNER_OS" = Linux
          test "$GITHUB_WORKSPACE" = "$PWD"
          test -z "${MAKEFLAGS:-}"
          test -z "${PROXYMODES_MODE:-}"
          test "$FEATURE" = one
          test "$(readlink "$RUNNER_TEMP/proxymodes-cache/k8s")" = "$MACHINE_CACHE/k8s"
          mkdir -p "$RUNNER_TEMP/out"
          sudo -E env "PATH=$PATH" sh -c 'echo "$K from $STEP" > "$RUNNER_TEMP/out/$K.txt"'
          echo "N=20 $K" > "$RUNNER_TEMP/out/n.txt"
          echo "NAME=art-$K" >> "$GITHUB_ENV"
        env:
          STEP: write
      - name: See GITHUB_ENV
        run: test "$NAME" = "art-$K" && test -z "${STEP:-}"
      - uses: actions/upload-artifact@v4
        with:
          name: ${{ env.NAME }}
          path: ${{ runner.temp }}/out
  tree:
    runs-on: ubuntu-24.04
    steps:
      - name: Result set
        run: mkdir -p results/2099-01-01-fake && echo set > results/2099-01-01-fake/README.md
      - uses: actions/upload-artifact@v4
        with:
          name: fake-results
          path: results/*-fake
  bad:
    runs-on: ubuntu-24.04
    steps:
      - name: Pipefail
        run: false | true
      - name: Skipped
        run: touch "$RUNNER_TEMP/skipped"
      - name: Always
        if: always()
        run: touch "$RUNNER_TEMP/always"
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: nothing
          path: ${{ runner.temp }}/never-written
  stale:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/upload-artifact@v4
        with:
          name: old
          path: results/*-old
  limits:
    runs-on: ubuntu-24.04
    strategy:
      matrix:
        k: [needs, goes-on]
    steps:
      - name: Load
        run: echo loading fakemod; exit 3
      - name: After
        run: mkdir -p "$RUNNER_TEMP/a" && echo "after ${{ matrix.k }}" > "$RUNNER_TEMP/a/f"
      - uses: actions/upload-artifact@v4
        with:
          name: after-${{ matrix.k }}
          path: ${{ runner.temp }}/a
  present:
    runs-on: ubuntu-24.04
    steps:
      - name: Load
        run: echo loading presentmod; exit 3
`

func fakeLimits() []HostLimit {
	return []HostLimit{
		{Name: "fakemod",
			Loads:   func(s *Step) bool { return strings.Contains(s.Run, "fakemod") },
			Missing: func() string { return "no fakemod in this kernel" },
			Needs: func(l Leg) (bool, string) {
				k, _ := l.MatrixValue("k")
				return k == "needs", "the rest wants fakemod: " + k
			}},
		// Present here: a failure of its load step is a plain failure.
		{Name: "presentmod",
			Loads:   func(s *Step) bool { return strings.Contains(s.Run, "presentmod") },
			Missing: func() string { return "" },
			Needs:   func(Leg) (bool, string) { return true, "" }},
	}
}

func TestRunFakeWorkflow(t *testing.T) {
	ws, out, cache := t.TempDir(), t.TempDir(), t.TempDir()
	write := func(f, s string, mtime time.Time) {
		t.Helper()
		p := filepath.Join(ws, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if !mtime.IsZero() {
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := time.Now().Add(-time.Hour)
	write("go.mod", "module fake\n\ngo 1.21\n", time.Time{})
	write("Makefile", "FEATURE ?=\n", time.Time{})
	write("results/2000-01-01-old/README.md", "an older result set\n", old)
	write("results/2000-01-01-fake/README.md", "kept\n", old)
	if err := os.MkdirAll(filepath.Join(cache, "k8s"), 0o755); err != nil {
		t.Fatal(err)
	}
	wf, err := Parse([]byte(fakeWorkflow))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		Workflow: wf, Workspace: ws, Makefile: []byte("FEATURE ?=\n"), MachineCache: cache,
		Shortenings: []Shortening{{Job: "good", Step: "Write", Old: "N=20 ", New: "N=1 ", Env: []KV{{"FEATURE", "one"}}, Why: "test"}},
		Limits:      fakeLimits(),
		Environ: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "MACHINE_CACHE=" + cache,
			"MAKEFLAGS=ONLY=x", "PROXYMODES_MODE=ipvs", "FEATURE=wrong"},
		SudoShim: true, Git: fakeGit,
	})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	results, err := d.Run(context.Background(), Options{OutDir: out, Out: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("output:\n%s", log.String())
	got := map[string]Result{}
	for _, r := range results {
		got[r.Leg.ID()] = r
	}
	want := map[string]Status{"good/x": Passed, "good/y": Passed, "tree": Passed, "bad": Failed, "stale": Failed,
		"limits/needs": CannotRun, "limits/goes-on": PassedHere, "present": Failed}
	if len(results) != len(want) {
		t.Errorf("%d legs ran, want %d", len(results), len(want))
	}
	for id, st := range want {
		r, ok := got[id]
		if !ok || r.Status != st {
			b, _ := os.ReadFile(r.Log)
			t.Errorf("%s: %v (%s), want status %d; its log:\n%s", id, r.Status, r, st, b)
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Error(err)
		}
		return string(b)
	}
	// The uploads, moved out of RUNNER_TEMP, which went with the passed leg.
	if s := read(filepath.Join(out, "artifacts/art-x/out/x.txt")); s != "x from write\n" {
		t.Errorf("artifact art-x: %q", s)
	}
	if s := read(filepath.Join(out, "artifacts/art-y/out/n.txt")); s != "N=1 y\n" {
		t.Errorf("the shortening's rewrite did not run: %q", s)
	}
	if _, err := os.Stat(got["good/x"].RunnerTemp); got["good/x"].RunnerTemp != "" || err == nil {
		t.Errorf("a passed leg's RUNNER_TEMP was kept: %q", got["good/x"].RunnerTemp)
	}
	if m, _ := filepath.Glob(filepath.Join(out, "good-x-runner-temp-*")); len(m) != 0 {
		t.Errorf("a passed leg's RUNNER_TEMP is still there: %v", m)
	}
	// What the leg wrote into the checkout left it; what was there stays.
	if s := read(filepath.Join(out, "artifacts/fake-results/2099-01-01-fake/README.md")); s != "set\n" {
		t.Errorf("artifact fake-results: %q", s)
	}
	if _, err := os.Stat(filepath.Join(ws, "results/2099-01-01-fake")); err == nil {
		t.Error("the leg's result set was left in the checkout")
	}
	if read(filepath.Join(ws, "results/2000-01-01-fake/README.md")) != "kept\n" {
		t.Error("a result set the checkout had before was moved")
	}
	// The failed leg: no step after the failure but the always() one, its
	// upload of nothing a failure, its RUNNER_TEMP kept.
	bad := got["bad"]
	if !strings.Contains(bad.Why, "step 1 (Pipefail)") {
		t.Errorf("bad: %s", bad.Why)
	}
	if _, err := os.Stat(filepath.Join(bad.RunnerTemp, "always")); err != nil {
		t.Errorf("the always() step did not run after the failure: %v", err)
	}
	if _, err := os.Stat(filepath.Join(bad.RunnerTemp, "skipped")); err == nil {
		t.Error("a step without if: ran after the failure")
	}
	badLog := read(bad.Log)
	if !strings.Contains(badLog, "artifact nothing: "+bad.RunnerTemp+"/never-written matches nothing") {
		t.Errorf("the upload of nothing did not fail as such:\n%s", badLog)
	}
	if !strings.Contains(read(got["stale"].Log), "matches only files older than this leg") {
		t.Errorf("an upload of an older result set passed:\n%s", read(got["stale"].Log))
	}
	// The host-limit rule.
	if r := got["limits/needs"]; !strings.Contains(r.Why, "no fakemod in this kernel") || !strings.Contains(r.Why, "the rest wants fakemod") {
		t.Errorf("limits/needs: %s", r.Why)
	}
	if _, err := os.Stat(filepath.Join(out, "artifacts/after-needs")); err == nil {
		t.Error("limits/needs ran past the step that cannot run here")
	}
	if s := read(filepath.Join(out, "artifacts/after-goes-on/a/f")); s != "after goes-on\n" {
		t.Errorf("limits/goes-on did not go on: %q", s)
	}
	if r := got["limits/goes-on"]; !strings.Contains(r.String(), "cannot run here: no fakemod") {
		t.Errorf("limits/goes-on: %s", r)
	}
	var table bytes.Buffer
	Table(&table, results)
	t.Logf("table:\n%s", table.String())
	if !strings.Contains(table.String(), "8 legs: 3 passed, 1 passed but for steps that cannot run here, 1 cannot run here, 3 FAILED") {
		t.Errorf("table:\n%s", table.String())
	}
	if OK(results) {
		t.Error("OK with failed legs")
	}
}

// TestRunsAnArtifactNameOnce: upload-artifact v4 refuses a second
// artifact of a name in one run, so the dry run does too.
func TestRunsAnArtifactNameOnce(t *testing.T) {
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "go.mod"), []byte("module x\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newDryRun(t, ws, `
on: push
jobs:
  a:
    runs-on: ubuntu-24.04
    strategy:
      matrix:
        k: [x, y]
    steps:
      - run: mkdir -p "$RUNNER_TEMP/o" && echo hi > "$RUNNER_TEMP/o/f"
      - uses: actions/upload-artifact@v4
        with:
          name: same
          path: ${{ runner.temp }}/o
`)
	results, err := d.Run(context.Background(), Options{OutDir: t.TempDir(), Out: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || results[0].Status != Passed || results[1].Status != Failed || !strings.Contains(results[1].Why, "uploaded by a/x already") {
		t.Errorf("results: %v", results)
	}
}

// TestInterrupt: an interrupt reaches the running step (its own process
// group gets SIGINT, as make and the suites expect), and no later leg runs.
func TestInterrupt(t *testing.T) {
	ws := t.TempDir()
	d := newDryRun(t, ws, `
on: push
jobs:
  a:
    runs-on: ubuntu-24.04
    steps:
      - run: sleep 60
  b:
    runs-on: ubuntu-24.04
    steps:
      - run: true
`)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	results, err := d.Run(ctx, Options{OutDir: t.TempDir(), Out: &bytes.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("the interrupt took %s to stop the step", time.Since(start))
	}
	if len(results) != 1 || results[0].Status != Interrupted || OK(results) {
		t.Errorf("results: %v", results)
	}
}

// newDryRun parses a small workflow and makes its dry run over ws, with
// this process's PATH.
func newDryRun(t *testing.T, ws, workflow string) *DryRun {
	t.Helper()
	wf, err := Parse([]byte(workflow))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Workflow: wf, Workspace: ws, Environ: []string{"PATH=" + os.Getenv("PATH")}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}
