// Package local is the default cluster provider: a real control plane
// (etcd, kube-apiserver, kube-controller-manager from the pinned build) on
// the host, nodes as network namespaces on a fabric bridge, and pods as
// namespaces behind per-node bridges, each running the echo backend. It needs
// root and a Linux kernel with netns, veth and bridge; no Docker, no images.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/gofrs/flock"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
	"github.com/proxymodes/proxymodes/harness/controlplane"
	"github.com/proxymodes/proxymodes/harness/interrupt"
	"github.com/proxymodes/proxymodes/harness/leak"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/preflight"
	"github.com/proxymodes/proxymodes/harness/proc"
	"github.com/proxymodes/proxymodes/harness/uml"
)

// ProviderName identifies this provider in Info and results.
const ProviderName = "local"

// Options configure a lab.
type Options struct {
	// Name of the lab (default "lab"); 1-8 lower-case letters or digits,
	// because it appears in interface names, which the kernel caps at 15.
	Name string
	// Nodes is the number of nodes (default 2).
	Nodes  int
	Logger cluster.Logger
	// BuildOutput receives the Kubernetes build's progress, if one is needed.
	BuildOutput io.Writer
	// Proxier, if set, runs the reference proxier on every node.
	Proxier *ProxierOptions
	// Kernel is where the nodes run: "host", "uml" (a user-mode Linux
	// guest), or "" to choose: uml when the proxy mode needs a kernel
	// feature the host lacks (ip_vs for ipvs), else host. $LAB_KERNEL
	// overrides "".
	Kernel string
	// Persistent labs outlive the process that created them (the CLI's
	// `lab up`); others belong to their creator, and a later run treats
	// them as stale once that process is gone.
	Persistent bool
	// Isolated runs the lab's host side (the control plane and the host
	// ends of the management links) in a namespace of its own instead of
	// the host's. Isolated labs share nothing but the kernel, so several
	// run side by side, each under its own name; the API server is then
	// reachable only from inside that namespace (`ip netns exec
	// pm-<name>-host kubectl ...`). $LAB_ISOLATED=1 sets it.
	Isolated bool
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

func (o *Options) complete() error {
	if o.Name == "" {
		o.Name = "lab"
	}
	if !nameRE.MatchString(o.Name) {
		return fmt.Errorf("lab name %q: use 1-8 lower-case letters or digits (it is part of interface names, which Linux limits to 15 characters)", o.Name)
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > addrplan.MaxNodes {
		return fmt.Errorf("nodes = %d: the address plan fits 1 to %d nodes", o.Nodes, addrplan.MaxNodes)
	}
	if o.Logger == nil {
		o.Logger = cluster.Discard
	}
	if o.Kernel == "" {
		o.Kernel = os.Getenv("LAB_KERNEL")
	}
	switch v := os.Getenv("LAB_ISOLATED"); v {
	case "":
	case "1":
		o.Isolated = true
	case "0":
	default:
		return fmt.Errorf("LAB_ISOLATED=%q: use 1 (each lab in its own namespace, side by side) or 0 (the host namespace, one lab at a time)", v)
	}
	switch o.Kernel {
	case "", KernelHost, KernelUML:
	default:
		return fmt.Errorf("kernel %q: use %q or %q (or leave it empty to choose)", o.Kernel, KernelHost, KernelUML)
	}
	return nil
}

// Kernels the nodes can run in.
const (
	KernelHost = "host"
	KernelUML  = "uml"
)

// ProxierOptions start a proxier on every node.
type ProxierOptions struct {
	// Mode is the proxy mode (userspace, iptables, ipvs, nftables).
	Mode string
	// Impl is the proxier: ImplReference (the default) or ImplKubeProxy.
	Impl string
	// Binary overrides the proxier binary; by default it is built from
	// this checkout (reference) or from the pinned module (kube-proxy).
	Binary string
	// Args are extra flags for every proxier.
	Args []string
	// Env is extra environment (KEY=value) for every proxier process, its
	// --cleanup included: kube-proxy has no flag for its iptables
	// backend and runs whatever `iptables` its PATH finds, so a PATH is
	// how a caller chooses one.
	Env []string
	// StartTimeout bounds the wait for each proxier to become healthy
	// (after its first full sync); default 90s.
	StartTimeout time.Duration
	// Fault runs a self-test build of the reference proxier that breaks
	// this promise on purpose (proxier/fault); "" runs the real one.
	Fault string
}

// Lab is a running local cluster.
type Lab struct {
	opts   Options
	prefix string
	dir    string
	log    cluster.Logger
	cp     *controlplane.ControlPlane
	// standIn serves the API while cp is stopped (StopAPIServer); client
	// is then its client, and cpClient cp's.
	standIn  *controlplane.ControlPlane
	client   kubernetes.Interface
	cpClient kubernetes.Interface

	// lock is held while this process owns the lab: the host lock for a
	// lab in the host namespace (labs there share the address plan, so
	// one runs at a time), the lab's own name lock for an isolated one.
	lock *flock.Flock
	// outer holds the lab's host side: the host namespace, or an
	// isolated lab's sandbox.
	outer string

	plane plane.Plane

	mu sync.Mutex
	st state
}

// state is what the state file records, so that `lab status` and `lab
// down` work from another process.
// EnvLabName names the lab for the suites and the bench alike, so that one
// environment names every lab of a side-by-side run (with LAB_ISOLATED=1).
const EnvLabName = "PROXYMODES_LAB_NAME"

type state struct {
	Name       string         `json:"name"`
	OwnerPID   int            `json:"ownerPID"` // 0 for a persistent lab
	APIServer  string         `json:"apiServer"`
	Kubeconfig string         `json:"kubeconfig"`
	Nodes      []cluster.Node `json:"nodes"`
	Pods       []podState     `json:"pods"`
	// NextPodIndex is, per node, where the search for a free pod address
	// starts: one past the last one handed out (see placePod).
	NextPodIndex []int `json:"nextPodIndex,omitempty"`
	// Kernel is the kernel the nodes run in.
	Kernel string `json:"kernel"`
	// Isolated labs live in their own namespaces and never conflict with
	// others (Options.Isolated).
	Isolated bool `json:"isolated,omitempty"`
}

type podState struct {
	cluster.Pod
	Index int           `json:"index"`
	Fault cluster.Fault `json:"fault,omitempty"`
}

var _ cluster.Cluster = (*Lab)(nil)

// Up creates a lab. On failure or cancellation it removes whatever it made.
func Up(ctx context.Context, opts Options) (lab *Lab, err error) {
	if err := opts.complete(); err != nil {
		return nil, err
	}
	log := opts.Logger
	// Runs after the removal below, so an interrupt waits for it.
	ctx, done := interrupt.Guard(ctx, func(ctx context.Context) error { return Down(ctx, opts.Name, log) })
	defer done()
	if err := preflight.Check(ctx, preflight.Options{Install: true, Logger: log}); err != nil {
		return nil, err
	}
	bin, err := binaries.Kubernetes("controlplane", opts.BuildOutput)
	if err != nil {
		return nil, err
	}
	if p := opts.Proxier; p != nil {
		if err := p.resolve(opts.BuildOutput); err != nil {
			return nil, err
		}
	}
	lockPath := hostLockPath
	if opts.Isolated {
		lockPath = nameLockPath(opts.Name)
	}
	lock, err := lockLab(ctx, lockPath, log)
	if err != nil {
		return nil, err
	}
	if err := claim(opts, log); err != nil {
		lock.Close()
		return nil, err
	}
	l := &Lab{opts: opts, prefix: leak.Prefix(opts.Name), dir: leak.StateDir(opts.Name), log: log, lock: lock, outer: netlab.HostNS}
	if opts.Isolated {
		l.outer = plane.SandboxNS(l.prefix)
	}
	l.st = state{Name: opts.Name, OwnerPID: os.Getpid(), Isolated: opts.Isolated}
	if opts.Persistent {
		l.st.OwnerPID = 0
	}
	defer func() {
		if err != nil {
			log.Logf("lab %s: setup failed, removing what was created", opts.Name)
			if derr := l.Down(context.Background()); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return nil, err
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	start := time.Now()
	steps := []step{
		{"network", l.buildNetwork},
		{"control plane", func(ctx context.Context) error { return l.startControlPlane(ctx, bin) }},
		{"nodes", l.registerNodes},
	}
	if opts.Proxier != nil {
		steps = append(steps, step{opts.Proxier.Mode + " proxiers", l.startProxiers})
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lab %s: interrupted before %s: %w", opts.Name, s.name, err)
		}
		t := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("lab %s: %s: %w", opts.Name, s.name, err)
		}
		log.Logf("lab %s: %s ready in %s", opts.Name, s.name, time.Since(t).Round(time.Millisecond))
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	log.Logf("lab %s: up in %s (%d nodes in %s, API %s)", opts.Name, time.Since(start).Round(time.Millisecond), opts.Nodes, l.st.Kernel, l.st.APIServer)
	return l, nil
}

// ErrHostBusy is returned by Up when another run's lab held the host for
// the whole wait: nothing of the lab named in the call is this run's.
var ErrHostBusy = errors.New("another run's lab held this host for the whole wait (labs share one address plan, so one runs at a time; `proxymodes lab status` shows it)")

// hostLockPath is a variable so that tests can lock a file of their own.
var hostLockPath = filepath.Join(leak.StateRoot, "host.lock")

// nameLockPath is held by the owner of an isolated lab: it keeps two runs
// from taking the same name, and tells a later run whether the lab of that
// name is live or a leftover. It lives beside, not in, the state directory,
// which Down removes.
func nameLockPath(name string) string { return filepath.Join(leak.StateRoot, "lab-"+name+".lock") }

// lockPoll is how often a waiting run retries the lock. It must be short:
// a soak starts its next run within a few hundred milliseconds of the last
// one's release, and a waiter that polled every 200 ms lost that race for
// 20 minutes.
const lockPoll = 10 * time.Millisecond

// lockLab waits for a lab lock: the host-wide one, or an isolated lab's
// name lock.
func lockLab(ctx context.Context, path string, log cluster.Logger) (*flock.Flock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	fl := flock.New(path, flock.SetPermissions(0o600))
	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if ok {
		return fl, nil
	}
	if path == hostLockPath {
		log.Logf("waiting for another run's lab to finish (labs in the host namespace share one address plan, so one runs at a time)")
	} else {
		log.Logf("waiting for another run's lab of the same name to finish")
	}
	if ok, err = fl.TryLockContext(ctx, lockPoll); !ok {
		fl.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrHostBusy, ctx.Err())
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return fl, nil
}

// step is one stage of Up; a failing step makes Up remove everything.
type step struct {
	name string
	fn   func(context.Context) error
}

// claim makes sure no lab this one conflicts with is live, and removes
// stale ones, including leftovers of runs that were killed. A lab in the
// host namespace conflicts with every other such lab (one address plan);
// an isolated lab only with one of its own name. Leftovers of an isolated
// lab whose owner is gone are removed by any later host-namespace lab, or
// by a lab of the same name.
func claim(opts Options, log cluster.Logger) error {
	others, _ := os.ReadDir(leak.StateRoot)
	names := []string{opts.Name}
	for _, e := range others {
		if !e.IsDir() || e.Name() == opts.Name {
			continue
		}
		// Up writes state.json before it creates anything, so a directory
		// without one belongs to something else (the private Docker
		// daemon keeps its state here too) and is not ours to remove.
		if _, err := os.Stat(statePath(e.Name())); err != nil {
			continue
		}
		if opts.Isolated {
			continue
		}
		names = append(names, e.Name())
	}
	for _, name := range names {
		st, err := readState(name)
		if err == nil && st.Isolated && name != opts.Name && isolatedLive(name, st) {
			continue
		}
		switch {
		case err == nil && st.OwnerPID == 0:
			return fmt.Errorf("lab %q is already up (started by `proxymodes lab up`); remove it first with `proxymodes lab down --name %s`", name, name)
		case err == nil && st.OwnerPID != os.Getpid() && proc.Alive(st.OwnerPID):
			return fmt.Errorf("lab %q is in use by process %d without holding its lock; stop that process or run `proxymodes lab down --name %s`", name, st.OwnerPID, name)
		}
		if left := leak.Check(name); len(left) > 0 {
			log.Logf("lab %s: removing %d leftovers of an earlier run that did not finish", name, len(left))
			if err := Down(context.Background(), name, log); err != nil {
				return err
			}
		}
	}
	return nil
}

// A name lock outlives its lab only when a run was killed: the leak check
// reports it once nobody holds it, until Down removes it.
func init() {
	leak.RegisterFiles(func(lab string) []string {
		if nameLockFree(lab) {
			return []string{nameLockPath(lab)}
		}
		return nil
	})
}

// nameLockFree: the lab's name lock exists and nobody holds it.
func nameLockFree(name string) bool {
	return withFreeNameLock(name, func() {})
}

// removeFreeNameLock removes the name lock a killed isolated lab left,
// unless a live run holds it.
func removeFreeNameLock(name string) {
	withFreeNameLock(name, func() { os.Remove(nameLockPath(name)) })
}

// withFreeNameLock runs fn holding the lab's name lock, if the file exists
// (it is never created here) and nobody else holds it.
func withFreeNameLock(name string, fn func()) bool {
	fl := flock.New(nameLockPath(name), flock.SetFlag(os.O_RDWR))
	defer fl.Close()
	if ok, err := fl.TryLock(); err != nil || !ok {
		return false
	}
	fn()
	return true
}

// isolatedLive says whether another isolated lab is in use: persistent,
// its owner alive, or its name lock held.
func isolatedLive(name string, st state) bool {
	if st.OwnerPID == 0 || proc.Alive(st.OwnerPID) {
		return true
	}
	_, err := os.Stat(nameLockPath(name))
	return err == nil && !nameLockFree(name)
}

func (l *Lab) startControlPlane(ctx context.Context, bin string) error {
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Binary:      bin,
		Dir:         filepath.Join(l.dir, "controlplane"),
		Address:     addrplan.APIServer(),
		Port:        6443,
		ServiceCIDR: addrplan.Services,
		ExtraEnv:    []string{agent.LabEnv + "=" + l.opts.Name},
		NetNS:       l.sandbox(),
	})
	if err != nil {
		return err
	}
	l.cp = cp
	l.cpClient, err = cluster.NewClient(cp.RESTConfig())
	if err != nil {
		return err
	}
	l.client = l.cpClient
	l.st.APIServer = cp.URL()
	l.st.Kubeconfig = cp.Kubeconfig
	return nil
}

// sandbox is an isolated lab's outer namespace, or "".
func (l *Lab) sandbox() string {
	if l.outer == netlab.HostNS {
		return ""
	}
	return l.outer
}

// Info describes the lab.
func (l *Lab) Info() cluster.Info {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.info()
}

func (s state) info() cluster.Info {
	info := cluster.Info{Name: s.Name, Provider: ProviderName, APIServer: s.APIServer,
		Kubeconfig: s.Kubeconfig, Nodes: append([]cluster.Node(nil), s.Nodes...), Kernel: s.Kernel}
	if s.Isolated {
		info.APINetNS = plane.SandboxNS(leak.Prefix(s.Name))
	}
	return info
}

// RESTConfig is an admin configuration for the lab's API server.
func (l *Lab) RESTConfig() *rest.Config { return l.cp.RESTConfig() }

// Client is an admin clientset: the stand-in's while the API server is
// stopped (StopAPIServer).
func (l *Lab) Client() kubernetes.Interface {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.client
}

// ControlPlaneLog is the path of the control plane's log.
func (l *Lab) ControlPlaneLog() string { return l.cp.LogPath }

// Down stops every process of the lab and removes its namespaces, links
// and state. It is safe to call more than once.
func (l *Lab) Down(ctx context.Context) error {
	var errs []error
	// The data plane first: proxiers would otherwise log errors while the
	// API goes.
	if l.plane != nil {
		errs = append(errs, l.plane.Close())
	}
	if l.standIn != nil {
		if err := l.standIn.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stand-in API server: %w", err))
		}
	}
	if l.cp != nil {
		if err := l.cp.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("control plane: %w", err))
		}
	}
	errs = append(errs, Down(ctx, l.opts.Name, l.log))
	if l.lock != nil {
		if l.opts.Isolated {
			// Removed while held, so no run finds it free and half gone.
			os.Remove(nameLockPath(l.opts.Name))
		}
		l.lock.Close()
		l.lock = nil
	}
	return errors.Join(errs...)
}

// Kernel names the kernel the nodes run in.
func (l *Lab) Kernel() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.Kernel
}

// Down removes everything of the named lab, whether or not the process
// that created it still runs: tagged processes, namespaces, host links and
// the state directory. It then verifies that nothing is left.
func Down(ctx context.Context, name string, log cluster.Logger) error {
	if log == nil {
		log = cluster.Discard
	}
	start := time.Now()
	var errs []error
	if pids := proc.Tagged(agent.LabEnv, name); len(pids) > 0 {
		if err := proc.Stop(pids, 20*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	p := leak.Prefix(name)
	// Pods first: their veth peers live in node namespaces.
	nss, err := netlab.ListNS(p)
	errs = append(errs, err)
	for _, ns := range nss {
		errs = append(errs, netlab.DeleteNS(ns))
	}
	links, err := netlab.ListLinks(netlab.HostNS, p)
	errs = append(errs, err)
	for _, link := range links {
		errs = append(errs, netlab.DeleteLink(netlab.HostNS, link))
	}
	errs = append(errs, os.RemoveAll(leak.StateDir(name)))
	errs = append(errs, uml.RemoveLabRuns(name))
	removeFreeNameLock(name)
	if left := leak.Check(name); len(left) > 0 {
		errs = append(errs, fmt.Errorf("lab %s: still present after down: %v", name, left))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Logf("lab %s: down in %s", name, time.Since(start).Round(time.Millisecond))
	return nil
}

// Status reads the state of a lab that may belong to another process.
func Status(name string) (cluster.Info, error) {
	st, err := readState(name)
	if err != nil {
		return cluster.Info{}, err
	}
	return st.info(), nil
}

// StatusPods lists the pods recorded for a lab.
func StatusPods(name string) ([]cluster.Pod, error) {
	st, err := readState(name)
	if err != nil {
		return nil, err
	}
	var out []cluster.Pod
	for _, p := range st.Pods {
		out = append(out, p.Pod)
	}
	return out, nil
}

func statePath(name string) string { return filepath.Join(leak.StateDir(name), "state.json") }

func readState(name string) (state, error) {
	var st state
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("no lab named %q is up (start one with `proxymodes lab up`)", name)
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("state file %s is corrupt (%v): remove the lab with `proxymodes lab down --name %s`", statePath(name), err, name)
	}
	return st, nil
}

// save writes the state file atomically; callers hold l.mu or own l alone.
func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(l.opts.Name) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(l.opts.Name))
}
