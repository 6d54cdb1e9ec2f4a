package ipvs

import (
	"errors"
	"maps"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// Node addresses used by the tests (198.18.0.0/24 is the node range).
var (
	node1 = netip.MustParseAddr("198.18.0.1")
	node2 = netip.MustParseAddr("198.18.0.2")
)

// env is a Proxier over fakes of everything it touches.
type env struct {
	p     *Proxier
	cfg   Config
	ipvs  *Fake
	links *FakeLinks
	ipt   *iptables.Fake
	sys   *FakeSysctl
	clock *clocktesting.FakePassiveClock
}

func newEnv(t *testing.T, mutate ...func(*Config)) *env {
	t.Helper()
	e := &env{
		ipvs: NewFake(), links: NewFakeLinks(node1), ipt: iptables.NewFake(), sys: NewFakeSysctl(),
		clock: clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	}
	e.cfg = Config{IPVS: e.ipvs, Links: e.links, IPTables: e.ipt, Sysctl: e.sys, Clock: e.clock, ClusterCIDR: testsnap.ClusterCIDR}
	for _, m := range mutate {
		m(&e.cfg)
	}
	e.restart(t)
	return e
}

// restart replaces the Proxier with a new one over the same kernel state,
// as a restarted process would see it.
func (e *env) restart(t *testing.T) {
	t.Helper()
	p, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
}

func (e *env) sync(t *testing.T, snap *core.Snapshot, c core.ChangeSet) {
	t.Helper()
	if err := e.p.Sync(snap, c); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

func (e *env) resetOps() {
	e.ipvs.ResetOps()
	e.links.Ops = nil
}

// resync syncs after forgetting the operations so far, so that the next
// checks see only this sync's.
func (e *env) resync(t *testing.T, snap *core.Snapshot, c core.ChangeSet) {
	t.Helper()
	e.resetOps()
	e.sync(t, snap, c)
}

// checkNoOps fails unless the last sync touched neither IPVS nor links.
func (e *env) checkNoOps(t *testing.T) {
	t.Helper()
	checkOps(t, "ipvs", e.ipvs.Ops, nil)
	checkOps(t, "links", e.links.Ops, nil)
}

func (e *env) vips(t *testing.T) []string {
	t.Helper()
	addrs, err := e.links.Addrs(DefaultDummyDevice)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

func fullSync() core.ChangeSet {
	return core.ChangeSet{Full: true, Services: sets.New[types.NamespacedName]()}
}

func partialSync(names ...string) core.ChangeSet {
	c := core.ChangeSet{Services: sets.New[types.NamespacedName]()}
	for _, n := range names {
		c.Services.Insert(types.NamespacedName{Namespace: "ns", Name: n})
	}
	return c
}

func checkDump(t *testing.T, f *Fake, want string) {
	t.Helper()
	want = strings.TrimLeft(want, "\n")
	if got := f.Dump(); got != want {
		t.Errorf("IPVS state:\n%s\nwant:\n%s", got, want)
	}
}

func checkOps(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s ops:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// webSnap: one ClusterIP service with two endpoints, and one NodePort
// service with an external IP.
func webSnap() (*testsnap.Builder, core.ServicePortName) {
	b := testsnap.New()
	web := b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.65.10:8080"}})
	b.Add(testsnap.Port{Name: "np", PortName: "http", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080,
		ExternalIPs: []string{"198.19.200.1"}, Endpoints: []string{"198.18.64.30:8080"}})
	b.Snap.Node = &core.NodeInfo{Name: "node-1", Addresses: []netip.Addr{node1, node2}}
	return b, web
}

func TestSysctlsSetBySyncNotByNew(t *testing.T) {
	e := newEnv(t)
	if len(e.sys.Values)+len(e.ipvs.Ops)+len(e.links.Ops)+len(e.ipt.Restores) != 0 {
		t.Fatalf("New changed kernel state: sysctls %v, %v %v %d restores", e.sys.Values, e.ipvs.Ops, e.links.Ops, len(e.ipt.Restores))
	}
	b, _ := webSnap()
	e.sync(t, b.Snap, fullSync())
	for _, want := range requiredSysctls {
		if got := e.sys.Values[want.name]; got != want.value {
			t.Errorf("%s = %q, want %q", want.name, got, want.value)
		}
	}
	if len(e.sys.Values) != len(requiredSysctls) {
		t.Errorf("set %d sysctls, want exactly %d: %v", len(e.sys.Values), len(requiredSysctls), e.sys.Values)
	}
	// Reset by someone else: the next full sync repairs it.
	e.sys.Values["net/ipv4/vs/conntrack"] = "0"
	e.sync(t, b.Snap, fullSync())
	if got := e.sys.Values["net/ipv4/vs/conntrack"]; got != "1" {
		t.Errorf("net/ipv4/vs/conntrack = %q after a full sync, want 1", got)
	}
}

func TestSchedulerValidation(t *testing.T) {
	for _, s := range []string{"rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq"} {
		e := newEnv(t, func(c *Config) { c.Scheduler = s })
		if e.p.Scheduler() != s {
			t.Errorf("Scheduler() = %q, want %q", e.p.Scheduler(), s)
		}
	}
	if e := newEnv(t); e.p.Scheduler() != "rr" {
		t.Errorf("default scheduler %q, want rr", e.p.Scheduler())
	}

	sys := NewFakeSysctl()
	_, err := New(Config{Scheduler: "fastest", IPVS: NewFake(), Links: NewFakeLinks(), IPTables: iptables.NewFake(), Sysctl: sys})
	if err == nil {
		t.Fatal("New accepted scheduler \"fastest\"")
	}
	for _, want := range append([]string{`"fastest"`}, Schedulers...) {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if len(sys.Values) != 0 {
		t.Errorf("a rejected config still set sysctls: %v", sys.Values)
	}
}

func TestSyncAddsVirtualServersVIPsAndRealServers(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30080 rr
  -> 198.18.64.30:8080 Masq 1 0 0
TCP 198.18.0.2:30080 rr
  -> 198.18.64.30:8080 Masq 1 0 0
TCP 198.19.0.10:80 rr
  -> 198.18.64.10:8080 Masq 1 0 0
  -> 198.18.65.10:8080 Masq 1 0 0
TCP 198.19.0.30:80 rr
  -> 198.18.64.30:8080 Masq 1 0 0
TCP 198.19.200.1:80 rr
  -> 198.18.64.30:8080 Masq 1 0 0
`)
	// Cluster and external IPs are bound; node addresses are not (they
	// are already local).
	if got, want := e.vips(t), []string{"198.19.0.10", "198.19.0.30", "198.19.200.1"}; !slices.Equal(got, want) {
		t.Errorf("VIPs on %s: %v, want %v", DefaultDummyDevice, got, want)
	}
	if e.links.Ops[0] != "add-dummy kube-ipvs0" {
		t.Errorf("first link op %q, want the dummy device created first", e.links.Ops[0])
	}
	if st := e.p.LastStats(); st.ServicesAdded != 5 || st.DestsAdded != 6 || st.AddrsBound != 3 || !st.RulesApplied {
		t.Errorf("stats %+v", st)
	}

	// A second full sync of the same snapshot changes nothing.
	e.resync(t, b.Snap, fullSync())
	e.checkNoOps(t)
}

// internalTrafficPolicy Local: the cluster IP's virtual server has this
// node's endpoints only (none where there are none, so IPVS refuses), the
// NodePort's every endpoint; the policy changing back rewrites it.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	e := newEnv(t)
	b := testsnap.New()
	mixed := b.Add(testsnap.Port{Name: "mixed", PortName: "http", ClusterIP: "198.19.0.40", Port: 80, NodePort: 30040, InternalLocal: true,
		Endpoints: []string{"198.18.64.40:8080"}, Remote: []string{"198.18.65.40:8080"}})
	b.Add(testsnap.Port{Name: "elsewhere", PortName: "http", ClusterIP: "198.19.0.41", Port: 80, InternalLocal: true,
		Remote: []string{"198.18.65.41:8080"}})
	b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{node1}}
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30040 rr
  -> 198.18.64.40:8080 Masq 1 0 0
  -> 198.18.65.40:8080 Masq 1 0 0
TCP 198.19.0.40:80 rr
  -> 198.18.64.40:8080 Masq 1 0 0
TCP 198.19.0.41:80 rr
`)
	b.Snap.Services[mixed].InternalLocal = false
	e.sync(t, b.Snap, partialSync("mixed"))
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30040 rr
  -> 198.18.64.40:8080 Masq 1 0 0
  -> 198.18.65.40:8080 Masq 1 0 0
TCP 198.19.0.40:80 rr
  -> 198.18.64.40:8080 Masq 1 0 0
  -> 198.18.65.40:8080 Masq 1 0 0
TCP 198.19.0.41:80 rr
`)
}

// externalTrafficPolicy Local: the NodePort and external-IP virtual
// servers have this node's endpoints only (none where there are none, so
// IPVS refuses) while the cluster IP keeps every endpoint, and outside
// traffic to them is not marked for SNAT. Partial syncs switching the
// policy either way rewrite both the real servers and the rules.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	e := newEnv(t)
	b := testsnap.New()
	both := b.Add(testsnap.Port{Name: "both", PortName: "http", ClusterIP: "198.19.0.50", Port: 80, NodePort: 30050,
		ExternalIPs: []string{"198.19.200.5"}, ExternalLocal: true,
		Endpoints: []string{"198.18.64.50:8080"}, Remote: []string{"198.18.65.50:8080"}})
	elsewhere := b.Add(testsnap.Port{Name: "elsewhere", PortName: "http", ClusterIP: "198.19.0.51", Port: 80, NodePort: 30051,
		ExternalLocal: true, Remote: []string{"198.18.65.51:8080"}})
	b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{node1}}
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30050 rr
  -> 198.18.64.50:8080 Masq 1 0 0
TCP 198.18.0.1:30051 rr
TCP 198.19.0.50:80 rr
  -> 198.18.64.50:8080 Masq 1 0 0
  -> 198.18.65.50:8080 Masq 1 0 0
TCP 198.19.0.51:80 rr
  -> 198.18.65.51:8080 Masq 1 0 0
TCP 198.19.200.5:80 rr
  -> 198.18.64.50:8080 Masq 1 0 0
`)
	client := netip.MustParseAddr("198.18.0.99")
	pod := netip.MustParseAddr("198.18.70.5")
	external := []iptables.Packet{
		{Protocol: "tcp", Src: client, Dst: node1, DstPort: 30050, LocalDst: true},
		{Protocol: "tcp", Src: client, Dst: node1, DstPort: 30051, LocalDst: true},
		{Protocol: "tcp", Src: client, Dst: netip.MustParseAddr("198.19.200.5"), DstPort: 80, LocalDst: true},
		// IPVS gives pods the same real servers, so they need no SNAT
		// either.
		{Protocol: "tcp", Src: pod, Dst: netip.MustParseAddr("198.19.200.5"), DstPort: 80, LocalDst: true},
	}
	checkMasq := func(want bool) {
		t.Helper()
		for _, pkt := range external {
			if got := masqueraded(t, e, "PREROUTING", pkt); got != want {
				t.Errorf("%s -> %s:%d marked for SNAT %t, want %t", pkt.Src, pkt.Dst, pkt.DstPort, got, want)
			}
		}
		// The cluster IP is not governed by the external policy.
		if !masqueraded(t, e, "PREROUTING", iptables.Packet{Protocol: "tcp", Src: client, Dst: netip.MustParseAddr("198.19.0.50"), DstPort: 80, LocalDst: true}) {
			t.Errorf("off-cluster client to the cluster IP not marked for SNAT")
		}
	}
	checkMasq(false)

	// Back to Cluster: the remote endpoints join, and SNAT is back.
	b.Snap.Services[both].ExternalLocal = false
	b.Snap.Services[elsewhere].ExternalLocal = false
	e.sync(t, b.Snap, partialSync("both", "elsewhere"))
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30050 rr
  -> 198.18.64.50:8080 Masq 1 0 0
  -> 198.18.65.50:8080 Masq 1 0 0
TCP 198.18.0.1:30051 rr
  -> 198.18.65.51:8080 Masq 1 0 0
TCP 198.19.0.50:80 rr
  -> 198.18.64.50:8080 Masq 1 0 0
  -> 198.18.65.50:8080 Masq 1 0 0
TCP 198.19.0.51:80 rr
  -> 198.18.65.51:8080 Masq 1 0 0
TCP 198.19.200.5:80 rr
  -> 198.18.64.50:8080 Masq 1 0 0
  -> 198.18.65.50:8080 Masq 1 0 0
`)
	checkMasq(true)

	// And Local again: the remote real servers of the external virtual
	// servers drain like any endpoint that stopped being usable there;
	// the cluster IP's stay.
	b.Snap.Services[both].ExternalLocal = true
	b.Snap.Services[elsewhere].ExternalLocal = true
	e.resync(t, b.Snap, partialSync("both", "elsewhere"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"update-dest TCP/198.19.200.5:80 198.18.65.50:8080 weight 0",
		"update-dest TCP/198.18.0.1:30050 198.18.65.50:8080 weight 0",
		"update-dest TCP/198.18.0.1:30051 198.18.65.51:8080 weight 0",
	})
	checkMasq(false)
}

// Under externalTrafficPolicy Local a node whose endpoints are all
// terminating serves external traffic from them, while the cluster IP
// uses the ready ones elsewhere; the hairpin rule covers the local one.
func TestExternalTrafficPolicyLocalFallsBackToTerminating(t *testing.T) {
	e := newEnv(t)
	b := testsnap.New()
	name := b.Add(testsnap.Port{Name: "draining", PortName: "http", ClusterIP: "198.19.0.52", Port: 80, NodePort: 30052,
		ExternalLocal: true, Endpoints: []string{"198.18.64.52:8080"}, Remote: []string{"198.18.65.52:8080"}})
	for i, ep := range b.Snap.Endpoints[name] {
		if ep.NodeName == testsnap.Node {
			b.Snap.Endpoints[name][i].Ready, b.Snap.Endpoints[name][i].Terminating = false, true
		}
	}
	b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{node1}}
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30052 rr
  -> 198.18.64.52:8080 Masq 1 0 0
TCP 198.19.0.52:80 rr
  -> 198.18.65.52:8080 Masq 1 0 0
`)
	if !strings.Contains(e.ipt.Dump(), "-s 198.18.64.52/32 -d 198.18.64.52/32") && !strings.Contains(e.ipt.Dump(), "-s 198.18.64.52 -d 198.18.64.52") {
		t.Errorf("no hairpin rule for the terminating local endpoint:\n%s", e.ipt.Dump())
	}
}

// A load balancer IP is served like an external IP: a virtual server with
// the Service's scheduling and external endpoints, bound to the dummy
// device, its traffic SNATed unless externalTrafficPolicy is Local; one
// without endpoints keeps its virtual server, so clients are refused.
func TestLoadBalancerIPs(t *testing.T) {
	e := newEnv(t)
	b := lbSnap()
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.18.0.1:30060 rr
  -> 198.18.64.60:8080 Masq 1 0 0
  -> 198.18.65.60:8080 Masq 1 0 0
TCP 198.18.0.1:30061 rr persistent 600
  -> 198.18.64.61:8443 Masq 1 0 0
  -> 198.18.65.61:8443 Masq 1 0 0
TCP 198.18.0.1:30062 rr
  -> 198.18.64.62:8080 Masq 1 0 0
TCP 198.18.0.1:30063 rr
TCP 198.19.0.60:80 rr
  -> 198.18.64.60:8080 Masq 1 0 0
  -> 198.18.65.60:8080 Masq 1 0 0
TCP 198.19.0.61:443 rr persistent 600
  -> 198.18.64.61:8443 Masq 1 0 0
  -> 198.18.65.61:8443 Masq 1 0 0
TCP 198.19.0.62:80 rr
  -> 198.18.64.62:8080 Masq 1 0 0
  -> 198.18.65.62:8080 Masq 1 0 0
TCP 198.19.0.63:80 rr
TCP 198.19.200.2:443 rr persistent 600
  -> 198.18.64.61:8443 Masq 1 0 0
  -> 198.18.65.61:8443 Masq 1 0 0
TCP 198.19.210.1:80 rr
  -> 198.18.64.60:8080 Masq 1 0 0
  -> 198.18.65.60:8080 Masq 1 0 0
TCP 198.19.210.2:443 rr persistent 600
  -> 198.18.64.61:8443 Masq 1 0 0
  -> 198.18.65.61:8443 Masq 1 0 0
TCP 198.19.210.3:80 rr
  -> 198.18.64.62:8080 Masq 1 0 0
TCP 198.19.210.4:80 rr
`)
	wantVIPs := []string{"198.19.0.60", "198.19.0.61", "198.19.0.62", "198.19.0.63", "198.19.200.2",
		"198.19.210.1", "198.19.210.2", "198.19.210.3", "198.19.210.4"}
	if got := e.vips(t); !slices.Equal(got, wantVIPs) {
		t.Errorf("VIPs on %s: %v, want %v", DefaultDummyDevice, got, wantVIPs)
	}
	for _, c := range []struct {
		src, dst netip.Addr
		port     uint16
		want     bool
	}{
		{stranger, lbOpen, 80, true},
		{inRange, lbFW, 443, true},
		{inRange, lbEmpty, 80, true},
		{inRange, lbLocal, 80, false},
		// IPVS gives pods the Local real servers too, so they need no
		// SNAT either.
		{netip.MustParseAddr("198.18.70.5"), lbLocal, 80, false},
	} {
		pkt := iptables.Packet{Protocol: "tcp", Src: c.src, Dst: c.dst, DstPort: c.port, LocalDst: true}
		if got := masqueraded(t, e, "PREROUTING", pkt); got != c.want {
			t.Errorf("%s -> %s:%d marked for SNAT %t, want %t", c.src, c.dst, c.port, got, c.want)
		}
	}
	traceFirewall(t, e, lbFirewallCases())

	// Same snapshot again: nothing to do.
	e.resync(t, b.Snap, fullSync())
	e.checkNoOps(t)
}

// Partial syncs follow a Service's load balancer IPs and source ranges as
// they change and remove all of it with the Service.
func TestLoadBalancerChanges(t *testing.T) {
	e := newEnv(t)
	b := lbSnap()
	e.sync(t, b.Snap, fullSync())
	svc := func(name, port string) *core.ServicePort {
		return b.Snap.Services[core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: name}, Port: port, Protocol: v1.ProtocolTCP}]
	}
	moved := netip.MustParseAddr("198.19.210.9")

	// The load balancer moves "open" to another IP.
	svc("open", "http").LoadBalancerIPs = []netip.Addr{moved}
	e.resync(t, b.Snap, partialSync("open"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"add-service TCP/198.19.210.9:80 rr",
		"add-dest TCP/198.19.210.9:80 198.18.64.60:8080 weight 1",
		"add-dest TCP/198.19.210.9:80 198.18.65.60:8080 weight 1",
		"delete-service TCP/198.19.210.1:80",
	})
	checkOps(t, "links", e.links.Ops, []string{"add-addr kube-ipvs0 198.19.210.9", "delete-addr kube-ipvs0 198.19.210.1"})
	if d := e.ipt.Dump(); strings.Contains(d, lbOpen.String()) || !strings.Contains(d, "-d 198.19.210.9/32 -p tcp -m tcp --dport 80") &&
		!strings.Contains(d, "-d 198.19.210.9 --dport 80") {
		t.Errorf("rules not moved from %s to %s:\n%s", lbOpen, moved, d)
	}
	traceFirewall(t, e, []fwCase{{name: "anyone to the moved load balancer IP", pkt: iptables.Packet{Protocol: "tcp", Src: stranger, Dst: moved, DstPort: 80, LocalDst: true}}})

	// New ranges for "fw": the former stranger is in, the former client
	// and the node are out, so the load balancer IP itself is too.
	svc("fw", "https").LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.130.0/24")}
	e.resync(t, b.Snap, partialSync("fw"))
	e.checkNoOps(t)
	if !e.p.LastStats().RulesApplied {
		t.Errorf("changed source ranges did not restore the rules")
	}
	tcp := func(src, dst netip.Addr, port uint16) iptables.Packet {
		return iptables.Packet{Protocol: "tcp", Src: src, Dst: dst, DstPort: port, LocalDst: true}
	}
	traceFirewall(t, e, []fwCase{
		{name: "newly allowed source", pkt: tcp(stranger, lbFW, 443)},
		{name: "no longer allowed source", pkt: tcp(inRange, lbFW, 443), dropped: true},
		{name: "the load balancer IP itself, node no longer in a range", pkt: tcp(lbFW, lbFW, 443), dropped: true},
		{name: "another Service keeps its ranges", pkt: tcp(stranger, lbLocal, 80), dropped: true},
	})

	// No ranges any more: every source is let through.
	svc("fw", "https").LoadBalancerSourceRanges = nil
	e.sync(t, b.Snap, partialSync("fw"))
	traceFirewall(t, e, []fwCase{
		{name: "any source, ranges removed", pkt: tcp(inRange, lbFW, 443)},
		{name: "another Service keeps its ranges", pkt: tcp(stranger, lbEmpty, 80), dropped: true},
	})
	if strings.Contains(e.ipt.Dump(), "ns/fw:https load balancer source range") {
		t.Errorf("source-range rules left for a Service without ranges:\n%s", e.ipt.Dump())
	}

	// "fw-local" is deleted: its virtual servers, VIPs and rules go,
	// firewall included.
	for name := range b.Snap.Services {
		if name.Name == "fw-local" {
			delete(b.Snap.Services, name)
			delete(b.Snap.Endpoints, name)
		}
	}
	e.resync(t, b.Snap, partialSync("fw-local"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"delete-service TCP/198.18.0.1:30062",
		"delete-service TCP/198.19.0.62:80",
		"delete-service TCP/198.19.210.3:80",
	})
	checkOps(t, "links", e.links.Ops, []string{"delete-addr kube-ipvs0 198.19.0.62", "delete-addr kube-ipvs0 198.19.210.3"})
	if d := e.ipt.Dump(); strings.Contains(d, "ns/fw-local:") || strings.Contains(d, lbLocal.String()) {
		t.Errorf("rules still mention the deleted Service:\n%s", d)
	}
	traceFirewall(t, e, []fwCase{
		{name: "the deleted Service's ranges are gone", pkt: tcp(stranger, lbLocal, 80)},
		{name: "the remaining Service's are not", pkt: tcp(stranger, lbEmpty, 80), dropped: true},
	})

	// The partial syncs ended where a full sync of the last state does.
	f := newEnv(t)
	f.sync(t, b.Snap, fullSync())
	if got, want := e.ipvs.Dump(), f.ipvs.Dump(); got != want {
		t.Errorf("IPVS after partial syncs:\n%s\nwant:\n%s", got, want)
	}
	if got, want := e.ipt.Dump(), f.ipt.Dump(); got != want {
		t.Errorf("rules after partial syncs:\n%s\nwant:\n%s", got, want)
	}
}

// masqueraded traces pkt through the nat table from chain and reports
// whether it leaves marked for SNAT.
func masqueraded(t *testing.T, e *env, chain string, pkt iptables.Packet) bool {
	t.Helper()
	out, err := e.ipt.Trace("nat", chain, pkt)
	if err != nil || len(out) != 1 || out[0].Verdict != "ACCEPT" {
		t.Errorf("%s -> %s:%d: outcomes %v (err %v), want one ACCEPT", pkt.Src, pkt.Dst, pkt.DstPort, out, err)
		return false
	}
	return out[0].Mark&0x4000 != 0
}

// Any sequence of partial syncs (once the real servers they quiesced have
// drained) ends where one full sync of the last state would, rules
// included: whole new random states, and states that only switch
// externalTrafficPolicy of some Services.
func TestRandomPartialSyncsMatchAFullSync(t *testing.T) {
	fresh := func(snap *core.Snapshot) (string, string) {
		e := newEnv(t)
		e.sync(t, snap, fullSync())
		return e.ipvs.Dump(), e.ipt.Dump()
	}
	for seed := int64(1); seed <= 40; seed++ {
		r := rand.New(rand.NewSource(seed))
		e := newEnv(t)
		prev := testsnap.Random(seed)
		e.sync(t, prev, fullSync())
		for step := int64(1); step <= 6; step++ {
			next := testsnap.Random(seed*100 + step)
			if step%2 == 1 {
				next = switchExternalPolicy(prev, r)
			}
			e.sync(t, next, changedServices(prev, next))
			// Nothing has connections in the fake, so the next sync
			// deletes whatever the previous one quiesced.
			e.sync(t, next, partialSync())
			wantIPVS, wantRules := fresh(next)
			if got := e.ipvs.Dump(); got != wantIPVS {
				t.Fatalf("seed %d step %d: partial syncs left IPVS:\n%s\nwant:\n%s", seed, step, got, wantIPVS)
			}
			if got := e.ipt.Dump(); got != wantRules {
				t.Fatalf("seed %d step %d: partial syncs left rules:\n%s\nwant:\n%s", seed, step, got, wantRules)
			}
			prev = next
		}
	}
}

// switchExternalPolicy returns a copy of snap in which about half of the
// externally reachable Services switch externalTrafficPolicy.
func switchExternalPolicy(snap *core.Snapshot, r *rand.Rand) *core.Snapshot {
	out := core.NewSnapshot()
	out.Node, out.NodeName = snap.Node, snap.NodeName
	maps.Copy(out.Endpoints, snap.Endpoints)
	flip := map[types.NamespacedName]bool{}
	for _, name := range snap.SortedServicePorts() {
		if _, seen := flip[name.NamespacedName]; !seen {
			flip[name.NamespacedName] = r.Intn(2) == 0
		}
		sp := *snap.Services[name]
		if flip[name.NamespacedName] && sp.ExternallyAccessible() {
			sp.ExternalLocal = !sp.ExternalLocal
		}
		out.Services[name] = &sp
	}
	return out
}

// changedServices is the ChangeSet the tracker would hand over from a to
// b: the Services whose ports or endpoints differ.
func changedServices(a, b *core.Snapshot) core.ChangeSet {
	c := partialSync()
	for _, s := range []*core.Snapshot{a, b} {
		for name := range s.Services {
			if !a.Services[name].Equal(b.Services[name]) || !slices.Equal(a.Endpoints[name], b.Endpoints[name]) {
				c.Services.Insert(name.NamespacedName)
			}
		}
	}
	return c
}

func TestNodePortAddressesFallBackToLocalAddresses(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	b.Snap.Node = nil // Node object not seen yet
	e.sync(t, b.Snap, fullSync())
	if !strings.Contains(e.ipvs.Dump(), "TCP 198.18.0.1:30080 rr") || strings.Contains(e.ipvs.Dump(), "198.18.0.2:30080") {
		t.Errorf("NodePort not on the local address 198.18.0.1 only:\n%s", e.ipvs.Dump())
	}

	e = newEnv(t, func(c *Config) { c.NodePortAddresses = []netip.Addr{node2} })
	b, _ = webSnap()
	e.sync(t, b.Snap, fullSync())
	if !strings.Contains(e.ipvs.Dump(), "TCP 198.18.0.2:30080 rr") || strings.Contains(e.ipvs.Dump(), "198.18.0.1:30080") {
		t.Errorf("NodePort not on the configured address 198.18.0.2 only:\n%s", e.ipvs.Dump())
	}
}

func TestOnlyUsableEndpointsBecomeRealServers(t *testing.T) {
	e := newEnv(t)
	b := testsnap.New()
	name := b.Add(testsnap.Port{Name: "web", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.64.11:8080", "198.18.64.12:8080"}})
	eps := b.Snap.Endpoints[name]
	eps[1].Ready = false                                                 // not ready, not serving: never used
	eps[2].Ready, eps[2].Serving, eps[2].Terminating = false, true, true // serving while terminating
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.19.0.10:80 rr
  -> 198.18.64.10:8080 Masq 1 0 0
`)
	// With no ready endpoint left, the serving-terminating one is used.
	eps[0].Ready = false
	e.sync(t, b.Snap, partialSync("web"))
	checkDump(t, e.ipvs, `
TCP 198.19.0.10:80 rr
  -> 198.18.64.10:8080 Masq 0 0 0
  -> 198.18.64.12:8080 Masq 1 0 0
`)
}

func TestSyncUpdatesAndDeletes(t *testing.T) {
	e := newEnv(t)
	b, web := webSnap()
	e.sync(t, b.Snap, fullSync())

	// One endpoint replaced: the new one is added, the old one quiesced.
	b.Snap.Endpoints[web] = []core.Endpoint{
		{IP: netip.MustParseAddr("198.18.64.10"), Port: 8080, Ready: true, Serving: true},
		{IP: netip.MustParseAddr("198.18.66.10"), Port: 8080, Ready: true, Serving: true},
	}
	e.resync(t, b.Snap, partialSync("web"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"add-dest TCP/198.19.0.10:80 198.18.66.10:8080 weight 1",
		"update-dest TCP/198.19.0.10:80 198.18.65.10:8080 weight 0",
	})
	if st := e.p.LastStats(); st.DestLists != 1 {
		t.Errorf("partial sync read the real servers of %d virtual servers, want 1 (only the changed service)", st.DestLists)
	}

	// The NodePort service is deleted: all its virtual servers go at once
	// and its VIPs are unbound. The quiesced real server of the other
	// service has no connections, so this later sync deletes it.
	np := core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "np"}, Port: "http", Protocol: v1.ProtocolTCP}
	delete(b.Snap.Services, np)
	delete(b.Snap.Endpoints, np)
	e.resync(t, b.Snap, partialSync("np"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"delete-dest TCP/198.19.0.10:80 198.18.65.10:8080",
		"delete-service TCP/198.18.0.1:30080",
		"delete-service TCP/198.18.0.2:30080",
		"delete-service TCP/198.19.0.30:80",
		"delete-service TCP/198.19.200.1:80",
	})
	checkOps(t, "links", e.links.Ops, []string{"delete-addr kube-ipvs0 198.19.0.30", "delete-addr kube-ipvs0 198.19.200.1"})
	if got := e.vips(t); !slices.Equal(got, []string{"198.19.0.10"}) {
		t.Errorf("VIPs %v, want only 198.19.0.10", got)
	}
	if strings.Contains(string(e.p.LastBatch()), "ns/np:http") || strings.Contains(e.ipt.Dump(), "ns/np:http") {
		t.Errorf("rules still mention the deleted service:\n%s", e.ipt.Dump())
	}

	// A port change of a service is a new virtual server plus a deleted one.
	b.Snap.Services[web].Port = 8000
	e.resync(t, b.Snap, partialSync("web"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"add-service TCP/198.19.0.10:8000 rr",
		"add-dest TCP/198.19.0.10:8000 198.18.64.10:8080 weight 1",
		"add-dest TCP/198.19.0.10:8000 198.18.66.10:8080 weight 1",
		"delete-service TCP/198.19.0.10:80",
	})
}

func TestSchedulerChangeUpdatesServiceInPlace(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	e.sync(t, b.Snap, fullSync())

	e.cfg.Scheduler = "wrr"
	e.restart(t)
	e.resync(t, b.Snap, fullSync())
	for _, op := range e.ipvs.Ops {
		if !strings.HasPrefix(op, "update-service ") || !strings.HasSuffix(op, " wrr") {
			t.Errorf("unexpected op %q: a scheduler change must update services in place, not recreate them or touch real servers", op)
		}
	}
	if len(e.ipvs.Ops) != 5 {
		t.Errorf("%d ops, want 5 service updates: %v", len(e.ipvs.Ops), e.ipvs.Ops)
	}
	if strings.Contains(e.ipvs.Dump(), " rr\n") {
		t.Errorf("a virtual server kept rr:\n%s", e.ipvs.Dump())
	}
}

func TestSessionAffinityIsPersistence(t *testing.T) {
	e := newEnv(t)
	b := testsnap.New()
	name := b.Add(testsnap.Port{Name: "sticky", ClusterIP: "198.19.0.20", Port: 443, Affinity: true, Timeout: 600,
		Endpoints: []string{"198.18.64.20:8443"}})
	e.sync(t, b.Snap, fullSync())
	checkDump(t, e.ipvs, `
TCP 198.19.0.20:443 rr persistent 600
  -> 198.18.64.20:8443 Masq 1 0 0
`)

	b.Snap.Services[name].StickyTimeoutSeconds = 60
	e.resync(t, b.Snap, partialSync("sticky"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{"update-service TCP/198.19.0.20:443 rr persistent 60"})

	b.Snap.Services[name].ClientIPAffinity = false
	e.resync(t, b.Snap, partialSync("sticky"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{"update-service TCP/198.19.0.20:443 rr"})
	checkDump(t, e.ipvs, `
TCP 198.19.0.20:443 rr
  -> 198.18.64.20:8443 Masq 1 0 0
`)
}

func TestRemovedEndpointIsQuiescedThenDeleted(t *testing.T) {
	vs := VSKey{Address: netip.MustParseAddr("198.19.0.10"), Protocol: ProtoTCP, Port: 80}
	gone := netip.MustParseAddrPort("198.18.65.10:8080")
	setup := func(t *testing.T) (*env, *testsnap.Builder) {
		e := newEnv(t, func(c *Config) { c.GracePeriod = time.Minute })
		b, web := webSnap()
		e.sync(t, b.Snap, fullSync())
		b.Snap.Endpoints[web] = b.Snap.Endpoints[web][:1] // 198.18.65.10 goes away
		e.resync(t, b.Snap, partialSync("web"))
		checkOps(t, "ipvs", e.ipvs.Ops, []string{"update-dest TCP/198.19.0.10:80 198.18.65.10:8080 weight 0"})
		return e, b
	}

	t.Run("deleted once idle", func(t *testing.T) {
		e, b := setup(t)
		if err := e.ipvs.SetConnections(vs, gone, 3, 1); err != nil {
			t.Fatal(err)
		}
		// Later syncs (even partial ones about other services) revisit it,
		// but keep it while connections are active.
		e.clock.SetTime(e.clock.Now().Add(30 * time.Second))
		e.resync(t, b.Snap, partialSync("np"))
		checkOps(t, "ipvs", e.ipvs.Ops, nil)
		if st := e.p.LastStats(); st.Quiescing != 1 {
			t.Errorf("Quiescing = %d, want 1", st.Quiescing)
		}
		if err := e.ipvs.SetConnections(vs, gone, 0, 2); err != nil {
			t.Fatal(err)
		}
		e.sync(t, b.Snap, partialSync())
		checkOps(t, "ipvs", e.ipvs.Ops, []string{"delete-dest TCP/198.19.0.10:80 198.18.65.10:8080"})
		if st := e.p.LastStats(); st.Quiescing != 0 || st.DestsDeleted != 1 {
			t.Errorf("stats after delete: %+v", st)
		}
	})

	t.Run("deleted after the grace period", func(t *testing.T) {
		e, b := setup(t)
		if err := e.ipvs.SetConnections(vs, gone, 3, 0); err != nil {
			t.Fatal(err)
		}
		e.clock.SetTime(e.clock.Now().Add(59 * time.Second))
		e.resync(t, b.Snap, fullSync())
		checkOps(t, "ipvs", e.ipvs.Ops, nil)
		e.clock.SetTime(e.clock.Now().Add(time.Second))
		e.sync(t, b.Snap, fullSync())
		checkOps(t, "ipvs", e.ipvs.Ops, []string{"delete-dest TCP/198.19.0.10:80 198.18.65.10:8080"})
	})

	t.Run("usable again before deletion", func(t *testing.T) {
		e, b := setup(t)
		_, web := webSnap()
		b.Snap.Endpoints[web] = append(b.Snap.Endpoints[web], core.Endpoint{IP: gone.Addr(), Port: int32(gone.Port()), Ready: true, Serving: true})
		e.resync(t, b.Snap, partialSync("web"))
		checkOps(t, "ipvs", e.ipvs.Ops, []string{"update-dest TCP/198.19.0.10:80 198.18.65.10:8080 weight 1"})
		e.resync(t, b.Snap, partialSync())
		checkOps(t, "ipvs", e.ipvs.Ops, nil)
	})

	t.Run("last endpoint", func(t *testing.T) {
		// A service left with no endpoints keeps its virtual server (so
		// clients are refused, not routed elsewhere) with its real
		// servers quiesced.
		e, b := setup(t)
		_, web := webSnap()
		delete(b.Snap.Endpoints, web)
		e.resync(t, b.Snap, partialSync("web"))
		checkOps(t, "ipvs", e.ipvs.Ops, []string{
			"update-dest TCP/198.19.0.10:80 198.18.64.10:8080 weight 0",
			"delete-dest TCP/198.19.0.10:80 198.18.65.10:8080",
		})
		if !strings.Contains(e.ipvs.Dump(), "TCP 198.19.0.10:80 rr\n  -> 198.18.64.10:8080 Masq 0 0 0\n") {
			t.Errorf("state:\n%s", e.ipvs.Dump())
		}
	})
}

func TestRemovedUDPEndpointIsDeletedAtOnce(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GracePeriod = time.Minute })
	b := testsnap.New()
	dns := b.Add(testsnap.Port{Name: "dns", PortName: "dns", Protocol: v1.ProtocolUDP, ClusterIP: "198.19.0.53", Port: 53,
		Endpoints: []string{"198.18.64.53:5353", "198.18.65.53:5353"}})
	b.Snap.Node = &core.NodeInfo{Name: "node-1", Addresses: []netip.Addr{node1, node2}}
	e.sync(t, b.Snap, fullSync())
	vs := VSKey{Address: netip.MustParseAddr("198.19.0.53"), Protocol: ProtoUDP, Port: 53}
	// A live UDP flow shows up as an inactive connection.
	if err := e.ipvs.SetConnections(vs, netip.MustParseAddrPort("198.18.65.53:5353"), 0, 1); err != nil {
		t.Fatal(err)
	}
	b.Snap.Endpoints[dns] = b.Snap.Endpoints[dns][:1]
	e.resync(t, b.Snap, partialSync("dns"))
	checkOps(t, "ipvs", e.ipvs.Ops, []string{"delete-dest UDP/198.19.0.53:53 198.18.65.53:5353"})
	if st := e.p.LastStats(); st.Quiescing != 0 || st.DestsDeleted != 1 {
		t.Errorf("stats: %+v", st)
	}
}

func TestRestartConvergesWithoutFlushing(t *testing.T) {
	e := newEnv(t)
	b, web := webSnap()
	e.sync(t, b.Snap, fullSync())
	before := e.ipvs.Dump()
	vs := VSKey{Address: netip.MustParseAddr("198.19.0.10"), Protocol: ProtoTCP, Port: 80}
	if err := e.ipvs.SetConnections(vs, netip.MustParseAddrPort("198.18.64.10:8080"), 5, 0); err != nil {
		t.Fatal(err)
	}

	// Same snapshot after a restart: nothing in IPVS or on the dummy
	// device is touched, so established connections keep their real
	// servers.
	e.restart(t)
	e.resync(t, b.Snap, fullSync())
	e.checkNoOps(t)
	if !strings.Contains(e.ipvs.Dump(), "198.18.64.10:8080 Masq 1 5 0") {
		t.Errorf("connection counts lost:\n%s", e.ipvs.Dump())
	}

	// Kernel state left by an older configuration: a stale virtual
	// server, a stale real server, a stale VIP, and a virtual server of
	// someone else in an excluded range.
	stale := VirtualServer{Address: netip.MustParseAddr("198.19.9.9"), Protocol: ProtoUDP, Port: 53, Scheduler: "rr"}
	foreign := VirtualServer{Address: netip.MustParseAddr("198.18.255.1"), Protocol: ProtoTCP, Port: 22, Scheduler: "sh"}
	for _, v := range []VirtualServer{stale, foreign} {
		if err := e.ipvs.NewService(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.ipvs.NewDestination(vs, RealServer{Address: netip.MustParseAddr("198.18.70.1"), Port: 8080, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.links.AddAddr(DefaultDummyDevice, stale.Address); err != nil {
		t.Fatal(err)
	}
	e.cfg.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24")}
	e.restart(t)
	e.resync(t, b.Snap, fullSync())
	checkOps(t, "ipvs", e.ipvs.Ops, []string{
		"update-dest TCP/198.19.0.10:80 198.18.70.1:8080 weight 0",
		"delete-service UDP/198.19.9.9:53",
	})
	checkOps(t, "links", e.links.Ops, []string{"delete-addr kube-ipvs0 198.19.9.9"})
	e.sync(t, b.Snap, partialSync())
	want := before + "" // the stale real server is gone on the next sync; the foreign service stays
	got := e.ipvs.Dump()
	if !strings.Contains(got, "TCP 198.18.255.1:22 sh\n") {
		t.Errorf("excluded virtual server was touched:\n%s", got)
	}
	got = strings.Replace(got, "TCP 198.18.255.1:22 sh\n", "", 1)
	got = strings.Replace(got, "Masq 1 5 0", "Masq 1 0 0", 1)
	if got != want {
		t.Errorf("after convergence:\n%s\nwant:\n%s", got, want)
	}
	_ = web
}

func TestFailedOperationsDoNotStopOtherServices(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	broken := VSKey{Address: netip.MustParseAddr("198.19.0.10"), Protocol: ProtoTCP, Port: 80}
	e.ipvs.Fail = func(op string, k VSKey) error {
		if op == "add-service" && k == broken {
			return syscall.ENOMEM
		}
		return nil
	}
	err := e.p.Sync(b.Snap, fullSync())
	if err == nil || !errors.Is(err, syscall.ENOMEM) || !strings.Contains(err.Error(), "198.19.0.10:80") {
		t.Fatalf("sync error %v, want one naming the failed virtual server", err)
	}
	if st := e.p.LastStats(); st.ServicesAdded != 4 {
		t.Errorf("added %d virtual servers, want the 4 that did not fail", st.ServicesAdded)
	}
	// The next sync is full even when the caller asks for a partial one,
	// and repairs the failed service.
	e.ipvs.Fail = nil
	e.sync(t, b.Snap, partialSync())
	if st := e.p.LastStats(); !st.Full || st.ServicesAdded != 1 {
		t.Errorf("retry stats %+v, want a full sync adding 1 service", st)
	}
	if !strings.Contains(e.ipvs.Dump(), "TCP 198.19.0.10:80 rr\n  -> 198.18.64.10:8080") {
		t.Errorf("state:\n%s", e.ipvs.Dump())
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	// Rules of the iptables mode in the same tables must survive.
	other, err := iptables.New(iptables.Config{Backend: e.ipt, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	otherRules := e.ipt.Dump()
	e.sync(t, b.Snap, fullSync())
	if !strings.Contains(e.ipt.Dump(), ChainPrefix) {
		t.Fatalf("no %s rules after sync:\n%s", ChainPrefix, e.ipt.Dump())
	}
	if err := e.p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if d := e.ipvs.Dump(); d != "" {
		t.Errorf("virtual servers left:\n%s", d)
	}
	if _, ok := e.links.Dummies[DefaultDummyDevice]; ok {
		t.Errorf("%s not deleted", DefaultDummyDevice)
	}
	if got := e.ipt.Dump(); got != otherRules {
		t.Errorf("rules after cleanup:\n%s\nwant the iptables mode's rules only:\n%s", got, otherRules)
	}
	// Cleaning up twice is fine, and a sync afterwards rebuilds it all.
	if err := CleanupLeftovers(Config{IPVS: e.ipvs, Links: e.links, IPTables: e.ipt}); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
	e.sync(t, b.Snap, partialSync())
	if st := e.p.LastStats(); !st.Full || st.ServicesAdded != 5 || st.AddrsBound != 3 {
		t.Errorf("sync after cleanup: %+v", st)
	}
}
