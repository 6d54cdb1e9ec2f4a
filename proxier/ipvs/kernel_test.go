package ipvs

// Real-kernel tests. Each one runs on a thread moved into a scratch network
// namespace (never the host's), builds a Proxier on the real IPVS, netlink,
// /proc/sys and iptables there, and reads the kernel's state back through
// independent handles. They need root and a kernel with ip_vs, dummy and
// veth; requireIPVS decides whether they can run here.

import (
	"bufio"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/uml"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// requireIPVS skips the test unless a scratch network namespace on this
// kernel has IPVS. It is the only place that decides where the kernel
// tests run.
// ranInGuest re-runs the calling test inside a user-mode Linux guest when
// the host kernel has no ip_vs, and reports whether it did (the guest's
// verdict is then the test's, and the caller must return).
func ranInGuest(t *testing.T) bool {
	t.Helper()
	has := false
	netnstest.Run(t, iptables.OSExec{}, func(*netnstest.Guarded) { has = HasIPVS() })
	if has {
		return false
	}
	if uml.InGuest() {
		t.Fatal("running inside the UML guest, yet no ip_vs: the guest failed to load it")
	}
	return uml.RunTestInGuest(t, 30*time.Minute) // a bound; the scale test takes minutes
}

// kernelVariant picks the iptables flavour for kernel tests: $PROXIER_IPTABLES
// when set, else legacy (the only one that works inside the UML lab).
func kernelVariant(t *testing.T) iptables.Variant {
	t.Helper()
	v := iptables.VariantLegacy
	if env := os.Getenv(iptables.EnvVariant); env != "" {
		var err error
		if v, err = iptables.ParseVariant(env); err != nil || v == iptables.VariantAuto {
			t.Fatalf("$%s=%q: want nft or legacy", iptables.EnvVariant, env)
		}
	}
	if _, err := exec.LookPath(fmt.Sprintf("iptables-%s-restore", v)); err != nil {
		t.Skipf("iptables-%s-restore not installed", v)
	}
	return v
}

// node is the scratch namespace a kernel test runs in, set up as a node:
// lo up, an uplink with a node address, and a route to the pod CIDR (IPVS
// refuses real servers it has no unicast route to).
type node struct {
	t     *testing.T
	ns    netns.NsHandle
	ipt   *iptables.Backend
	nl    *netlink.Handle
	check *mobyipvs.Handle // an independent view of IPVS
}

const uplink = "pm-up0"

// inNode runs fn in a fresh node namespace. fn runs on a locked thread
// that is not the test goroutine: report with t.Error and return.
func inNode(t *testing.T, fn func(n *node)) {
	t.Helper()
	if ranInGuest(t) {
		return
	}
	v := kernelVariant(t)
	netnstest.Run(t, iptables.OSExec{}, func(ex *netnstest.Guarded) {
		n := &node{t: t}
		var err error
		if n.ns, err = netns.Get(); err != nil {
			t.Error(err)
			return
		}
		defer n.ns.Close()
		if n.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
			t.Error(err)
			return
		}
		defer n.nl.Close()
		if err := n.setupUplink(); err != nil {
			t.Errorf("setting up the node namespace: %v", err)
			return
		}
		if n.ipt, err = iptables.NewBackend(ex, v); err != nil {
			t.Error(err)
			return
		}
		if n.check, err = mobyipvs.New(""); err != nil {
			t.Error(err)
			return
		}
		defer n.check.Close()
		fn(n)
	})
}

func (n *node) setupUplink() error {
	lo, err := n.nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := n.nl.LinkSetUp(lo); err != nil {
		return err
	}
	la := netlink.NewLinkAttrs()
	la.Name = uplink
	if err := n.nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: uplink + "p"}); err != nil {
		return fmt.Errorf("creating veth: %w", err)
	}
	for _, name := range []string{uplink, uplink + "p"} {
		l, err := n.nl.LinkByName(name)
		if err != nil {
			return err
		}
		if err := n.nl.LinkSetUp(l); err != nil {
			return err
		}
	}
	up, err := n.nl.LinkByName(uplink)
	if err != nil {
		return err
	}
	addr, _ := netlink.ParseAddr(node1.String() + "/24")
	if err := n.nl.AddrAdd(up, addr); err != nil {
		return err
	}
	_, pods, _ := net.ParseCIDR(testsnap.ClusterCIDR.String())
	return n.nl.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: pods, Gw: net.ParseIP("198.18.0.254")})
}

// newProxier builds a Proxier on the real kernel of the node namespace.
func (n *node) newProxier(sched string) (*Proxier, bool) {
	k, err := NewKernel()
	if err != nil {
		n.t.Errorf("NewKernel: %v", err)
		return nil, false
	}
	l, err := NewNetlink()
	if err != nil {
		n.t.Errorf("NewNetlink: %v", err)
		return nil, false
	}
	p, err := New(Config{Scheduler: sched, IPVS: k, Links: l, IPTables: n.ipt, ClusterCIDR: testsnap.ClusterCIDR, GracePeriod: time.Minute})
	if err != nil {
		n.t.Errorf("New: %v", err)
		return nil, false
	}
	return p, true
}

func (n *node) sync(p *Proxier, snap *core.Snapshot, c core.ChangeSet) bool {
	n.t.Helper()
	if err := p.Sync(snap, c); err != nil {
		n.t.Errorf("sync: %v", err)
		return false
	}
	return true
}

// kernelServices lists IPVS through the independent handle, keyed like
// "TCP/198.19.0.10:80".
func (n *node) kernelServices() map[string]*mobyipvs.Service {
	svcs, err := n.check.GetServices()
	if err != nil {
		n.t.Errorf("listing IPVS services: %v", err)
		return nil
	}
	out := map[string]*mobyipvs.Service{}
	for _, s := range svcs {
		a, _ := netip.AddrFromSlice(s.Address)
		out[VSKey{Address: a.Unmap(), Protocol: s.Protocol, Port: s.Port}.String()] = s
	}
	return out
}

// kernelDests renders the real servers of s as sorted "ip:port w=N fwd=F".
func (n *node) kernelDests(s *mobyipvs.Service) []string {
	ds, err := n.check.GetDestinations(s)
	if err != nil {
		n.t.Errorf("listing destinations: %v", err)
		return nil
	}
	var out []string
	for _, d := range ds {
		a, _ := netip.AddrFromSlice(d.Address)
		out = append(out, fmt.Sprintf("%s w=%d fwd=%d", netip.AddrPortFrom(a.Unmap(), d.Port), d.Weight, d.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask))
	}
	slices.Sort(out)
	return out
}

// dummyAddrs returns "addr/len scope" for each address on kube-ipvs0, or
// nil when the device does not exist.
func (n *node) dummyAddrs() []string {
	l, err := n.nl.LinkByName(DefaultDummyDevice)
	if err != nil {
		return nil
	}
	if l.Type() != "dummy" {
		n.t.Errorf("%s is a %s device", DefaultDummyDevice, l.Type())
	}
	addrs, err := n.nl.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		n.t.Error(err)
		return nil
	}
	var out []string
	for _, a := range addrs {
		out = append(out, fmt.Sprintf("%s %d", a.IPNet, a.Scope))
	}
	slices.Sort(out)
	return out
}

// isLocal reports whether the kernel would deliver traffic for a locally.
func (n *node) isLocal(a string) bool {
	routes, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
	if err != nil {
		n.t.Error(err)
		return false
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.IP.String() == a && r.Type == unix.RTN_LOCAL {
			return true
		}
	}
	return false
}

func (n *node) rules() string {
	b, err := n.ipt.Save()
	if err != nil {
		n.t.Errorf("iptables-save: %v", err)
	}
	return string(b)
}

func kernelSnap() (*testsnap.Builder, core.ServicePortName, core.ServicePortName) {
	b := testsnap.New()
	web := b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.65.10:8080"}})
	sticky := b.Add(testsnap.Port{Name: "sticky", ClusterIP: "198.19.0.20", Port: 443, Affinity: true, Timeout: 600,
		Endpoints: []string{"198.18.64.20:8443"}})
	b.Add(testsnap.Port{Name: "np", PortName: "http", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080,
		ExternalIPs: []string{"198.19.200.1"}, Endpoints: []string{"198.18.64.30:8080"}})
	b.Add(testsnap.Port{Name: "dns", PortName: "dns", Protocol: "UDP", ClusterIP: "198.19.0.53", Port: 53,
		Endpoints: []string{"198.18.64.53:53"}})
	b.Snap.Node = &core.NodeInfo{Name: "node-1", Addresses: []netip.Addr{node1}}
	return b, web, sticky
}

// TestKernelSyncProgramsIPVS checks, against the real kernel, everything a
// sync creates and that later syncs update, quiesce and delete in place.
func TestKernelSyncProgramsIPVS(t *testing.T) {
	inNode(t, func(n *node) {
		p, ok := n.newProxier("rr")
		if !ok {
			return
		}
		defer p.Cleanup()
		b, web, sticky := kernelSnap()
		if !n.sync(p, b.Snap, fullSync()) {
			return
		}
		for _, want := range requiredSysctls {
			if got, err := (ProcSysctl{}).Get(want.name); err != nil || got != want.value {
				t.Errorf("sysctl %s = %q (%v), want %q", want.name, got, err, want.value)
			}
		}
		svcs := n.kernelServices()
		var keys []string
		for k := range svcs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		wantKeys := []string{"TCP/198.18.0.1:30080", "TCP/198.19.0.10:80", "TCP/198.19.0.20:443", "TCP/198.19.0.30:80", "TCP/198.19.200.1:80", "UDP/198.19.0.53:53"}
		if !slices.Equal(keys, wantKeys) {
			t.Errorf("virtual servers %v, want %v", keys, wantKeys)
		}
		if s := svcs["TCP/198.19.0.10:80"]; s != nil {
			if s.SchedName != "rr" || s.Flags&flagPersistent != 0 {
				t.Errorf("web: scheduler %q flags %#x, want rr without persistence", s.SchedName, s.Flags)
			}
			want := []string{"198.18.64.10:8080 w=1 fwd=0", "198.18.65.10:8080 w=1 fwd=0"}
			if got := n.kernelDests(s); !slices.Equal(got, want) {
				t.Errorf("web real servers %v, want %v (fwd 0 = masquerade)", got, want)
			}
		}
		if s := svcs["TCP/198.19.0.20:443"]; s != nil && (s.Flags&flagPersistent == 0 || s.Timeout != 600) {
			t.Errorf("sticky: flags %#x timeout %d, want persistent 600", s.Flags, s.Timeout)
		}
		wantAddrs := []string{"198.19.0.10/32 254", "198.19.0.20/32 254", "198.19.0.30/32 254", "198.19.0.53/32 254", "198.19.200.1/32 254"}
		if got := n.dummyAddrs(); !slices.Equal(got, wantAddrs) {
			t.Errorf("addresses on %s: %v, want %v (scope 254 = host)", DefaultDummyDevice, got, wantAddrs)
		}
		if !n.isLocal("198.19.0.10") {
			t.Errorf("no local route for the VIP 198.19.0.10: the node would not accept its traffic")
		}
		if r := n.rules(); !strings.Contains(r, "-j "+servicesChain) || !strings.Contains(r, "198.19.0.10/32") {
			t.Errorf("iptables rules missing:\n%s", r)
		}

		// Scheduler change and restart: services updated in place, real
		// servers untouched, and a second sync is a no-op.
		p2, ok := n.newProxier("wrr")
		if !ok {
			return
		}
		if !n.sync(p2, b.Snap, fullSync()) {
			return
		}
		if st := p2.LastStats(); st.ServicesAdded+st.ServicesDeleted+st.DestsAdded+st.DestsDeleted+st.DestsQuiesced != 0 || st.ServicesUpdated != 6 {
			t.Errorf("restart with wrr: %+v, want 6 updates and nothing else", st)
		}
		for k, s := range n.kernelServices() {
			if s.SchedName != "wrr" {
				t.Errorf("%s scheduler %q after switching to wrr", k, s.SchedName)
			}
		}
		if !n.sync(p2, b.Snap, fullSync()) {
			return
		}
		if st := p2.LastStats(); st.ServicesUpdated != 0 || st.DestsUpdated != 0 {
			t.Errorf("kernel state did not read back as written (flags, timeout, scheduler?): %+v", st)
		}
		p = p2

		// Endpoint removed: weight 0 now, gone on a later sync.
		b.Snap.Endpoints[web] = b.Snap.Endpoints[web][:1]
		if !n.sync(p, b.Snap, partialSync("web")) {
			return
		}
		s := n.kernelServices()["TCP/198.19.0.10:80"]
		if got, want := n.kernelDests(s), []string{"198.18.64.10:8080 w=1 fwd=0", "198.18.65.10:8080 w=0 fwd=0"}; !slices.Equal(got, want) {
			t.Errorf("after removing an endpoint: %v, want %v", got, want)
		}
		if !n.sync(p, b.Snap, partialSync()) {
			return
		}
		if got, want := n.kernelDests(s), []string{"198.18.64.10:8080 w=1 fwd=0"}; !slices.Equal(got, want) {
			t.Errorf("idle quiesced real server not deleted: %v", got)
		}

		// Affinity off.
		b.Snap.Services[sticky].ClientIPAffinity = false
		if !n.sync(p, b.Snap, partialSync("sticky")) {
			return
		}
		if s := n.kernelServices()["TCP/198.19.0.20:443"]; s == nil || s.Flags&flagPersistent != 0 {
			t.Errorf("sticky still persistent: %+v", s)
		}

		// Service deleted: no virtual server, no VIP, no rule.
		delete(b.Snap.Services, web)
		delete(b.Snap.Endpoints, web)
		if !n.sync(p, b.Snap, partialSync("web")) {
			return
		}
		if _, ok := n.kernelServices()["TCP/198.19.0.10:80"]; ok {
			t.Errorf("virtual server of the deleted service remains")
		}
		if slices.Contains(n.dummyAddrs(), "198.19.0.10/32 254") || n.isLocal("198.19.0.10") {
			t.Errorf("VIP of the deleted service still bound")
		}
		if r := n.rules(); strings.Contains(r, "198.19.0.10") || strings.Contains(r, "ns/web") {
			t.Errorf("rules still mention the deleted service:\n%s", r)
		}

		// Cleanup leaves nothing.
		if err := p.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if svcs := n.kernelServices(); len(svcs) != 0 {
			t.Errorf("virtual servers left after cleanup: %v", svcs)
		}
		if _, err := n.nl.LinkByName(DefaultDummyDevice); err == nil {
			t.Errorf("%s left after cleanup", DefaultDummyDevice)
		}
		if r := n.rules(); strings.Contains(r, ChainPrefix) {
			t.Errorf("rules left after cleanup:\n%s", r)
		}
	})
}

// pod is a namespace behind a veth with one TCP server that answers each
// line it reads with its name.
type pod struct {
	name string
	ns   netns.NsHandle
	ln   net.Listener
}

// addPod creates a pod namespace at ip, linked to the node by a veth. It
// must run on the node's locked thread and leaves the thread there.
func (n *node) addPod(name string, ip netip.Addr, port int) (*pod, error) {
	podNS, err := netns.New() // moves the thread into the pod...
	if err != nil {
		return nil, err
	}
	if err := netns.Set(n.ns); err != nil { // ...and back to the node
		return nil, err
	}
	p := &pod{name: name, ns: podNS}
	hostIf := "pm-" + name
	la := netlink.NewLinkAttrs()
	la.Name = hostIf
	if err := n.nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(podNS)}); err != nil {
		return nil, fmt.Errorf("veth for %s: %w", name, err)
	}
	h, err := n.nl.LinkByName(hostIf)
	if err != nil {
		return nil, err
	}
	// The node side holds the pod gateway address, so that ARP for it is
	// answered even with arp_ignore=1.
	gw, _ := netlink.ParseAddr("198.18.64.1/32")
	if err := n.nl.AddrAdd(h, gw); err != nil {
		return nil, err
	}
	if err := n.nl.LinkSetUp(h); err != nil {
		return nil, err
	}
	if err := n.nl.RouteAdd(&netlink.Route{LinkIndex: h.Attrs().Index, Dst: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, err
	}
	ph, err := netlink.NewHandleAt(podNS, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer ph.Close()
	for _, ifname := range []string{"lo", "eth0"} {
		l, err := ph.LinkByName(ifname)
		if err != nil {
			return nil, err
		}
		if err := ph.LinkSetUp(l); err != nil {
			return nil, err
		}
	}
	eth0, _ := ph.LinkByName("eth0")
	a, _ := netlink.ParseAddr(ip.String() + "/32")
	if err := ph.AddrAdd(eth0, a); err != nil {
		return nil, err
	}
	gwIP := net.ParseIP("198.18.64.1")
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: &net.IPNet{IP: gwIP, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, err
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gwIP}); err != nil {
		return nil, err
	}
	// The listening socket belongs to the namespace it is created in.
	if err := netns.Set(podNS); err != nil {
		return nil, err
	}
	p.ln, err = net.Listen("tcp", netip.AddrPortFrom(ip, uint16(port)).String())
	if serr := netns.Set(n.ns); serr != nil {
		return nil, serr
	}
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.TrimSpace(line) == "peer" {
						// Whether the client was source-NATed shows
						// only here, in the address the pod sees.
						fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
						continue
					}
					fmt.Fprintf(c, "%s\n", name)
				}
			}()
		}
	}()
	return p, nil
}

func (p *pod) close() {
	p.ln.Close()
	p.ns.Close()
}

// ask connects from the node namespace (the calling locked thread) and
// returns the answering pod's name.
func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return roundTrip(c)
}

// askPeer is ask, answered with "name client-address" as the pod sees it.
func askPeer(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return request(c, "peer")
}

func roundTrip(c net.Conn) (string, error) { return request(c, "who") }

func request(c net.Conn, what string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, what); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestKernelTraffic sends connections through the real IPVS: the VIP
// answers, rr alternates between real servers, persistence pins a client,
// an established connection survives a proxier restart, and a NodePort
// under externalTrafficPolicy Local reaches only this node's pod without
// SNAT.
func TestKernelTraffic(t *testing.T) {
	inNode(t, func(n *node) {
		var pods []*pod
		defer func() {
			for _, p := range pods {
				p.close()
			}
		}()
		for i, name := range []string{"a", "b"} {
			p, err := n.addPod(name, netip.MustParseAddr(fmt.Sprintf("198.18.64.%d", 10+i)), 8080)
			if err != nil {
				t.Errorf("creating pod %s: %v", name, err)
				return
			}
			pods = append(pods, p)
		}
		px, ok := n.newProxier("rr")
		if !ok {
			return
		}
		defer px.Cleanup()
		b := testsnap.New()
		web := b.Add(testsnap.Port{Name: "web", ClusterIP: "198.19.0.10", Port: 80, Endpoints: []string{"198.18.64.10:8080", "198.18.64.11:8080"}})
		if !n.sync(px, b.Snap, fullSync()) {
			return
		}

		var got []string
		for i := 0; i < 6; i++ {
			name, err := ask("198.19.0.10:80")
			if err != nil {
				t.Errorf("connection %d to the VIP: %v\nIPVS and rules:\n%s", i, err, n.rules())
				return
			}
			got = append(got, name)
		}
		for i := 1; i < len(got); i++ {
			if got[i] == got[i-1] {
				t.Errorf("rr answered %v: want strict alternation", got)
				break
			}
		}

		b.Snap.Services[web].ClientIPAffinity = true
		b.Snap.Services[web].StickyTimeoutSeconds = 600
		if !n.sync(px, b.Snap, partialSync("web")) {
			return
		}
		first, err := ask("198.19.0.10:80")
		if err != nil {
			t.Errorf("persistent VIP: %v", err)
			return
		}
		for i := 0; i < 4; i++ {
			if name, err := ask("198.19.0.10:80"); err != nil || name != first {
				t.Errorf("persistence: connection %d went to %q (%v), want %q", i, name, err, first)
			}
		}

		// An established connection survives a restart: hold one open,
		// restart and sync, then read through it.
		b.Snap.Services[web].ClientIPAffinity = false
		if !n.sync(px, b.Snap, partialSync("web")) {
			return
		}
		held, err := net.DialTimeout("tcp", "198.19.0.10:80", 3*time.Second)
		if err != nil {
			t.Errorf("dial: %v", err)
			return
		}
		defer held.Close()
		before, err := roundTrip(held)
		if err != nil {
			t.Errorf("held connection before restart: %v", err)
			return
		}
		px2, ok := n.newProxier("rr")
		if !ok {
			return
		}
		if !n.sync(px2, b.Snap, fullSync()) {
			return
		}
		if after, err := roundTrip(held); err != nil || after != before {
			t.Errorf("held connection after restart answered %q (%v), want %q from the same pod", after, err, before)
		}
		if st := px2.LastStats(); st.ServicesAdded+st.ServicesDeleted+st.DestsDeleted+st.DestsQuiesced != 0 {
			t.Errorf("restart changed IPVS: %+v", st)
		}

		// externalTrafficPolicy Local, with pod b standing for an endpoint
		// on another node: the node's own connections to the NodePort
		// (not source-NATed under this policy either) reach pod a only,
		// from the node's address; where the node has no endpoint the
		// NodePort refuses.
		np := b.Add(testsnap.Port{Name: "np", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080, ExternalLocal: true,
			Endpoints: []string{"198.18.64.10:8080"}, Remote: []string{"198.18.64.11:8080"}})
		b.Add(testsnap.Port{Name: "elsewhere", ClusterIP: "198.19.0.31", Port: 80, NodePort: 30081, ExternalLocal: true,
			Remote: []string{"198.18.64.11:8080"}})
		b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{node1}}
		if !n.sync(px2, b.Snap, partialSync("np", "elsewhere")) {
			return
		}
		nodePort := netip.AddrPortFrom(node1, 30080).String()
		for i := 0; i < 4; i++ {
			if got, err := askPeer(nodePort); err != nil || got != "a "+node1.String() {
				t.Errorf("Local NodePort, connection %d: answered %q (%v), want pod a seeing %s\n%s", i, got, err, node1, n.rules())
			}
		}
		if got, err := ask(netip.AddrPortFrom(node1, 30081).String()); err == nil {
			t.Errorf("Local NodePort without a local endpoint answered %q, want the connection refused", got)
		}
		// Cluster: both pods, masqueraded to the node's address towards
		// them.
		b.Snap.Services[np].ExternalLocal = false
		if !n.sync(px2, b.Snap, partialSync("np")) {
			return
		}
		seen := map[string]bool{}
		for i := 0; i < 4; i++ {
			got, err := askPeer(nodePort)
			if err != nil {
				t.Errorf("Cluster NodePort, connection %d: %v", i, err)
				continue
			}
			seen[got] = true
		}
		if want := map[string]bool{"a 198.18.64.1": true, "b 198.18.64.1": true}; !maps.Equal(seen, want) {
			t.Errorf("Cluster NodePort answered %v, want both pods seeing the masqueraded 198.18.64.1", seen)
		}
	})
}

func TestMain(m *testing.M) {
	agent.Init() // the UML launcher is this binary re-executed
	os.Exit(m.Run())
}
