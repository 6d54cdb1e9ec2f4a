package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
	"github.com/proxymodes/proxymodes/harness/logs"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/uml"
)

// guests is the data plane of a lab whose nodes run in user-mode Linux,
// one guest per node. A guest has one vCPU, and kube-proxy's ipvs mode
// starts about 40 processes per sync there: two nodes in one guest took
// turns on one host core while the other idled.
//
// The control plane stays on the host (Go runs 20-50x slower in UML).
// Every guest links to one lab namespace on the host by two taps: an
// uplink (the lab talks to the guest's agent over it, and the node reaches
// the API server through it, masqueraded onto a veth to the host there)
// and a fabric port on a bridge that joins the nodes, as the fabric
// namespace does in a host-kernel lab. The host needs no route into them.
type guests struct {
	ns     string
	prefix string
	nodes  []*guest // guest k runs node k

	mu   sync.Mutex
	pods map[string]int // pod namespace -> node index
}

// guest is one user-mode Linux guest and its agent.
type guest struct {
	*plane.Remote
	index   int
	kernel  *uml.Kernel
	started *uml.Started

	statsMu sync.Mutex
	lastAt  time.Time
	lastCPU time.Duration
}

var _ plane.Plane = (*guests)(nil)

// GuestLayout says how a UML lab is laid out, for result sets: figures
// taken with one guest for both nodes (and module autoloading on, see
// harness/uml) were 2-5 times slower and are not comparable.
const GuestLayout = "one 1-vCPU guest per node, module autoloading off"

// Links in the guests' lab namespace on the host, and the guest link that
// becomes a node's fabric interface.
const (
	guestUplink = "up0"  // towards the host
	guestBridge = "fab0" // joins the guests' fabric taps
	guestFabric = "vec1" // in the guest
)

func uplinkTap(i int) string { return "tap" + strconv.Itoa(i) }
func fabricTap(i int) string { return "ftap" + strconv.Itoa(i) }

func startGuests(ctx context.Context, l *Lab) (_ *guests, err error) {
	n := l.opts.Nodes
	if n > addrplan.MaxGuestNodes {
		return nil, fmt.Errorf("%d nodes: a lab in user-mode Linux runs one guest per node and holds at most %d (use fewer nodes)", n, addrplan.MaxGuestNodes)
	}
	k, err := uml.Ensure(ctx, l.log)
	if err != nil {
		return nil, err
	}
	gs := &guests{ns: l.prefix + "uml", prefix: l.prefix, nodes: make([]*guest, n), pods: map[string]int{}}
	if err := gs.buildLinks(l.prefix, l.outer, n); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			gs.kill()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	for i := range gs.nodes {
		s, err := k.Start(ctx, uml.RunOptions{
			Argv:  []string{self},
			Env:   plane.AgentEnv(l.opts.Name, i),
			NetNS: gs.ns,
			Taps:  []uml.Tap{{Name: uplinkTap(i)}, {Name: fabricTap(i), MAC: netlab.MACFor(addrplan.NodeIP(i).Addr())}},
			Lab:   l.opts.Name,
			MemMB: 1536,
		})
		if err != nil {
			return nil, err
		}
		gs.nodes[i] = &guest{Remote: plane.NewRemote(gs.ns, i), index: i, kernel: k, started: s}
	}
	err = gs.each(func(g *guest) error { return g.waitAgent(ctx, 2*time.Minute) })
	if err != nil {
		return nil, err
	}
	l.log.Logf("lab %s: %d guests of %s booted, agents up in %s", l.opts.Name, n, k, time.Since(start).Round(time.Millisecond))
	return gs, nil
}

// buildLinks makes the lab namespace on the host with its uplink to the
// outer namespace (the host's, or an isolated lab's sandbox), the fabric
// bridge and every guest's two taps.
func (gs *guests) buildLinks(prefix, outer string, n int) error {
	ns := gs.ns
	if err := netlab.CreateNS(ns); err != nil {
		return err
	}
	// The host end of block 0 is the API server's address, as in a
	// host-kernel lab.
	if err := netlab.Veth(netlab.End{NS: ns, Name: guestUplink, Addr: addrplan.MgmtNode(0)},
		netlab.End{NS: outer, Name: prefix + "u", Addr: addrplan.MgmtHost(0)}); err != nil {
		return err
	}
	// The bridge's own address makes this namespace the lab's outside
	// client (cluster.OutsideClient), as the fabric namespace is in a
	// host-kernel lab.
	if err := netlab.Bridge(ns, guestBridge, addrplan.Outside()); err != nil {
		return err
	}
	// The fabric is a wire between nodes: the proxiers' NAT runs in the
	// nodes, and this namespace's own conntrack must not see their flows.
	if err := netlab.Sysctl(ns, "net/bridge/bridge-nf-call-iptables", "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for i := 0; i < n; i++ {
		for _, tap := range []string{uplinkTap(i), fabricTap(i)} {
			err := netlab.Do(ns, func() error {
				// A tap device must be created from inside its namespace.
				return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tap}, Mode: netlink.TUNTAP_MODE_TAP})
			})
			if err != nil {
				return fmt.Errorf("tap %s in %s: %w", tap, ns, err)
			}
		}
		if err := netlab.LinkUp(ns, uplinkTap(i), plane.UplinkHost(i)); err != nil {
			return err
		}
		if err := netlab.Enslave(ns, fabricTap(i), guestBridge); err != nil {
			return err
		}
		if err := netlab.LinkUp(ns, fabricTap(i), netip.Prefix{}); err != nil {
			return err
		}
		// Replies from the API server come back de-masqueraded to node
		// i's management address, which lives behind guest i.
		if err := netlab.Route(ns, addrplan.MgmtNode(i+1).Masked(), plane.UplinkGuest(i).Addr(), ""); err != nil {
			return err
		}
	}
	if err := netlab.Sysctl(ns, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	err := plane.IPTablesIn(ns, func(ipt *iptables.IPTables) error {
		return ipt.Append("nat", "POSTROUTING", "-o", guestUplink, "-m", "comment", "--comment", "proxymodes guest uplink", "-j", "MASQUERADE")
	})
	if err != nil {
		return fmt.Errorf("masquerade in %s: %w", ns, err)
	}
	return netlab.LinkUp(ns, guestBridge, netip.Prefix{})
}

// each runs fn on every guest at once and joins their errors.
func (gs *guests) each(fn func(g *guest) error) error {
	errs := make([]error, len(gs.nodes))
	var wg sync.WaitGroup
	for i, g := range gs.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(g); err != nil {
				errs[i] = fmt.Errorf("%s's guest: %w", plane.NodeName(i), err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (gs *guests) byNode(node string) (*guest, error) {
	for k, g := range gs.nodes {
		if plane.NodeName(k) == node {
			return g, nil
		}
	}
	return nil, fmt.Errorf("no node %q in this lab (it has %d)", node, len(gs.nodes))
}

// byNS finds the guest that holds a node's or a pod's namespace.
func (gs *guests) byNS(ns string) (*guest, error) {
	for k, g := range gs.nodes {
		if plane.NodeNS(gs.prefix, k) == ns {
			return g, nil
		}
	}
	gs.mu.Lock()
	k, ok := gs.pods[ns]
	gs.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no namespace %q in this lab's guests (only nodes and pods live there)", ns)
	}
	return gs.nodes[k], nil
}

// Build has each guest build its own node, with its fabric tap as the
// node's fabric interface.
func (gs *guests) Build(ctx context.Context, t plane.Topology) error {
	return gs.each(func(g *guest) error {
		gt := t
		gt.Local, gt.FabricLink = []int{g.index}, guestFabric
		// Inside a guest its own root namespace is the outer one.
		gt.Outer = ""
		gt.StateDir = g.stateDir()
		// Nodes reach the API server through their guest's uplink, which
		// takes block 0's place.
		gt.MgmtOffset = 1
		return g.Build(ctx, gt)
	})
}

func (gs *guests) AddPod(ctx context.Context, s plane.PodSlot) error {
	if s.Node < 0 || s.Node >= len(gs.nodes) {
		return fmt.Errorf("no node %d in this lab", s.Node)
	}
	gs.mu.Lock()
	gs.pods[s.Pod.NS] = s.Node
	gs.mu.Unlock()
	return gs.nodes[s.Node].AddPod(ctx, s)
}

func (gs *guests) RemovePod(ctx context.Context, p cluster.Pod) error {
	g, err := gs.byNode(p.Node)
	if err != nil {
		return err
	}
	err = g.RemovePod(ctx, p)
	gs.mu.Lock()
	delete(gs.pods, p.NS)
	gs.mu.Unlock()
	return err
}

func (gs *guests) Break(ctx context.Context, p cluster.Pod, f cluster.Fault) error {
	g, err := gs.byNode(p.Node)
	if err != nil {
		return err
	}
	return g.Break(ctx, p, f)
}

func (gs *guests) Restore(ctx context.Context, p cluster.Pod, f cluster.Fault) error {
	g, err := gs.byNode(p.Node)
	if err != nil {
		return err
	}
	return g.Restore(ctx, p, f)
}

// StartProxiers starts every guest's proxier at once. A guest's /run is
// its own, so each reads the kubeconfig from its shared run directory.
func (gs *guests) StartProxiers(ctx context.Context, s plane.ProxierSpec) error {
	return gs.each(func(g *guest) error {
		gspec := s
		var err error
		if gspec.Kubeconfig, err = g.share(s.Kubeconfig); err != nil {
			return err
		}
		return g.StartProxiers(ctx, gspec)
	})
}

func (gs *guests) StopProxier(ctx context.Context, node string) error {
	g, err := gs.byNode(node)
	if err != nil {
		return err
	}
	return g.StopProxier(ctx, node)
}

func (gs *guests) ProxierMetrics(ctx context.Context, node string) (string, error) {
	g, err := gs.byNode(node)
	if err != nil {
		return "", err
	}
	return g.ProxierMetrics(ctx, node)
}

// Probe runs in the guest that holds t.NS; an unknown namespace fails
// every connection, as a broken link would.
func (gs *guests) Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary {
	if t.NS == gs.ns {
		// The outside client lives on the host, beside the guests.
		return probe.Run(ctx, t, n, timeout)
	}
	g, err := gs.byNS(t.NS)
	if err != nil {
		s := probe.Summary{Target: t}
		for i := 0; i < n; i++ {
			s.Results = append(s.Results, probe.Result{Err: err})
		}
		return s
	}
	return g.Probe(ctx, t, n, timeout)
}

func (gs *guests) IPTables(ctx context.Context, ns string) (string, error) {
	g, err := gs.byNS(ns)
	if err != nil {
		return "", err
	}
	return g.IPTables(ctx, ns)
}

func (gs *guests) OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (cluster.Flow, error) {
	g, err := gs.byNS(ns)
	if err != nil {
		return nil, err
	}
	return g.OpenFlow(ctx, ns, proto, dst)
}

func (gs *guests) Exec(ctx context.Context, ns string, argv []string) (string, error) {
	g, err := gs.byNS(ns)
	if err != nil {
		return "", err
	}
	return g.Exec(ctx, ns, argv)
}

// Kernel names the guests' kernel.
func (gs *guests) Kernel() string { return gs.nodes[0].kernel.String() }

// Close stops every guest's processes, lets it power off and removes its
// run directory.
func (gs *guests) Close() error {
	return gs.each(func(g *guest) error { return g.Close() })
}

func (gs *guests) kill() {
	for _, g := range gs.nodes {
		if g != nil {
			g.kill()
		}
	}
}

// stateDirs are where the guests write their logs.
func (gs *guests) stateDirs() []string {
	var dirs []string
	for _, g := range gs.nodes {
		dirs = append(dirs, g.stateDir())
	}
	return dirs
}

// stats is one line for a run's sync log: each guest's host CPU use and
// clock offset.
func (gs *guests) stats(ctx context.Context) string {
	lines := make([]string, len(gs.nodes))
	gs.each(func(g *guest) error {
		lines[g.index] = plane.NodeName(g.index) + "'s guest: " + g.stats(ctx)
		return nil
	})
	return strings.Join(lines, "; ")
}

func (g *guest) waitAgent(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := g.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		exited := false
		select {
		case <-g.started.Done():
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			return fmt.Errorf("the lab agent in the UML guest did not come up (%v); its log:\n%s\nconsole:\n%s", err,
				logs.Tail(filepath.Join(g.started.RunDir(), "stderr"), 20), logs.Tail(filepath.Join(g.started.RunDir(), "console.log"), 10))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stateDir is where the guest writes logs: the run directory is shared.
func (g *guest) stateDir() string { return filepath.Join(g.started.RunDir(), "state") }

// share copies a host file into the shared run directory and returns the
// path the guest sees it at (the same path).
func (g *guest) share(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(g.started.RunDir(), filepath.Base(path))
	return dst, os.WriteFile(dst, b, 0o600)
}

// Close stops the agent's processes, lets the guest power off and removes
// its run directory.
func (g *guest) Close() error {
	err := g.Remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, werr := g.started.Wait(ctx, 30*time.Second); werr != nil && err == nil {
		err = werr
	}
	g.kill()
	return err
}

func (g *guest) kill() {
	g.started.Kill()
	g.started.Remove()
}

// stats is the guest's host CPU use since the previous call (a one-vCPU
// guest saturates at 100%) and its clock's offset from the host's.
func (g *guest) stats(ctx context.Context) string {
	now, cpu := time.Now(), g.started.CPU()
	g.statsMu.Lock()
	var use string
	if !g.lastAt.IsZero() {
		use = fmt.Sprintf("cpu %.0f%% of one core over %s", 100*float64(cpu-g.lastCPU)/float64(now.Sub(g.lastAt)), now.Sub(g.lastAt).Round(100*time.Millisecond))
	} else {
		use = fmt.Sprintf("cpu %s so far", cpu.Round(time.Second))
	}
	g.lastAt, g.lastCPU = now, cpu
	g.statsMu.Unlock()
	off, rtt, err := g.ClockOffset(ctx)
	if err != nil {
		return use + ", clock: " + err.Error()
	}
	return fmt.Sprintf("%s, clock %+.1fms from the host's (+/- %.1fms)", use, float64(off)/1e6, float64(rtt)/2e6)
}

// GuestStats is the guests' CPU use and clock offsets, or "" when the
// nodes run in the host kernel.
func (l *Lab) GuestStats(ctx context.Context) string {
	if gs, ok := l.plane.(*guests); ok {
		return gs.stats(ctx)
	}
	return ""
}
