package ci

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rhysd/actionlint"
	"sigs.k8s.io/yaml"

	"github.com/proxymodes/proxymodes/clusters/manifests"
	"github.com/proxymodes/proxymodes/harness/cluster"
)

// root is the repository, two levels up from this package.
const root = "../.."

// TestWorkflowsPassActionlint runs actionlint (its Go API, the version in
// go.mod) over every workflow: syntax, expressions and their types, job
// and matrix references, action inputs, cron syntax. shellcheck, when
// installed, also checks the run: scripts.
func TestWorkflowsPassActionlint(t *testing.T) {
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	project, err := actionlint.NewProject(abs)
	if err != nil {
		t.Fatal(err)
	}
	opts := &actionlint.LinterOptions{Color: actionlint.ColorOptionKindNever, WorkingDir: abs}
	if path, err := exec.LookPath("shellcheck"); err == nil {
		opts.Shellcheck = path
	} else {
		t.Log("shellcheck is not installed: run: scripts are not checked (apt-get install shellcheck)")
	}
	var out bytes.Buffer
	linter, err := actionlint.NewLinter(&out, opts)
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(project.WorkflowsDir(), "*.y*ml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no workflow in %s", project.WorkflowsDir())
	}
	errs, err := linter.LintFiles(files, project)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		t.Errorf("%s", e)
	}
	if len(errs) > 0 {
		t.Logf("actionlint's report:\n%s", out.String())
	}
}

// workflow is the part of a workflow file the matrix check reads.
type workflow struct {
	Jobs map[string]struct {
		Strategy struct {
			Matrix struct {
				Mode, Impl, Run []string
				Exclude         []map[string]string
			} `json:"matrix"`
		} `json:"strategy"`
		Steps []step `json:"steps"`
	} `json:"jobs"`
}

type step struct {
	Uses string            `json:"uses"`
	Run  string            `json:"run"`
	With map[string]string `json:"with"`
}

// TestNightlyRunsTheMatrix checks what actionlint cannot know: the nightly
// runs conformance for every kind mode and both implementations, the
// soaks and the benchmark sweep, and uploads the results of each.
func TestNightlyRunsTheMatrix(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, ".github", "workflows", "nightly.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var wf workflow
	if err := yaml.Unmarshal(b, &wf); err != nil {
		t.Fatal(err)
	}
	conf, bench, soak := wf.Jobs["conformance"], wf.Jobs["bench"], wf.Jobs["soak"]
	// Every mode the reference proxier has, for both implementations,
	// less exactly the pairs an implementation lacks (kube-proxy's
	// userspace).
	m := conf.Strategy.Matrix
	if !slices.Equal(m.Mode, manifests.Modes) || !slices.Equal(m.Impl, []string{cluster.ImplReference, cluster.ImplKubeProxy}) {
		t.Errorf("conformance matrix mode %v × impl %v, want %v × reference, kube-proxy", m.Mode, m.Impl, manifests.Modes)
	}
	for _, mode := range m.Mode {
		for _, impl := range m.Impl {
			excluded := slices.ContainsFunc(m.Exclude, func(e map[string]string) bool { return e["mode"] == mode && e["impl"] == impl })
			if has := cluster.CheckImpl(impl, mode) == nil; has == excluded {
				t.Errorf("conformance matrix: %s/%s is excluded: %v, but the implementation has the mode: %v", mode, impl, excluded, has)
			}
		}
	}
	check := func(job, command, upload string, steps []step) {
		ran, uploaded := false, false
		for _, s := range steps {
			ran = ran || strings.Contains(s.Run, command)
			uploaded = uploaded || (strings.HasPrefix(s.Uses, "actions/upload-artifact@") && strings.Contains(s.With["path"], upload))
		}
		if !ran || !uploaded {
			t.Errorf("job %s: runs %q: %v; uploads %q: %v", job, command, ran, upload, uploaded)
		}
	}
	check("conformance", `make conformance MODE="$MODE" PROVIDER=kind IMPL="$IMPL"`, "conformance-${{ matrix.mode }}-${{ matrix.impl }}", conf.Steps)
	check("bench", "make bench LABEL=nightly", "results/*-nightly", bench.Steps)
	// Issue 16: N=20 soaks of every host-kernel mode and implementation.
	if want := []string{"userspace/reference", "iptables/reference", "iptables/kube-proxy"}; !slices.Equal(soak.Strategy.Matrix.Run, want) {
		t.Errorf("soak matrix %v, want %v", soak.Strategy.Matrix.Run, want)
	}
	check("soak", `make soak MODE="${RUN%/*}" IMPL="${RUN#*/}" N=20`, "/soak", soak.Steps)
}
