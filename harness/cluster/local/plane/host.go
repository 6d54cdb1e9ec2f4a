package plane

import (
	"bufio"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-iptables/iptables"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/logs"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/proc"
	"github.com/proxymodes/proxymodes/harness/rules"
)

// Interface names inside lab namespaces. Host-side names carry the lab
// prefix, so leftovers are easy to find.
const (
	fabricBridge = "br0"
	nodeFabric   = "eth0"
	nodeMgmt     = "mgmt0"
	podBridge    = "cbr0"
	podIface     = "eth0"
)

// Host builds the data plane in the kernel this process runs on.
type Host struct {
	t        Topology
	mu       sync.Mutex
	backends map[string]*process // by pod namespace
	proxiers map[string]*process // by node name
}

// NewHost returns a data plane for this kernel.
func NewHost() *Host {
	return &Host{backends: map[string]*process{}, proxiers: map[string]*process{}}
}

// process is a helper the plane started and must reap.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

func startProcess(ns string, cmd *exec.Cmd, log string) (*process, error) {
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if cmd.Stdout == nil {
		cmd.Stdout = f
	}
	cmd.Stderr = f
	// Its own process group: Ctrl-C reaches only the harness, which stops
	// helpers in order instead of racing the terminal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Forked from a thread inside ns, the child starts in ns; no `ip netns
	// exec`, which costs about a second per process inside a UML guest.
	if err := netlab.Do(ns, cmd.Start); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, exited: make(chan struct{}), log: log}
	go func() { cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *process) stop(grace time.Duration) {
	proc.Stop([]int{p.cmd.Process.Pid}, grace)
	<-p.exited
}

// Kernel is the running kernel's release.
func (h *Host) Kernel() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "unknown"
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return "Linux " + b.String()
}

func (h *Host) mgmtLink(k int) string { return h.t.Prefix + "m" + strconv.Itoa(k+1) }

// Build lays out the fabric, the nodes, their pod bridges and management
// links. No namespace gets a default route: every route points into
// 198.18.0.0/15, so the lab cannot reach anything outside it.
func (h *Host) Build(ctx context.Context, t Topology) error {
	h.t = t
	if t.FabricLink != "" {
		if len(t.Local) != 1 {
			return fmt.Errorf("fabric link %s needs exactly one local node, not %v", t.FabricLink, t.Local)
		}
	} else {
		fab := FabricNS(t.Prefix)
		if err := netlab.CreateNS(fab); err != nil {
			return err
		}
		// The bridge's own address makes the fabric namespace the lab's
		// outside client (cluster.OutsideClient).
		if err := netlab.Bridge(fab, fabricBridge, addrplan.Outside()); err != nil {
			return err
		}
	}
	for _, k := range t.LocalNodes() {
		if err := h.buildNode(k); err != nil {
			return fmt.Errorf("%s: %w", NodeName(k), err)
		}
	}
	return nil
}

// fabricPort gives node k its fabric interface: a veth into the fabric
// bridge, or the plane's fabric link moved into the node.
func (h *Host) fabricPort(k int, ns string) error {
	if h.t.FabricLink != "" {
		return netlab.MoveLink(h.t.OuterNS(), h.t.FabricLink, ns, nodeFabric, addrplan.NodeIP(k))
	}
	fabPort := "n" + strconv.Itoa(k+1)
	if err := netlab.Veth(netlab.End{NS: ns, Name: nodeFabric, Addr: addrplan.NodeIP(k)},
		netlab.End{NS: FabricNS(h.t.Prefix), Name: fabPort}); err != nil {
		return err
	}
	return netlab.Enslave(FabricNS(h.t.Prefix), fabPort, fabricBridge)
}

func (h *Host) buildNode(k int) error {
	ns := NodeNS(h.t.Prefix, k)
	if err := netlab.CreateNS(ns); err != nil {
		return err
	}
	if err := h.fabricPort(k, ns); err != nil {
		return err
	}
	if err := netlab.Bridge(ns, podBridge, addrplan.PodGateway(k)); err != nil {
		return err
	}
	b := k + h.t.MgmtOffset
	if err := netlab.Veth(netlab.End{NS: ns, Name: nodeMgmt, Addr: addrplan.MgmtNode(b)},
		netlab.End{NS: h.t.OuterNS(), Name: h.mgmtLink(k), Addr: addrplan.MgmtHost(b)}); err != nil {
		return err
	}
	// Nodes forward between pods, the fabric and the management link.
	if err := netlab.Sysctl(ns, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	// Pod-to-pod traffic on one node is bridged, not routed; a proxy's NAT
	// only sees it (and un-NATs replies) if bridged IPv4 goes through
	// iptables, as kube-proxy requires of every node.
	if err := netlab.Sysctl(ns, "net/bridge/bridge-nf-call-iptables", "1"); err != nil {
		return fmt.Errorf("%w (the kernel needs br_netfilter: modprobe br_netfilter)", err)
	}
	for j := 0; j < h.t.Nodes; j++ {
		if j == k {
			continue
		}
		if err := netlab.Route(ns, addrplan.PodCIDR(j), addrplan.NodeIP(j).Addr(), ""); err != nil {
			return err
		}
	}
	if addrplan.MgmtHost(b).Addr() != addrplan.APIServer() {
		api := netip.PrefixFrom(addrplan.APIServer(), 32)
		if err := netlab.Route(ns, api, addrplan.MgmtHost(b).Addr(), ""); err != nil {
			return err
		}
	}
	// Locally generated packets to a ClusterIP, an external IP or a load
	// balancer IP need a route before the proxier's NAT rewrites them.
	// ClusterIPs go to the outside client, as a kind node's go to its
	// default gateway, which does not serve them. They were once on-link
	// on the fabric, where kube-proxy's IPVS mode (it binds every VIP to
	// kube-ipvs0 and, without strictARP, answers ARP for it) let another
	// node take a node's traffic before its own proxier had the Service:
	// CI, 2026-12-07, a pod's SYNs to a new VIP went un-NATed to the other
	// node, and one of its flows hung there.
	if err := netlab.Route(ns, addrplan.Services, addrplan.Outside().Addr(), ""); err != nil {
		return err
	}
	return netlab.Route(ns, addrplan.External, netip.Addr{}, nodeFabric)
}

// vethName is the node-side name of a pod's veth; the kernel allows 15
// characters, so it is derived from a hash of the pod's key.
func vethName(p cluster.Pod) string {
	h := fnv.New32a()
	h.Write([]byte(p.Namespace + "/" + p.Name))
	return fmt.Sprintf("veth%08x", h.Sum32())
}

// AddPod wires a namespace for the pod on its node and starts the echo
// backend there; it returns once the backend has bound its ports.
func (h *Host) AddPod(ctx context.Context, s PodSlot) error {
	pod := s.Pod
	if err := netlab.CreateNS(pod.NS); err != nil {
		return err
	}
	nodeNS := NodeNS(h.t.Prefix, s.Node)
	veth := vethName(pod)
	ip := addrplan.PodIP(s.Node, s.Index)
	if err := netlab.Veth(netlab.End{NS: pod.NS, Name: podIface, Addr: ip, MAC: netlab.MACFor(ip.Addr())},
		netlab.End{NS: nodeNS, Name: veth}); err != nil {
		return err
	}
	if err := netlab.Enslave(nodeNS, veth, podBridge); err != nil {
		return err
	}
	if err := netlab.Hairpin(nodeNS, veth); err != nil {
		return err
	}
	// Only the lab range is routed: a pod has no way out.
	if err := netlab.Route(pod.NS, addrplan.Lab, addrplan.PodGateway(s.Node).Addr(), ""); err != nil {
		return err
	}
	return h.startBackend(pod)
}

func (h *Host) startBackend(pod cluster.Pod) error {
	cfg := backend.Config{Name: pod.Name, HTTPPort: backend.HTTPPort, TCPPort: backend.TCPPort, UDPPort: backend.UDPPort, AltTCPPort: int(pod.AltTCPPort)}
	cmd, err := agent.Command(h.t.Lab, backend.Role, cfg.Args()...)
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	log := filepath.Join(h.t.StateDir, "pods", pod.Namespace+"."+pod.Name+".log")
	p, err := startProcess(pod.NS, cmd, log)
	if err != nil {
		return err
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == backend.ReadyLine
		ready <- ok
		for sc.Scan() { // drain, so the backend never blocks on stdout
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			p.stop(time.Second)
			return fmt.Errorf("backend in %s did not start; see %s", pod.NS, log)
		}
	case <-time.After(60 * time.Second):
		p.stop(time.Second)
		return fmt.Errorf("backend in %s not ready after 60s; see %s", pod.NS, log)
	}
	h.mu.Lock()
	h.backends[pod.NS] = p
	h.mu.Unlock()
	return nil
}

func (h *Host) stopBackend(pod cluster.Pod) {
	h.mu.Lock()
	p := h.backends[pod.NS]
	delete(h.backends, pod.NS)
	h.mu.Unlock()
	if p != nil {
		p.stop(5 * time.Second)
	}
}

// RemovePod stops the backend and deletes the pod's namespace.
func (h *Host) RemovePod(ctx context.Context, pod cluster.Pod) error {
	h.stopBackend(pod)
	return netlab.DeleteNS(pod.NS)
}

// blackholeRule drops every packet that enters the pod, inside the pod's
// own namespace; the host's rules are never touched.
var blackholeRule = []string{"-m", "comment", "--comment", "proxymodes blackhole", "-j", "DROP"}

// Break makes the pod's backend fail in the given way.
func (h *Host) Break(ctx context.Context, pod cluster.Pod, f cluster.Fault) error {
	switch f {
	case cluster.Refuse:
		h.stopBackend(pod)
		return nil
	case cluster.Blackhole:
		return IPTablesIn(pod.NS, func(ipt *iptables.IPTables) error {
			return ipt.Insert("filter", "INPUT", 1, blackholeRule...)
		})
	}
	return fmt.Errorf("unknown fault %q (use %q or %q)", f, cluster.Refuse, cluster.Blackhole)
}

// Restore undoes Break.
func (h *Host) Restore(ctx context.Context, pod cluster.Pod, f cluster.Fault) error {
	switch f {
	case cluster.Refuse:
		return h.startBackend(pod)
	case cluster.Blackhole:
		return IPTablesIn(pod.NS, func(ipt *iptables.IPTables) error {
			return ipt.DeleteIfExists("filter", "INPUT", blackholeRule...)
		})
	}
	return nil
}

// IPTablesIn runs fn with an iptables handle (of the kernel's usable
// flavour) whose commands execute inside the lab namespace ns: they are
// forked from a thread that entered it.
func IPTablesIn(ns string, fn func(*iptables.IPTables) error) error {
	return netlab.Do(ns, func() error {
		path, err := exec.LookPath(rules.Command())
		if err != nil {
			return err
		}
		ipt, err := iptables.New(iptables.Timeout(5), iptables.Path(path))
		if err != nil {
			return err
		}
		return fn(ipt)
	})
}

func (h *Host) proxierLog(node string) string {
	return filepath.Join(h.t.StateDir, "proxier", node+".log")
}

// StartProxiers runs one proxier per node, inside the node's namespace,
// talking to the API server over the node's management link, and waits
// until each reports healthy (it has synced its rules once).
func (h *Host) StartProxiers(ctx context.Context, s ProxierSpec) error {
	for _, k := range h.t.LocalNodes() {
		node := NodeName(k)
		args := append([]string{
			"--proxy-mode=" + s.Mode,
			"--kubeconfig=" + s.Kubeconfig,
			"--hostname-override=" + node,
			"--cluster-cidr=" + addrplan.Pods.String(),
			fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", ProxierMetricsPort),
			fmt.Sprintf("--healthz-bind-address=127.0.0.1:%d", ProxierHealthzPort),
		}, s.Args...)
		cmd := exec.Command(s.Binary, args...)
		// exec.Cmd keeps the last of duplicate keys, so s.Env overrides.
		cmd.Env = append(append(os.Environ(), agent.LabEnv+"="+h.t.Lab), s.Env...)
		p, err := startProcess(NodeNS(h.t.Prefix, k), cmd, h.proxierLog(node))
		if err != nil {
			return fmt.Errorf("start proxier on %s: %w", node, err)
		}
		h.mu.Lock()
		h.proxiers[node] = p
		h.mu.Unlock()
	}
	limit := s.StartTimeout
	if limit <= 0 {
		limit = 90 * time.Second
	}
	for _, k := range h.t.LocalNodes() {
		if err := h.waitProxierHealthy(ctx, k, limit); err != nil {
			return err
		}
	}
	return nil
}

func (h *Host) waitProxierHealthy(ctx context.Context, k int, limit time.Duration) error {
	node := NodeName(k)
	h.mu.Lock()
	p := h.proxiers[node]
	h.mu.Unlock()
	ns := NodeNS(h.t.Prefix, k)
	tr := &http.Transport{DisableKeepAlives: true, DialContext: netlab.Dialer(ns, nil)}
	client := &http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.After(limit)
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", ProxierHealthzPort)
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.exited:
			return fmt.Errorf("proxier on %s exited (%v):\n%s", node, p.cmd.ProcessState, logs.Tail(p.log, 20))
		case <-deadline:
			return fmt.Errorf("proxier on %s not healthy after %s:\n%s", node, limit, logs.Tail(p.log, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ProxierMetrics scrapes a node's proxier from inside the node.
func (h *Host) ProxierMetrics(ctx context.Context, node string) (string, error) {
	k, err := h.nodeIndex(node)
	if err != nil {
		return "", err
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: netlab.Dialer(NodeNS(h.t.Prefix, k), nil)},
		Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", ProxierMetricsPort), nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("proxier metrics on %s: %w", node, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("proxier metrics on %s: %s", node, resp.Status)
	}
	return string(b), err
}

func (h *Host) nodeIndex(node string) (int, error) {
	for _, k := range h.t.LocalNodes() {
		if NodeName(k) == node {
			return k, nil
		}
	}
	return 0, fmt.Errorf("no node %q in this plane (it runs %d of the lab's %d)", node, len(h.t.LocalNodes()), h.t.Nodes)
}

// StopProxier stops one node's proxier and leaves its rules in place, as a
// crashed or upgraded proxier would.
func (h *Host) StopProxier(ctx context.Context, node string) error {
	h.mu.Lock()
	p := h.proxiers[node]
	delete(h.proxiers, node)
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no proxier runs on %q", node)
	}
	p.stop(10 * time.Second)
	return nil
}

// Probe runs a probe from one of the lab's namespaces.
func (h *Host) Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary {
	return probe.Run(ctx, t, n, timeout)
}

// OpenFlow opens the flow in this kernel.
func (h *Host) OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (cluster.Flow, error) {
	return probe.OpenFlow(ctx, ns, proto, dst, probe.FlowOpenTimeout)
}

// IPTables dumps the rules of one of the lab's namespaces.
func (h *Host) IPTables(ctx context.Context, ns string) (string, error) {
	return rules.IPTables(ns)
}

// Exec runs argv inside ns.
func (h *Host) Exec(ctx context.Context, ns string, argv []string) (string, error) {
	if len(argv) == 0 {
		return "", fmt.Errorf("exec: empty command")
	}
	var out []byte
	err := netlab.Do(ns, func() error {
		var err error
		out, err = exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), ns, err, out)
	}
	return string(out), nil
}

// Close stops proxiers, then backends.
func (h *Host) Close() error {
	h.mu.Lock()
	var procs []*process
	for _, p := range h.proxiers {
		procs = append(procs, p)
	}
	for _, p := range h.backends {
		procs = append(procs, p)
	}
	h.proxiers, h.backends = map[string]*process{}, map[string]*process{}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(10 * time.Second) }()
	}
	wg.Wait()
	return nil
}
