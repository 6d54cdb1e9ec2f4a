package dryrun

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	ws := t.TempDir()
	for _, f := range []string{"a/go.mod", "a/cmd/x/main.go", "a/cmd/y/z/main.go"} {
		p := filepath.Join(ws, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := &Context{Matrix: map[string]string{"mode": "ipvs"}, RunnerTemp: "/tmp/rt", Workspace: ws,
		Env: map[string]string{"ARTIFACT": "soak-x"}, Github: fakeGit}
	for in, want := range map[string]string{
		"${{ matrix.mode }}-${{matrix.mode}}":            "ipvs-ipvs",
		"${{ runner.temp }}/c/${{ runner.os }}":          "/tmp/rt/c/Linux",
		"${{ env.ARTIFACT }}":                            "soak-x",
		"nightly-${{ github.ref }}":                      "nightly-refs/heads/main",
		"no expression, $RUNNER_TEMP and ${HOME} stay":   "no expression, $RUNNER_TEMP and ${HOME} stay",
		"${{ matrix.mode }} and ${{ runner.os }} inline": "ipvs and Linux inline",
	} {
		got, err := c.Expand(in)
		if err != nil || got != want {
			t.Errorf("Expand(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	h1, err := c.Expand("${{ hashFiles('a/go.mod', 'a/cmd/**') }}")
	if err != nil || len(h1) != 64 {
		t.Fatalf("hashFiles: %q, %v", h1, err)
	}
	if err := os.WriteFile(filepath.Join(ws, "a/cmd/y/z/main.go"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if h2, _ := c.Expand("${{ hashFiles('a/go.mod', 'a/cmd/**') }}"); h2 == h1 {
		t.Error("hashFiles did not change with a file under **")
	}
	if _, err := c.Expand("${{ hashFiles('a/none/**') }}"); err == nil || !strings.Contains(err.Error(), "matches no file") {
		t.Errorf("hashFiles of nothing: %v, want an error", err)
	}
	if _, err := c.Expand("echo ${{ matrix.mode"); err == nil {
		t.Error("an unclosed ${{ expanded")
	}
	// A job without a matrix has no matrix context.
	if _, err := (&Context{}).Expand("${{ matrix.mode }}"); err == nil {
		t.Error("matrix.mode expanded in a job without a matrix")
	}
	// A plan shows a later GITHUB_ENV value as its placeholder.
	p := &Context{Pending: map[string]string{"X": "<X later>"}}
	if got, err := p.Expand("${{ env.X }}"); err != nil || got != "<X later>" {
		t.Errorf("pending env.X: %q, %v", got, err)
	}
}

func TestGlob(t *testing.T) {
	ws := t.TempDir()
	for _, f := range []string{"results/2026-01-01-nightly/README.md", "results/2026-01-02-aa/x", "results/soaks/a.md"} {
		p := filepath.Join(ws, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := Glob(ws, "results/*-nightly", false)
	if err != nil || len(m) != 1 || !strings.HasSuffix(m[0], "results/2026-01-01-nightly") {
		t.Errorf("results/*-nightly: %v, %v", m, err)
	}
	m, err = Glob(ws, "results/**/*.md", true)
	if err != nil || len(m) != 2 {
		t.Errorf("results/**/*.md: %v, %v", m, err)
	}
	if m, err = Glob(ws, filepath.Join(ws, "results/*-aa"), false); err != nil || len(m) != 1 {
		t.Errorf("an absolute pattern: %v, %v", m, err)
	}
	if _, err := Glob(ws, "!results/x", false); err == nil {
		t.Error("an exclusion pattern was taken")
	}
}

func TestParseIf(t *testing.T) {
	for in, want := range map[string]Condition{"": IfSuccess, "success()": IfSuccess, "always()": IfAlways, "${{ always() }}": IfAlways, "failure()": IfFailure} {
		if got, err := ParseIf(in); err != nil || got != want {
			t.Errorf("ParseIf(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseIf("cancelled() || always()"); err == nil {
		t.Error("an unknown condition parsed")
	}
	if !IfAlways.Runs(true) || IfSuccess.Runs(true) || !IfSuccess.Runs(false) || IfFailure.Runs(false) || !IfFailure.Runs(true) {
		t.Error("if: semantics differ from Actions'")
	}
}
