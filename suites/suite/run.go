package suite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/existing"
	"github.com/proxymodes/proxymodes/harness/cluster/kind"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/leak"
	"github.com/proxymodes/proxymodes/suites/report"
)

// Run is one suite run: its settings, its cluster and its report. Its
// methods with the env.Func signature are the suite's Setup and Finish.
type Run struct {
	Name     string // suite name, also the lab name (1-8 letters/digits)
	Settings Settings
	Report   *report.Run
	// Log receives progress lines (stderr by default).
	Log io.Writer

	settingsErr error
	cluster     cluster.Cluster
	labName     string
	unregister  func()

	clientsMu sync.Mutex
	clients   []cluster.Pod

	// syncs follows the proxiers' metrics (nil when they cannot be read);
	// stopSyncs ends it.
	syncs     *syncWatch
	stopSyncs context.CancelFunc
}

// NewRun reads the settings from the environment. A bad setting is kept and
// reported by the first Setup step, so that the run still writes results.
func NewRun(name string) *Run {
	s, err := SettingsFromEnv(time.Now())
	r := &Run{Name: name, Settings: s, settingsErr: err, Log: os.Stderr}
	// go test holds back a package's output while others run, so progress
	// also goes to a file: tail -f <results dir>/progress.log.
	if os.MkdirAll(s.ResultsDir, 0o755) == nil {
		if f, ferr := os.Create(filepath.Join(s.ResultsDir, "progress.log")); ferr == nil {
			r.Log = io.MultiWriter(os.Stderr, f)
		}
	}
	r.Report = report.New(name, s.Map(), s.Promise.Summary())
	return r
}

// Logf prints a progress line.
func (r *Run) Logf(format string, args ...any) {
	fmt.Fprintf(r.Log, "%s %s: %s\n", time.Now().Format("15:04:05"), r.Name, fmt.Sprintf(format, args...))
}

// hostHasIPVS is a variable so that a test can play a host without ip_vs.
var hostHasIPVS = kind.HostHasIPVS

type ctxKey int

const (
	clusterKey ctxKey = iota
	runKey
)

// ClusterFrom returns the cluster Setup put into the context.
func ClusterFrom(ctx context.Context) cluster.Cluster {
	c, _ := ctx.Value(clusterKey).(cluster.Cluster)
	return c
}

// RunFrom returns the run Setup put into the context.
func RunFrom(ctx context.Context) *Run {
	r, _ := ctx.Value(runKey).(*Run)
	return r
}

// CheckSettings is the first Setup step: it fails the run, before any
// cluster exists, on an unknown or unsupported mode, provider or impl.
func (r *Run) CheckSettings(ctx context.Context, _ *envconf.Config) (context.Context, error) {
	if r.settingsErr != nil {
		r.Report.Errorf("settings: %v", r.settingsErr)
		r.Logf("ERROR: %v", r.settingsErr)
		return ctx, r.settingsErr
	}
	s := r.Settings
	// Refused before anything is built: a run of skips would exit 0 and
	// look like a certification.
	if s.Provider == "kind" && s.Mode == "ipvs" && !hostHasIPVS() {
		err := errors.New("MODE=ipvs PROVIDER=kind: kind nodes share the host's kernel, and this kernel has no ip_vs module, so nothing could be tested; " +
			"run MODE=ipvs PROVIDER=local (IPVS in user-mode Linux guests), or use a host whose kernel has ip_vs and load it: modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh")
		r.Report.Errorf("settings: %v", err)
		r.Logf("ERROR: %v", err)
		return ctx, err
	}
	r.Logf("mode=%s provider=%s impl=%s; results in %s", s.Mode, s.Provider, s.Impl, s.ResultsDir)
	r.Logf("promise: %s (%s)", s.Promise.Summary(), s.Promise.Basis)
	return context.WithValue(ctx, runKey, r), nil
}

// CreateCluster is the Setup step that brings the cluster up with the
// proxier in the chosen mode and puts it into the context.
func (r *Run) CreateCluster(ctx context.Context, _ *envconf.Config) (context.Context, error) {
	start := time.Now()
	var c cluster.Cluster
	var err error
	switch r.Settings.Provider {
	case "local":
		r.labName = r.Name
		if r.Settings.LabName != "" {
			r.labName = r.Settings.LabName
		}
		upCtx, cancel := context.WithTimeout(ctx, 20*time.Minute)
		var lab *local.Lab
		lab, err = local.Up(upCtx, local.Options{
			Name: r.labName, Nodes: 2, Logger: logger{r}, BuildOutput: r.Log,
			Proxier: &local.ProxierOptions{Mode: r.Settings.Mode, Impl: r.Settings.Impl, Fault: r.Settings.Fault},
		})
		cancel()
		if err == nil {
			c = lab
		}
		if errors.Is(err, local.ErrHostBusy) {
			r.labName = "" // the lab of that name is the other run's: not ours to leak-check
		}
	case "kind":
		upCtx, cancel := context.WithTimeout(ctx, 45*time.Minute) // a cold node image build takes ~25 min
		var kc *kind.Cluster
		kc, err = kind.Up(upCtx, kind.Options{Name: r.Name, Nodes: 2, Mode: r.Settings.Mode, Impl: r.Settings.Impl,
			Logger: logger{r}, BuildOutput: r.Log})
		cancel()
		if err == nil {
			c = kc
		}
	case "existing":
		upCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		var ec *existing.Cluster
		ec, err = existing.Up(upCtx, existing.Options{Name: r.Name, Mode: r.Settings.Mode, Logger: logger{r}})
		cancel()
		if err == nil {
			c = ec
		}
	default:
		err = fmt.Errorf("provider %q is not yet supported", r.Settings.Provider)
	}
	if err != nil {
		err = fmt.Errorf("creating the %s cluster for mode %s: %w", r.Settings.Provider, r.Settings.Mode, err)
		r.Report.Errorf("%v", err)
		r.Logf("ERROR: %v", err)
		return ctx, err
	}
	r.cluster = c
	r.unregister = labtest.OnInterrupt(c.Down)
	if k := c.Info().Kernel; k != "" {
		r.Report.Settings["kernel"] = k // the data plane's kernel, maybe a guest's
	}
	r.Logf("cluster %s up in %s: %d nodes, API %s", c.Info().Name, time.Since(start).Round(time.Millisecond), len(c.Info().Nodes), c.Info().APIServer)
	r.watchSyncs(ctx, c)
	return context.WithValue(context.WithValue(ctx, clusterKey, c), runKey, r), nil
}

// SaveLogsOnFailure is a Finish step: when anything failed, the lab's logs
// go into the results directory before the lab is removed.
func (r *Run) SaveLogsOnFailure(ctx context.Context, _ *envconf.Config) (context.Context, error) {
	if r.cluster == nil || !r.Report.Failed() {
		return ctx, nil
	}
	dir := filepath.Join(r.Settings.ResultsDir, "logs")
	if err := r.cluster.SaveLogs(dir); err != nil {
		r.Logf("saving logs: %v", err)
		return ctx, nil
	}
	r.Logf("something failed: lab logs kept in %s", dir)
	return ctx, nil
}

// DestroyCluster is a Finish step that tears the cluster down.
func (r *Run) DestroyCluster(ctx context.Context, _ *envconf.Config) (context.Context, error) {
	if r.cluster == nil {
		return ctx, nil
	}
	if r.stopSyncs != nil {
		r.stopSyncs()
		r.Report.Settings[report.SettingProxierSyncs] = r.syncs.Summary()
	}
	start := time.Now()
	err := r.cluster.Down(context.Background())
	if r.unregister != nil {
		r.unregister()
	}
	if err != nil {
		r.Report.Errorf("tearing the cluster down: %v", err)
		r.Logf("ERROR: tearing the cluster down: %v", err)
		return ctx, err
	}
	r.Logf("cluster down in %s", time.Since(start).Round(time.Millisecond))
	return ctx, nil
}

// CheckLeaks is the last Finish step: nothing of the lab may remain.
func (r *Run) CheckLeaks(ctx context.Context, _ *envconf.Config) (context.Context, error) {
	var left []string
	what, fix := "lab "+r.labName, "proxymodes lab down --name "+r.labName
	switch {
	case r.Settings.Provider == "kind" && r.cluster != nil:
		left = kind.Leftovers()
		what, fix = "kind cluster "+kind.ClusterName(r.Name), "proxymodes kind cleanup"
	case r.Settings.Provider == "existing" && r.cluster != nil:
		left = r.cluster.(*existing.Cluster).Leftovers(ctx)
		ns := existing.Namespace(r.Name)
		what, fix = "namespace "+ns, "kubectl delete namespace "+ns
	case r.labName != "":
		left = leak.Check(r.labName)
	default:
		return ctx, nil
	}
	if len(left) == 0 {
		r.Logf("leak check: nothing of %s remains", what)
		return ctx, nil
	}
	for _, l := range left {
		r.Report.Errorf("left behind after down: %s", l)
	}
	err := fmt.Errorf("%s left %d objects behind: %v (remove them with `%s`)", what, len(left), left, fix)
	r.Logf("ERROR: %v", err)
	return ctx, err
}

// Finish prints the summary table, writes the results and returns the
// process exit code: non-zero if the tests or anything around them failed.
func (r *Run) Finish(code int) int {
	r.Report.Finished = time.Now()
	if code != 0 && !r.Report.Failed() {
		// go test failed outside the features (a panic, a bad flag, a
		// plain Test function): say so in the results too.
		r.Report.Errorf("go test exited with status %d", code)
	}
	if r.Report.Failed() && code == 0 {
		code = 1
	}
	r.Report.ExitCode = code
	r.Report.WriteTable(r.Log)
	if err := r.Report.WriteFiles(r.Settings.ResultsDir); err != nil {
		fmt.Fprintf(r.Log, "writing results: %v\n", err)
		if code == 0 {
			code = 1
		}
	} else {
		fmt.Fprintf(r.Log, "results: %s (summary.txt, results.json, junit.xml)\n", r.Settings.ResultsDir)
	}
	return code
}

// Cluster returns the run's cluster (nil before Setup).
func (r *Run) Cluster() cluster.Cluster { return r.cluster }

// Clients returns n client pods shared by all features, creating the ones
// that do not exist yet, alternating between nodes. Client pods carry no
// app label, so no Service selects them.
func (r *Run) Clients(ctx context.Context, n int) ([]cluster.Pod, error) {
	r.clientsMu.Lock()
	defer r.clientsMu.Unlock()
	nodes := r.cluster.Info().Nodes
	for i := len(r.clients); i < n; i++ {
		p, err := r.cluster.AddPod(ctx, cluster.PodSpec{Namespace: Namespace(r.cluster), Name: fmt.Sprintf("client-%02d", i),
			Node: nodes[(i+1)%len(nodes)].Name, Labels: map[string]string{"role": "client"}})
		if err != nil {
			return nil, fmt.Errorf("client pod %d: %w", i, err)
		}
		r.clients = append(r.clients, p)
	}
	return append([]cluster.Pod(nil), r.clients[:n]...), nil
}

// watchSyncs starts following every node's proxier through its metrics.
// A provider that cannot read them leaves the suites with convergence
// checks by probes alone, which the log says.
func (r *Run) watchSyncs(ctx context.Context, c cluster.Cluster) {
	src, ok := c.(MetricsSource)
	if !ok {
		r.Logf("the %s provider cannot read the proxiers' metrics: assessments measure once probes converge, without waiting for a quiet proxier", r.Settings.Provider)
		return
	}
	guest, _ := c.(GuestStats)
	var nodes []string
	for _, n := range c.Info().Nodes {
		nodes = append(nodes, n.Name)
	}
	w := newSyncWatch(src, guest, nodes, r.Settings.ResultsDir)
	// The first sync of kube-proxy in a UML guest took 33 s here; its
	// healthz answers before it.
	if _, err := w.Quiet(ctx, 5*time.Minute); err != nil {
		if w.unreadable() {
			r.Logf("cannot read the proxiers' metrics (%v): assessments measure once probes converge, without waiting for a quiet proxier", err)
			return
		}
		// A proxy that never finishes its first syncs is a finding.
		r.Report.Errorf("the proxiers did not settle after the cluster came up: %v", err)
		r.Logf("ERROR: the proxiers did not settle after the cluster came up: %v", err)
		return
	}
	wctx, cancel := context.WithCancel(context.Background())
	r.syncs, r.stopSyncs = w, cancel
	go w.loop(wctx)
	r.Logf("following every proxier's syncs in %s; slowest so far %s", filepath.Join(r.Settings.ResultsDir, "proxier-syncs.log"), w.Slowest().Round(time.Millisecond))
}

// Converge is how long the suites wait for a change to converge: the
// base Converge plus two of the slowest syncs seen so far, because a change
// that arrives just after a sync began waits for that sync and then its
// own. Where syncs take milliseconds this is Converge; in a guest where
// kube-proxy's syncs take many seconds it grows with them, and it is
// still a deadline.
func (r *Run) Converge() time.Duration {
	if r.syncs == nil {
		return Converge
	}
	return Converge + (2 * r.syncs.Slowest()).Round(time.Second)
}

// Quiet waits until every node's proxier has finished the sync that took
// the last change and has nothing pending. It fails the assessment when
// that does not happen within Converge().
func (a *A) Quiet(what string) {
	a.Helper()
	if a.Run.syncs == nil {
		return
	}
	limit := a.Run.Converge()
	took, err := a.Run.syncs.Quiet(a.Ctx, limit)
	if err != nil {
		a.Fatalf("%s: the proxiers did not settle: %v%s", what, err, a.Run.syncNote())
	}
	if took > time.Second {
		a.Logf("%s: proxiers quiet after %s", what, took.Round(10*time.Millisecond))
	}
}

// syncNote is what a failed wait adds: how slow the proxiers' syncs have
// been, and where every sync is logged.
func (r *Run) syncNote() string {
	if r.syncs == nil {
		return ""
	}
	return fmt.Sprintf(" [proxier syncs so far: %s; each one in %s]", r.syncs.Summary(), filepath.Join(r.Settings.ResultsDir, "proxier-syncs.log"))
}

// Converge is the run's convergence deadline (see Run.Converge).
func (a *A) Converge() time.Duration { return a.Run.Converge() }

type logger struct{ r *Run }

func (l logger) Logf(format string, args ...any) { l.r.Logf(format, args...) }

// ErrNoCluster is what helpers return when Setup did not create one.
var ErrNoCluster = errors.New("no cluster in the context: the Setup step that creates it did not run or failed")
