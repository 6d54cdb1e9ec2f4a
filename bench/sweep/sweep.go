// Package sweep runs the load benchmarks: it brings up a local lab, grows
// it to each Service count, and measures every proxy mode and
// implementation over the same Services, in the host kernel and, for what
// the host kernel cannot run (IPVS here), in a user-mode Linux lab. The
// nftables mode runs in the host kernel only: the guest has no nf_tables.
// The iptables mode runs with each iptables backend asked for (legacy,
// nft), each point labelled with its own. The result is a
// bench/result.Set.
package sweep

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/bench/result"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/hostipvs"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/load"
	"github.com/proxymodes/proxymodes/proxier/userspace"
)

// Config is what to sweep. Zero fields take the defaults of Defaults.
type Config struct {
	Label     string
	Counts    []int    // Service counts, ascending
	Endpoints int      // endpoints per Service
	Modes     []string // proxy modes
	Impls     []string // proxier implementations
	// Backends are the iptables backends the iptables mode runs with
	// (result.BackendLegacy, result.BackendNFT), each its own points:
	// both draw one beside the other. Empty: the host's own `iptables`.
	// A UML guest has legacy only; nft points there are skipped.
	Backends []string
	// Kernels to run in: "host" and/or "uml". Empty: the host kernel for
	// what it can run, and a UML lab for every mode when the host has no
	// ip_vs (so IPVS is compared with the others in one kernel).
	Kernels []string
	Direct  bool // measure the no-proxy baseline (pod IP) at each point
	// Repeats is how many full syncs (proxier restarts) and load runs each
	// point takes; Changes how many endpoint changes it times.
	Repeats, Changes int
	Load             load.Options
	// Workers create Services in parallel.
	Workers int
	// Limit bounds every wait inside a point (a sync, a change).
	Limit time.Duration
	// Log receives progress lines; BuildOutput build progress.
	Log         func(format string, args ...any)
	BuildOutput io.Writer
	// LabName is the lab's name (default "bench").
	LabName string
	// PointBudget bounds one point's predicted duration: a proxier whose
	// next point is predicted (from its smaller ones) to take longer is not
	// run at that count or above, and the set records why.
	PointBudget time.Duration
	// MaxServices caps the Service count per kernel ("uml": 1000, say).
	MaxServices map[string]int
	// GuestModes limits the modes measured in the UML lab; nil measures
	// every mode there, so that IPVS is compared with the others in one
	// kernel.
	GuestModes []string
	// GuestImpls likewise limits the implementations measured there.
	GuestImpls []string
}

// Defaults is the default sweep (`make bench`).
func Defaults() Config {
	return Config{
		Label: "default", Counts: []int{100, 1000, 5000, 10000}, Endpoints: 2,
		Modes: []string{result.ModeUserspace, result.ModeIPTables, result.ModeIPVS, result.ModeNFTables},
		Impls: []string{result.ImplReference, result.ImplKubeProxy},
		// Six repetitions: the fewest whose median has a finite 95%
		// interval (result.MinRepeatsForMedianCI); five would already
		// let a ratio be significant, but not bound its medians.
		Direct: true, Repeats: result.MinRepeatsForMedianCI, Changes: 15,
		Load:    load.Options{Requests: 2000, Concurrency: 8},
		Workers: 32, Limit: 15 * time.Minute, LabName: "bench", PointBudget: 20 * time.Minute,
	}
}

func (c *Config) complete() error {
	d := Defaults()
	if c.Label == "" {
		c.Label = d.Label
	}
	if len(c.Counts) == 0 {
		c.Counts = d.Counts
	}
	for i, n := range c.Counts {
		if n < 1 || n > 60000 || (i > 0 && n <= c.Counts[i-1]) {
			return fmt.Errorf("service counts %v: want ascending counts from 1 to 60000 (the Service CIDR 198.19.0.0/16 holds 65534)", c.Counts)
		}
	}
	if c.Endpoints == 0 {
		c.Endpoints = d.Endpoints
	}
	if c.Endpoints < 1 || c.Endpoints > 50 {
		return fmt.Errorf("endpoints per Service = %d: use 1 to 50", c.Endpoints)
	}
	if len(c.Modes) == 0 {
		c.Modes = d.Modes
	}
	for _, m := range c.Modes {
		if m != result.ModeUserspace && m != result.ModeIPTables && m != result.ModeIPVS && m != result.ModeNFTables {
			return fmt.Errorf("mode %q is unknown: use userspace, iptables, ipvs or nftables", m)
		}
	}
	for i, b := range c.Backends {
		if b != result.BackendLegacy && b != result.BackendNFT {
			return fmt.Errorf("iptables backend %q is unknown: use legacy, nft, or both (legacy,nft)", b)
		}
		if slices.Contains(c.Backends[:i], b) {
			return fmt.Errorf("iptables backends %v name %s twice: list each once", c.Backends, b)
		}
	}
	if len(c.Impls) == 0 {
		c.Impls = d.Impls
	}
	for _, i := range c.Impls {
		if i != result.ImplReference && i != result.ImplKubeProxy && i != result.ImplReferenceTwin {
			return fmt.Errorf("implementation %q is unknown: use reference, kube-proxy, or reference-twin (the reference again, for an A/A check)", i)
		}
	}
	if slices.Contains(c.Impls, result.ImplReferenceTwin) && !slices.Contains(c.Impls, result.ImplReference) {
		return fmt.Errorf("implementation %s is the A/A twin of reference: list reference too", result.ImplReferenceTwin)
	}
	for _, k := range c.Kernels {
		if k != local.KernelHost && k != local.KernelUML {
			return fmt.Errorf("kernel %q: use host or uml", k)
		}
	}
	if c.Repeats == 0 {
		c.Repeats = d.Repeats
	}
	if c.Changes == 0 {
		c.Changes = d.Changes
	}
	if c.Repeats < 1 || c.Repeats > 100 || c.Changes < 1 || c.Changes > 1000 {
		return fmt.Errorf("repeats %d, changes %d: use 1-100 and 1-1000", c.Repeats, c.Changes)
	}
	if c.Load.Requests == 0 {
		c.Load = d.Load
	}
	if c.Workers == 0 {
		c.Workers = d.Workers
	}
	if c.Limit == 0 {
		c.Limit = d.Limit
	}
	if c.LabName == "" {
		c.LabName = d.LabName
	}
	if c.PointBudget == 0 {
		c.PointBudget = d.PointBudget
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	return nil
}

// proxier is one configuration measured at every count; nil Impl-less
// entries are the direct baseline. backend is the iptables backend of an
// iptables-mode proxier, "" for other modes.
type proxier struct{ mode, backend, impl string }

// labImpl is the implementation the lab runs: the A/A twin is the
// reference proxier itself.
func (p proxier) labImpl() string {
	if p.impl == result.ImplReferenceTwin {
		return result.ImplReference
	}
	return p.impl
}

func (p proxier) String() string {
	if p.mode == result.ModeDirect {
		return "direct"
	}
	return (&result.Point{Mode: p.mode, Backend: p.backend}).ModeLabel() + "/" + p.impl
}

// kernelPlan is what runs in one kernel, and what the kernel cannot run.
type kernelPlan struct {
	kernel   string // local.KernelHost or local.KernelUML
	proxiers []proxier
	skipped  []skipped
}

// skipped is a proxier left out of a kernel's plan at every count.
type skipped struct {
	proxier
	why string
}

// measures says whether the plan has a proxier to measure: a direct
// baseline alone compares nothing.
func (kp kernelPlan) measures() bool {
	return slices.ContainsFunc(kp.proxiers, func(p proxier) bool { return p.mode != result.ModeDirect })
}

// hostKernel is what the plan needs to know of the host.
type hostKernel struct {
	ipvs     bool   // the kernel has ip_vs
	iptables string // what its `iptables` is: result.BackendLegacy or BackendNFT ("" unknown)
}

// Why a UML guest cannot run some proxiers.
const (
	umlNoNFTables = "the nftables mode needs nf_tables, which the user-mode Linux guest's kernel lacks; it runs in the host kernel"
	umlNoIPTNFT   = "iptables-nft needs IPv4 nf_tables, which the user-mode Linux guest's kernel lacks; only legacy runs there"
)

// backends are the iptables backends the iptables mode runs with in a
// kernel, and those asked for that it cannot run.
func (c Config) backends(kernel string, host hostKernel) (run, cannot []string) {
	if kernel == local.KernelUML {
		if len(c.Backends) == 0 {
			return []string{result.BackendLegacy}, nil
		}
		for _, b := range c.Backends {
			if b == result.BackendLegacy {
				run = append(run, b)
			} else {
				cannot = append(cannot, b)
			}
		}
		return run, cannot
	}
	if len(c.Backends) == 0 {
		return []string{host.iptables}, nil
	}
	return c.Backends, nil
}

func plan(c Config, host hostKernel) []kernelPlan {
	kernels := c.Kernels
	if len(kernels) == 0 {
		// The default never puts nftables in a guest: the host kernel
		// has nf_tables, the guest does not.
		kernels = []string{local.KernelHost}
		if !host.ipvs && slices.Contains(c.Modes, result.ModeIPVS) {
			kernels = append(kernels, local.KernelUML)
		}
	}
	var out []kernelPlan
	for _, k := range kernels {
		kp := kernelPlan{kernel: k}
		if c.Direct {
			kp.proxiers = append(kp.proxiers, proxier{mode: result.ModeDirect})
		}
		for _, m := range c.Modes {
			if m == result.ModeIPVS && k == local.KernelHost && !host.ipvs {
				continue // measured in the UML lab
			}
			if k == local.KernelUML && c.GuestModes != nil && !slices.Contains(c.GuestModes, m) {
				continue
			}
			backends, cannot := []string{""}, []string(nil)
			if m == result.ModeIPTables {
				backends, cannot = c.backends(k, host)
			}
			add := func(b, why string) {
				for _, i := range c.Impls {
					if i == result.ImplKubeProxy && m == result.ModeUserspace {
						continue // upstream removed it in v1.26
					}
					if k == local.KernelUML && c.GuestImpls != nil && !slices.Contains(c.GuestImpls, i) {
						continue
					}
					p := proxier{mode: m, backend: b, impl: i}
					if why != "" {
						kp.skipped = append(kp.skipped, skipped{p, why})
					} else {
						kp.proxiers = append(kp.proxiers, p)
					}
				}
			}
			if m == result.ModeNFTables && k == local.KernelUML {
				add("", umlNoNFTables)
				continue
			}
			for _, b := range backends {
				add(b, "")
			}
			for _, b := range cannot {
				add(b, umlNoIPTNFT)
			}
		}
		out = append(out, kp)
	}
	return out
}

// Run runs the sweep. A point that fails keeps its error and the sweep
// goes on; an error is returned only when no lab could be built, or ctx
// ended.
func Run(ctx context.Context, c Config) (*result.Set, error) {
	if err := c.complete(); err != nil {
		return nil, err
	}
	set := &result.Set{Schema: result.SchemaVersion, Label: c.Label, Started: time.Now().UTC(), Env: environment()}
	plans := plan(c, hostKernel{ipvs: hostipvs.Available(), iptables: set.Env.IPTablesBackend})
	// What was asked, or by default what each kernel's iptables is.
	backends := c.Backends
	for _, kp := range plans {
		for _, p := range kp.proxiers {
			if p.mode == result.ModeIPTables && p.backend == "" {
				return nil, fmt.Errorf("cannot tell whether the host's iptables is legacy or nft (`iptables --version` names neither): pass --backend legacy, nft or both")
			}
			if len(c.Backends) == 0 && p.backend != "" && !slices.Contains(backends, p.backend) {
				backends = append(backends, p.backend)
			}
		}
	}
	set.Sweep = result.Sweep{Services: c.Counts, EndpointsPerService: c.Endpoints, Modes: c.Modes, Impls: c.Impls,
		Kernels: c.Kernels, Backends: backends, Direct: c.Direct, Repetitions: c.Repeats, Requests: c.Load.Requests,
		Concurrency: c.Load.Concurrency, Nodes: 2,
		Extra: map[string]string{"changes": fmt.Sprint(c.Changes)}}
	prog := newProgress(c, plans)
	var errs []error
	for _, kp := range plans {
		if err := runKernel(ctx, c, kp, set, prog); err != nil {
			errs = append(errs, fmt.Errorf("%s kernel: %w", kp.kernel, err))
			if ctx.Err() != nil {
				break
			}
		}
	}
	set.Finished = time.Now().UTC()
	if len(errs) > 0 {
		why := "not reached: the run stopped at an error (see the run's log)"
		if ctx.Err() != nil {
			why = fmt.Sprintf("not reached: the run was interrupted (Ctrl-C) after %s", set.Finished.Sub(set.Started).Round(time.Second))
		}
		notReached(c.Counts, plans, set, why)
	}
	return set, errors.Join(errs...)
}

// notReached lists as skipped, with why, every planned point that a run
// which stopped early neither measured nor skipped, so that a partial set
// says what it lacks.
func notReached(counts []int, plans []kernelPlan, set *result.Set, why string) {
	type key struct {
		kernel, mode, backend, impl string
		n                           int
	}
	done := map[key]bool{}
	labels := map[string]string{} // kernel kind -> its label in the set
	for _, pt := range set.Points {
		done[key{pt.Kernel, pt.Mode, pt.Backend, pt.Impl, pt.Services}] = true
		labels[strings.Fields(pt.Kernel)[0]] = pt.Kernel
	}
	for _, sk := range set.Skipped {
		done[key{sk.Kernel, sk.Mode, sk.Backend, sk.Impl, sk.Services}] = true
	}
	for _, kp := range plans {
		kernel := kp.kernel
		if l, ok := labels[kp.kernel]; ok {
			kernel = l
		}
		for _, n := range counts {
			for _, p := range kp.proxiers {
				if !done[key{kernel, p.mode, p.backend, p.impl, n}] {
					set.Skipped = append(set.Skipped, result.Skip{Kernel: kernel, Mode: p.mode, Backend: p.backend, Impl: p.impl, Services: n, Reason: why})
				}
			}
		}
	}
}

func runKernel(ctx context.Context, c Config, kp kernelPlan, set *result.Set, prog *progress) (err error) {
	// Until the lab tells its release, the skipped points carry the
	// kernel's kind.
	kernel := kp.kernel
	skip := func(services int) {
		for _, s := range kp.skipped {
			set.Skipped = append(set.Skipped, result.Skip{Kernel: kernel, Mode: s.mode, Backend: s.backend, Impl: s.impl, Services: services, Reason: s.why})
		}
	}
	for _, s := range kp.skipped {
		c.Log("%s kernel: not measuring %s: %s", kp.kernel, s.proxier, s.why)
	}
	if !kp.measures() {
		for _, n := range c.Counts {
			skip(n)
			for range kp.proxiers {
				prog.skip(n)
			}
		}
		c.Log("%s kernel: no proxier to measure here, so no lab", kp.kernel)
		return nil
	}
	paths := map[string]string{}
	if kp.kernel == local.KernelHost {
		dir, err := os.MkdirTemp("", "proxymodes-bench-iptables-")
		if err != nil {
			return err
		}
		// Deferred before the lab's Down, so it runs after it: no proxier
		// uses the directory any more.
		defer os.RemoveAll(dir)
		if paths, err = backendPaths(dir, kubeProxyBackends(kp.proxiers), exec.LookPath); err != nil {
			return err
		}
	}
	c.Log("%s kernel: starting a 2-node lab for %s", kp.kernel, strings.Join(names(kp.proxiers), ", "))
	lab, err := local.Up(ctx, local.Options{Name: c.LabName, Nodes: 2, Kernel: kp.kernel,
		Logger: logf(c.Log), BuildOutput: c.BuildOutput})
	if err != nil {
		return err
	}
	unregister := labtest.OnInterrupt(lab.Down)
	defer func() {
		unregister()
		if derr := lab.Down(context.Background()); derr != nil {
			err = errors.Join(err, fmt.Errorf("lab down: %w", derr))
		}
	}()
	kernel = kernelLabel(kp.kernel, lab.Kernel())
	if kp.kernel == local.KernelUML {
		set.Env.UMLKernel = lab.Kernel()
		// UML figures depend on the lab's layout as much as on the kernel;
		// a comparison lists this line when it differs.
		if set.Env.Extra == nil {
			set.Env.Extra = map[string]string{}
		}
		set.Env.Extra["uml-lab"] = local.GuestLayout
	}
	env, err := newBench(ctx, lab, c)
	if err != nil {
		return err
	}
	env.kernel, env.paths = kp.kernel, paths
	pred := predictor{}
	for _, n := range c.Counts {
		skip(n)
		if limit, ok := c.MaxServices[kp.kernel]; ok && n > limit {
			for _, p := range kp.proxiers {
				set.Skipped = append(set.Skipped, result.Skip{Kernel: kernel, Mode: p.mode, Backend: p.backend, Impl: p.impl, Services: n,
					Reason: fmt.Sprintf("above the %s kernel's cap of %d Services", kp.kernel, limit)})
				prog.skip(n)
			}
			continue
		}
		start := time.Now()
		var report func(done, total int)
		if n-env.fleet.size() >= 2000 {
			report = func(done, total int) {
				c.Log("  Services: %d/%d (%s)", done, total, time.Since(start).Round(time.Second))
			}
		}
		if err := env.fleet.grow(ctx, n, c.Workers, report); err != nil {
			return err
		}
		c.Log("%s kernel: %d Services with %d endpoints each, created in %s", kp.kernel, n, c.Endpoints, time.Since(start).Round(time.Millisecond))
		for _, p := range kp.proxiers {
			why := openFilesSkip(kp.kernel, p, n, userspace.OpenFileCeiling)
			if why == "" {
				why = pred.skip(p, n, c.PointBudget)
			}
			if why != "" {
				set.Skipped = append(set.Skipped, result.Skip{Kernel: kernel, Mode: p.mode, Backend: p.backend, Impl: p.impl, Services: n, Reason: why})
				c.Log("skipping %s at %d Services: %s", p, n, why)
				prog.skip(n)
				continue
			}
			prog.begin(kernel, p, n)
			pt := result.Point{Kernel: kernel, Mode: p.mode, Backend: p.backend, Impl: p.impl, Services: n, EndpointsPerService: c.Endpoints}
			began := time.Now()
			if err := env.measure(ctx, p, &pt); err != nil {
				pt.Error = err.Error()
				c.Log("  FAILED %s: %v", p, err)
			}
			pred.record(p, n, time.Since(began), pt.Error != "")
			set.Points = append(set.Points, pt)
			prog.end()
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	return nil
}

func names(ps []proxier) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

type logf func(string, ...any)

func (l logf) Logf(format string, args ...any) { l(format, args...) }

var _ cluster.Logger = logf(nil)

// kernelLabel is a point's kernel: where it ran and the release, e.g.
// "host 6.18.5" or "uml 6.1.176".
func kernelLabel(kind, desc string) string {
	rel := desc
	if f := strings.Fields(desc); len(f) >= 2 && f[0] == "Linux" {
		rel = f[1]
	} else if kind == local.KernelHost {
		if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
			rel = strings.TrimSpace(string(b))
		}
	}
	return kind + " " + rel
}

// openFilesSkip says why the userspace mode cannot run at n Services, or
// "": it holds a socket per Service, and on the host the proxier inherits
// this process's open-file ceiling (a guest's root may raise its own).
func openFilesSkip(kernel string, p proxier, n int, ceiling func() (uint64, error)) string {
	if p.mode != result.ModeUserspace || kernel != local.KernelHost {
		return ""
	}
	limit, err := ceiling()
	if err != nil || uint64(n)+userspace.OpenFileHeadroom <= limit {
		return ""
	}
	return fmt.Sprintf("the userspace mode needs a socket per Service, about %d open files here, and this machine's open-file limit is %d "+
		"(only CAP_SYS_RESOURCE raises it, and this root lacks it; raise it with `ulimit -Hn` or the container's nofile limit)",
		n+userspace.OpenFileHeadroom, limit)
}

// predictor keeps each proxier's point durations, to skip points that
// would blow the budget: kube-proxy's ipvs mode in the UML guest takes
// about 20 s per sync at 1000 Services, so its 10k point would run for
// hours.
type predictor map[proxier][]observed

type observed struct {
	services int
	took     time.Duration
	failed   bool
}

func (pr predictor) record(p proxier, n int, took time.Duration, failed bool) {
	pr[p] = append(pr[p], observed{n, took, failed})
}

// skip says why p should not run at n ("" to run it). The duration is
// extrapolated from the last point with the exponent the last two points
// show, clamped to [1, 2]: sync cost grows linearly with Services or, for
// iptables-nft, about quadratically.
func (pr predictor) skip(p proxier, n int, budget time.Duration) string {
	obs := pr[p]
	if len(obs) == 0 {
		return ""
	}
	last := obs[len(obs)-1]
	if last.failed {
		return fmt.Sprintf("its %d-Service point failed", last.services)
	}
	// One point cannot tell fixed costs (waits for idle, restarts) from
	// per-Service ones: at 100 Services they dominate, and scaling them
	// up skipped kube-proxy's 1k points in UML that took a few minutes.
	if len(obs) < 2 {
		return ""
	}
	k := 1.0
	if prev := obs[len(obs)-2]; prev.took > 0 && last.services > prev.services {
		k = math.Log(float64(last.took)/float64(prev.took)) / math.Log(float64(last.services)/float64(prev.services))
		k = math.Max(1, math.Min(2, k))
	}
	predicted := time.Duration(float64(last.took) * math.Pow(float64(n)/float64(last.services), k))
	if predicted > budget {
		return fmt.Sprintf("predicted %s (its %d-Service point took %s, scaling with exponent %.1f), over the %s point budget",
			predicted.Round(time.Minute), last.services, last.took.Round(time.Second), k, budget)
	}
	return ""
}
