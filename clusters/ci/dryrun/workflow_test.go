package dryrun

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/proxymodes/proxymodes/harness/hostipvs"
)

// root is the repository, three levels up from this package.
const root = "../../.."

var nightlyPath = filepath.Join(root, ".github", "workflows", "nightly.yaml")

func loadNightly(t *testing.T) *Workflow {
	t.Helper()
	wf, err := Load(nightlyPath)
	if err != nil {
		t.Fatal(err)
	}
	return wf
}

func readMakefile(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// missingProbe stands for a host without the feature, so that plans come
// out the same on any machine.
func missingLimit() HostLimit {
	l := IPVSLimit(hostipvs.Probe{})
	l.Missing = func() string { return "no ip_vs (test)" }
	return l
}

func fakeGit(f string) (string, error) {
	return map[string]string{"ref": "refs/heads/main", "sha": "0123456789abcdef"}[f], nil
}

func nightly(t *testing.T, only ...string) *DryRun {
	t.Helper()
	abs, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		Workflow: loadNightly(t), Workspace: abs, Makefile: readMakefile(t), MachineCache: "/var/cache/proxymodes",
		Shortenings: Shortenings, Wholes: Wholes, Limits: []HostLimit{missingLimit()},
		Only: only, Environ: []string{"PATH=/usr/bin:/bin", "MAKEFLAGS=PLAN=1"}, SudoShim: true, Git: fakeGit,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// wantLegs computes the nightly's legs independently of the parser under
// test: sigs.k8s.io/yaml for the matrices (order does not survive it),
// a regular expression for the order of the jobs in the file.
func wantLegs(t *testing.T) (jobs []string, legs map[string]bool) {
	b, err := os.ReadFile(nightlyPath)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := bytes.Cut(b, []byte("\njobs:\n"))
	if !ok {
		t.Fatal("no jobs: line")
	}
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z0-9-]+):\s*$`).FindAllSubmatch(after, -1) {
		jobs = append(jobs, string(m[1]))
	}
	var wf struct {
		Jobs map[string]struct {
			Strategy struct {
				Matrix map[string]any `json:"matrix"`
			} `json:"strategy"`
		} `json:"jobs"`
	}
	if err := yaml.Unmarshal(b, &wf); err != nil {
		t.Fatal(err)
	}
	legs = map[string]bool{}
	for id, j := range wf.Jobs {
		m := j.Strategy.Matrix
		if m == nil {
			legs[id] = true
			continue
		}
		var excl []map[string]any
		if x, ok := m["exclude"].([]any); ok {
			for _, e := range x {
				excl = append(excl, e.(map[string]any))
			}
		}
		// The nightly's matrices: mode × impl, or a run list.
		add := func(vals map[string]string, name string) {
			for _, e := range excl {
				hit := true
				for k, v := range e {
					hit = hit && vals[k] == v
				}
				if hit {
					return
				}
			}
			legs[id+"/"+name] = true
		}
		switch {
		case m["run"] != nil:
			for _, r := range m["run"].([]any) {
				add(map[string]string{"run": r.(string)}, r.(string))
			}
		case m["impl"] != nil:
			for _, mode := range m["mode"].([]any) {
				for _, impl := range m["impl"].([]any) {
					add(map[string]string{"mode": mode.(string), "impl": impl.(string)}, mode.(string)+"/"+impl.(string))
				}
			}
		default:
			for _, mode := range m["mode"].([]any) {
				add(map[string]string{"mode": mode.(string)}, mode.(string))
			}
		}
	}
	return jobs, legs
}

func TestNightlyLegs(t *testing.T) {
	d := nightly(t)
	wantJobs, want := wantLegs(t)
	var jobs []string
	got := map[string]bool{}
	for _, l := range d.Legs() {
		if !slices.Contains(jobs, l.Job.ID) {
			jobs = append(jobs, l.Job.ID)
		}
		got[l.ID()] = true
	}
	if !slices.Equal(jobs, wantJobs) {
		t.Errorf("jobs in run order %v, want the file's %v", jobs, wantJobs)
	}
	for id := range want {
		if !got[id] {
			t.Errorf("leg %s is missing", id)
		}
	}
	for id := range got {
		if !want[id] {
			t.Errorf("leg %s is not the workflow's", id)
		}
	}
	if got["conformance/userspace/kube-proxy"] {
		t.Error("the excluded leg conformance/userspace/kube-proxy is planned")
	}
	// Actions' order: the first matrix key varies slowest.
	var conf []string
	for _, l := range d.Legs() {
		if l.Job.ID == "conformance" {
			conf = append(conf, l.Name())
		}
	}
	if len(conf) < 2 || conf[0] != "userspace/reference" || conf[1] != "iptables/reference" {
		t.Errorf("conformance legs in order %v: want mode outermost", conf)
	}
}

func TestNightlyPlan(t *testing.T) {
	d := nightly(t)
	var b strings.Builder
	if err := d.Plan(&b); err != nil {
		t.Fatal(err)
	}
	plan := b.String()
	if strings.Contains(plan, "${{") {
		t.Errorf("an expression is left unexpanded in the plan:\n%s", plan)
	}
	for _, l := range d.Legs() {
		if !strings.Contains(plan, "\njob "+l.Job.ID+" ") {
			t.Errorf("job %s is not in the plan", l.Job.ID)
		}
	}
	// Every leg's every step, numbered, in order.
	legRE := regexp.MustCompile(`(?m)^  leg (.+?): "`)
	heads := legRE.FindAllStringSubmatchIndex(plan, -1)
	if len(heads) != len(d.Legs()) {
		t.Fatalf("%d legs in the plan, want %d", len(heads), len(d.Legs()))
	}
	for i, h := range heads {
		end := len(plan)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		part, l := plan[h[0]:end], d.Legs()[i]
		name := l.Name()
		if name == "" {
			name = "(no matrix)"
		}
		if plan[h[2]:h[3]] != name {
			t.Errorf("leg %d of the plan is %s, want %s", i, plan[h[2]:h[3]], name)
		}
		for _, s := range l.Job.Steps {
			if !strings.Contains(part, "\n    "+strconv.Itoa(s.Index)+". ") {
				t.Errorf("%s: step %d (%s) is not in the plan", l.ID(), s.Index, s.Title())
			}
		}
		if m, _ := l.MatrixValue("mode"); m != "" && l.Job.ID != "bench" && !strings.Contains(part, "MODE="+m) {
			t.Errorf("%s: MODE=%s is not in its plan", l.ID(), m)
		}
	}
	for _, want := range []string{
		"PROXYMODES_RESULTS_DIR=$RUNNER_TEMP/conformance-ipvs-kube-proxy",
		`make soak MODE="${RUN%/*}" IMPL="${RUN#*/}" N=1 `,
		"artifact <ARTIFACT, from step 6's GITHUB_ENV>",
		"link $RUNNER_TEMP/proxymodes-cache/kind → /var/cache/proxymodes/kind",
		"less MAKEFLAGS",
		"RUNNER_OS=Linux",
	} {
		if !strings.Contains(plan, want) {
			t.Errorf("the plan lacks %q", want)
		}
	}
	if strings.Contains(plan, " N=20 ") {
		t.Error("the plan still runs N=20 soaks")
	}
}

func TestOnly(t *testing.T) {
	d := nightly(t, "conformance/ipvs", "bench")
	var ids []string
	for _, l := range d.Legs() {
		ids = append(ids, l.ID())
	}
	if want := []string{"conformance/ipvs/reference", "conformance/ipvs/kube-proxy", "bench"}; !slices.Equal(ids, want) {
		t.Errorf("--only conformance/ipvs,bench: %v, want %v", ids, want)
	}
	// bench must not select bench-aa: job names match whole.
	if _, err := SelectLegs(loadNightly(t), []string{"conformance/ipv"}); err == nil {
		t.Error("--only conformance/ipv selected something: legs match by whole elements")
	}
	if _, err := SelectLegs(loadNightly(t), []string{"nope"}); err == nil || !strings.Contains(err.Error(), "soak/iptables/kube-proxy") {
		t.Errorf("--only nope: %v, want an error listing the legs", err)
	}
}

// refuse builds a dry run of a small workflow and returns its error.
func refuse(t *testing.T, wfText string) error {
	t.Helper()
	ws := t.TempDir()
	if err := os.WriteFile(filepath.Join(ws, "go.mod"), []byte("module x\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wf, err := Parse([]byte(wfText))
	if err != nil {
		return err
	}
	_, err = New(Config{Workflow: wf, Workspace: ws, MachineCache: t.TempDir(), Git: fakeGit})
	return err
}

func TestRefusesWhatItDoesNotEmulate(t *testing.T) {
	job := func(steps string) string {
		return "on: workflow_dispatch\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    strategy:\n      matrix:\n        k: [x]\n    steps:\n" + steps
	}
	for _, c := range []struct{ wf, want string }{
		{job("      - uses: actions/download-artifact@v4\n"), "actions/download-artifact@v4"},
		{job("      - uses: someone/else@v1\n"), "someone/else@v1"},
		{job("      - uses: actions/checkout@v4\n        with:\n          fetch-depth: 0\n"), "fetch-depth"},
		{job("      - run: echo ${{ secrets.TOKEN }}\n"), "${{ secrets.TOKEN }}"},
		{job("      - run: echo ${{ matrix.k == 'x' }}\n"), "${{ matrix.k == 'x' }}"},
		{job("      - run: echo ${{ runner.arch }}\n"), "${{ runner.arch }}"},
		{job("      - run: echo ${{ github.actor }}\n"), "${{ github.actor }}"},
		{job("      - run: echo ${{ env.NOPE }}\n"), "${{ env.NOPE }}"},
		{job("      - run: echo ${{ matrix.nope }}\n"), "${{ matrix.nope }}"},
		{job("      - run: echo hi\n        if: github.event_name == 'schedule'\n"), "github.event_name == 'schedule'"},
		{job("      - run: echo hi\n        shell: sh\n"), `"shell"`},
		{job("      - run: echo hi\n        continue-on-error: true\n"), `"continue-on-error"`},
		{"on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: b\n    steps:\n      - run: echo\n", `"needs"`},
		{"on: push\njobs:\n  a:\n    runs-on: macos-14\n    steps:\n      - run: echo\n", "macos-14"},
		{"on: push\ndefaults:\n  run:\n    shell: sh\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo\n", `"defaults"`},
		{"on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    strategy:\n      matrix:\n        k: [x]\n        include:\n          - k: y\n    steps:\n      - run: echo\n", "include"},
		{"on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    strategy:\n      matrix:\n        k: [x]\n        exclude:\n          - k: y\n    steps:\n      - run: echo\n", "excludes nothing"},
	} {
		err := refuse(t, c.wf)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error naming %s, got %v for\n%s", c.want, err, c.wf)
		}
	}
}
