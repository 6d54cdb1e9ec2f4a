package ipvs

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/proxymodes/proxymodes/harness/golden"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden.Check(t, name+".golden", got)
}

// goldenCases are snapshots whose whole first-sync iptables batch is kept
// in testdata.
var goldenCases = []struct {
	name string
	cfg  func(*Config)
	snap func() *testsnap.Builder
}{
	{"cluster-cidr", nil, func() *testsnap.Builder {
		b := testsnap.New()
		b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
			Endpoints: []string{"198.18.64.10:8080", "198.18.65.10:8080"}})
		b.Add(testsnap.Port{Name: "np", PortName: "http", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080,
			ExternalIPs: []string{"198.19.200.1"}, Endpoints: []string{"198.18.64.30:8080"}})
		b.Add(testsnap.Port{Name: "dns", PortName: "dns", Protocol: v1.ProtocolUDP, ClusterIP: "198.19.0.53", Port: 53,
			Endpoints: []string{"198.18.64.53:53"}})
		b.Add(testsnap.Port{Name: "empty", ClusterIP: "198.19.0.99", Port: 80})
		return b
	}},
	{"external-local", nil, func() *testsnap.Builder {
		b := testsnap.New()
		b.Add(testsnap.Port{Name: "local", PortName: "http", ClusterIP: "198.19.0.50", Port: 80, NodePort: 30050,
			ExternalIPs: []string{"198.19.200.5"}, ExternalLocal: true,
			Endpoints: []string{"198.18.64.50:8080"}, Remote: []string{"198.18.65.50:8080"}})
		b.Add(testsnap.Port{Name: "cluster", PortName: "http", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080,
			ExternalIPs: []string{"198.19.200.1"}, Endpoints: []string{"198.18.64.30:8080"}})
		return b
	}},
	{"load-balancer", nil, func() *testsnap.Builder { return lbSnap() }},
	{"masquerade-all", func(c *Config) { c.MasqueradeAll = true }, func() *testsnap.Builder {
		b := testsnap.New()
		b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80, Endpoints: []string{"198.18.64.10:8080"}})
		return b
	}},
	{"no-cluster-cidr", func(c *Config) { c.ClusterCIDR = netip.Prefix{} }, func() *testsnap.Builder {
		b := testsnap.New()
		b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80, Endpoints: []string{"198.18.64.10:8080"}})
		return b
	}},
}

func TestGoldenRules(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			var mut []func(*Config)
			if tc.cfg != nil {
				mut = append(mut, tc.cfg)
			}
			e := newEnv(t, mut...)
			b := tc.snap()
			e.sync(t, b.Snap, fullSync())
			checkGolden(t, tc.name, e.p.LastBatch())

			// A second full sync over the rules the first one left finds
			// the jumps in place and converges to the same tables.
			before := e.ipt.Dump()
			e.sync(t, b.Snap, fullSync())
			if strings.Contains(string(e.p.LastBatch()), "-I ") || strings.Contains(string(e.p.LastBatch()), "-D ") {
				t.Errorf("second full sync rewrote jump rules:\n%s", e.p.LastBatch())
			}
			if after := e.ipt.Dump(); after != before {
				t.Errorf("second full sync changed the tables:\n%s\nvs\n%s", after, before)
			}
		})
	}
}

func TestPartialSyncSkipsUnchangedRules(t *testing.T) {
	e := newEnv(t)
	b, web := webSnap()
	e.sync(t, b.Snap, fullSync())
	n := len(e.ipt.Restores)
	// Nothing changed: no iptables-restore.
	e.sync(t, b.Snap, partialSync("web"))
	if len(e.ipt.Restores) != n || e.p.LastStats().RulesApplied {
		t.Errorf("partial sync with unchanged rules ran iptables-restore")
	}
	// A new endpoint adds a hairpin rule, so the rules are restored.
	b.Snap.Endpoints[web] = append(b.Snap.Endpoints[web], b.Snap.Endpoints[web][0])
	b.Snap.Endpoints[web][2].IP = netip.MustParseAddr("198.18.66.10")
	e.sync(t, b.Snap, partialSync("web"))
	if len(e.ipt.Restores) != n+1 || !strings.Contains(e.ipt.Dump(), "-s 198.18.66.10/32 -d 198.18.66.10/32") &&
		!strings.Contains(e.ipt.Dump(), "-s 198.18.66.10 -d 198.18.66.10") {
		t.Errorf("new endpoint's hairpin rule not applied:\n%s", e.ipt.Dump())
	}
}

func TestJumpRulesRepairedOnFullSync(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	e.sync(t, b.Snap, fullSync())
	// Someone deletes our POSTROUTING jump.
	if err := e.ipt.Restore([]byte("*nat\n-D POSTROUTING -m comment --comment \"proxymodes ipvs postrouting rules\" -j PM-IPVS-POSTROUTING\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	e.sync(t, b.Snap, fullSync())
	if !strings.Contains(string(e.p.LastBatch()), "-I POSTROUTING 1 ") {
		t.Errorf("full sync did not restore the POSTROUTING jump:\n%s", e.p.LastBatch())
	}
	if strings.Count(e.ipt.Dump(), "-j PM-IPVS-SERVICES") != 2 {
		t.Errorf("want exactly one PREROUTING and one OUTPUT jump:\n%s", e.ipt.Dump())
	}
}

// TestTraceMasquerade walks packets through the applied rules: which
// connections get the SNAT mark on the way in, and which are masqueraded
// on the way out of the node after IPVS rewrote the destination.
func TestTraceMasquerade(t *testing.T) {
	e := newEnv(t)
	b, _ := webSnap()
	e.sync(t, b.Snap, fullSync())
	traceMasquerade(t, e)
}

// traceMasquerade checks the rules in e.ipt for webSnap. It may run off the
// test goroutine, so it never calls t.Fatal.
func traceMasquerade(t *testing.T, e *env) {
	const mark = 0x4000
	vip := netip.MustParseAddr("198.19.0.10")
	pod := netip.MustParseAddr("198.18.64.10")
	client := netip.MustParseAddr("198.18.0.99")
	cases := []struct {
		name     string
		chain    string
		pkt      iptables.Packet
		wantMark bool
	}{
		{"pod to cluster IP", "PREROUTING", iptables.Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.18.70.5"), Dst: vip, DstPort: 80, LocalDst: true}, false},
		{"off-cluster client to cluster IP", "PREROUTING", iptables.Packet{Protocol: "tcp", Src: client, Dst: vip, DstPort: 80, LocalDst: true}, true},
		{"node to cluster IP", "OUTPUT", iptables.Packet{Protocol: "tcp", Src: vip, Dst: vip, DstPort: 80, LocalSrc: true, LocalDst: true}, true},
		{"cluster IP, other port", "PREROUTING", iptables.Packet{Protocol: "tcp", Src: client, Dst: vip, DstPort: 81, LocalDst: true}, false},
		{"cluster IP, other protocol", "PREROUTING", iptables.Packet{Protocol: "udp", Src: client, Dst: vip, DstPort: 80, LocalDst: true}, false},
		{"pod to external IP", "PREROUTING", iptables.Packet{Protocol: "tcp", Src: pod, Dst: netip.MustParseAddr("198.19.200.1"), DstPort: 80, LocalDst: true}, true},
		{"client to node port", "PREROUTING", iptables.Packet{Protocol: "tcp", Src: client, Dst: node1, DstPort: 30080, LocalDst: true}, true},
		{"client to other local port", "PREROUTING", iptables.Packet{Protocol: "tcp", Src: client, Dst: node1, DstPort: 30081, LocalDst: true}, false},
	}
	for _, tc := range cases {
		out, err := e.ipt.Trace("nat", tc.chain, tc.pkt)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			return
		}
		if len(out) != 1 || out[0].Verdict != "ACCEPT" {
			t.Errorf("%s: outcomes %v, want one ACCEPT (IPVS, not iptables, picks the backend)", tc.name, out)
			continue
		}
		if got := out[0].Mark&mark != 0; got != tc.wantMark {
			t.Errorf("%s: marked for SNAT = %v, want %v (%s)", tc.name, got, tc.wantMark, out[0])
		}
	}

	post := []struct {
		name string
		pkt  iptables.Packet
		want string
	}{
		{"marked connection to a pod", iptables.Packet{Protocol: "tcp", Src: client, Dst: pod, DstPort: 8080, Mark: mark}, "MASQUERADE"},
		{"pod to another pod", iptables.Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.18.70.5"), Dst: pod, DstPort: 8080}, "ACCEPT"},
		{"hairpin: pod sent to itself", iptables.Packet{Protocol: "tcp", Src: pod, Dst: pod, DstPort: 8080}, "MASQUERADE"},
		{"pod to itself on another port", iptables.Packet{Protocol: "tcp", Src: pod, Dst: pod, DstPort: 9090}, "ACCEPT"},
	}
	for _, tc := range post {
		out, err := e.ipt.Trace("nat", "POSTROUTING", tc.pkt)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			return
		}
		if len(out) != 1 || out[0].Verdict != tc.want {
			t.Errorf("%s: outcomes %v, want %s", tc.name, out, tc.want)
		}
	}

	fwd, err := e.ipt.Trace("filter", "FORWARD", iptables.Packet{Protocol: "tcp", Src: pod, Dst: client, SrcPort: 8080, CtState: "ESTABLISHED"})
	if err != nil || len(fwd) != 1 || fwd[0].Verdict != "ACCEPT" || !strings.Contains(fwd[0].String(), forwardChain) {
		t.Errorf("established reply through FORWARD: %v %v, want ACCEPT by %s", fwd, err, forwardChain)
	}
}

// Addresses of lbSnap. The node (198.18.0.1) is in the ranges of "fw" but
// not in those of "fw-local".
var (
	lbOpen      = netip.MustParseAddr("198.19.210.1") // "open": no source ranges
	lbFW        = netip.MustParseAddr("198.19.210.2") // "fw": ranges, one holding the node
	lbLocal     = netip.MustParseAddr("198.19.210.3") // "fw-local": externalTrafficPolicy Local, a range without the node
	lbEmpty     = netip.MustParseAddr("198.19.210.4") // "fw-empty": ranges, no endpoints
	fwExtIP     = netip.MustParseAddr("198.19.200.2") // "fw"'s external IP
	fwClusterIP = netip.MustParseAddr("198.19.0.61")
	// inRange is in every Service's source ranges, stranger in none.
	inRange  = netip.MustParseAddr("198.18.128.7")
	stranger = netip.MustParseAddr("198.18.130.7")
)

// lbSnap: LoadBalancer Services with and without loadBalancerSourceRanges.
func lbSnap() *testsnap.Builder {
	b := testsnap.New()
	addLoadBalancers(b)
	b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{node1}}
	return b
}

// addLoadBalancers adds lbSnap's Services to b, whose other Services must
// not use its addresses.
func addLoadBalancers(b *testsnap.Builder) {
	b.Add(testsnap.Port{Name: "open", PortName: "http", ClusterIP: "198.19.0.60", Port: 80, NodePort: 30060,
		LoadBalancerIPs: []string{lbOpen.String()}, Endpoints: []string{"198.18.64.60:8080"}, Remote: []string{"198.18.65.60:8080"}})
	b.Add(testsnap.Port{Name: "fw", PortName: "https", ClusterIP: fwClusterIP.String(), Port: 443, NodePort: 30061,
		ExternalIPs: []string{fwExtIP.String()}, LoadBalancerIPs: []string{lbFW.String()},
		SourceRanges: []string{"198.18.128.0/24", "198.18.0.0/24"}, Affinity: true, Timeout: 600,
		Endpoints: []string{"198.18.64.61:8443"}, Remote: []string{"198.18.65.61:8443"}})
	b.Add(testsnap.Port{Name: "fw-local", PortName: "http", ClusterIP: "198.19.0.62", Port: 80, NodePort: 30062,
		LoadBalancerIPs: []string{lbLocal.String()}, SourceRanges: []string{"198.18.128.0/25"}, ExternalLocal: true,
		Endpoints: []string{"198.18.64.62:8080"}, Remote: []string{"198.18.65.62:8080"}})
	b.Add(testsnap.Port{Name: "fw-empty", PortName: "http", ClusterIP: "198.19.0.63", Port: 80, NodePort: 30063,
		LoadBalancerIPs: []string{lbEmpty.String()}, SourceRanges: []string{"198.18.128.0/24"}})
}

// fwCase is one packet sent through the load balancer firewall.
type fwCase struct {
	name    string
	chain   string // filter INPUT unless set
	pkt     iptables.Packet
	dropped bool
}

// lbFirewallCases are the firewall verdicts lbSnap asks for.
func lbFirewallCases() []fwCase {
	tcp := func(src, dst netip.Addr, port uint16) iptables.Packet {
		return iptables.Packet{Protocol: "tcp", Src: src, Dst: dst, DstPort: port, LocalDst: true}
	}
	pod := netip.MustParseAddr("198.18.70.5")
	return []fwCase{
		{name: "in range to a load balancer IP with ranges", pkt: tcp(inRange, lbFW, 443)},
		{name: "node-range source to a load balancer IP with ranges", pkt: tcp(node2, lbFW, 443)},
		{name: "outside every range to a load balancer IP with ranges", pkt: tcp(stranger, lbFW, 443), dropped: true},
		{name: "pod outside every range to a load balancer IP with ranges", pkt: tcp(pod, lbFW, 443), dropped: true},
		{name: "outside every range, forwarded and marked", chain: "FORWARD", dropped: true,
			pkt: iptables.Packet{Protocol: "tcp", Src: stranger, Dst: lbFW, DstPort: 443, Mark: 0x4000}},
		{name: "the load balancer IP itself, node in a range", pkt: tcp(lbFW, lbFW, 443)},
		{name: "the load balancer IP itself, node in no range", pkt: tcp(lbLocal, lbLocal, 80), dropped: true},
		{name: "in range to a Local load balancer IP", pkt: tcp(inRange, lbLocal, 80)},
		{name: "outside every range to a Local load balancer IP", pkt: tcp(stranger, lbLocal, 80), dropped: true},
		{name: "outside every range to a load balancer IP without endpoints", pkt: tcp(stranger, lbEmpty, 80), dropped: true},
		{name: "outside every range to a load balancer IP without ranges", pkt: tcp(stranger, lbOpen, 80)},
		{name: "outside every range, other port of the load balancer IP", pkt: tcp(stranger, lbFW, 80)},
		{name: "outside every range, other protocol", pkt: iptables.Packet{Protocol: "udp", Src: stranger, Dst: lbFW, DstPort: 443, LocalDst: true}},
		// Source ranges are for the load balancer only.
		{name: "outside every range to the cluster IP", pkt: tcp(stranger, fwClusterIP, 443)},
		{name: "outside every range to the external IP", pkt: tcp(stranger, fwExtIP, 443)},
		{name: "outside every range to the node port", pkt: tcp(stranger, node1, 30061)},
	}
}

// traceFirewall checks the filter verdicts of cases against e.ipt. It
// may run off the test goroutine, so it never calls t.Fatal.
func traceFirewall(t *testing.T, e *env, cases []fwCase) {
	for _, tc := range cases {
		chain := tc.chain
		if chain == "" {
			chain = "INPUT"
		}
		out, err := e.ipt.Trace("filter", chain, tc.pkt)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			return
		}
		want := "ACCEPT"
		if tc.dropped {
			want = "DROP"
		}
		if len(out) != 1 || out[0].Verdict != want {
			t.Errorf("%s (%s -> %s:%d, filter %s): outcomes %v, want %s", tc.name, tc.pkt.Src, tc.pkt.Dst, tc.pkt.DstPort, chain, out, want)
		}
	}
}

// TestTraceLoadBalancerFirewall walks packets through the filter rules of
// lbSnap: sources outside loadBalancerSourceRanges are dropped on the way
// to the load balancer IP only.
func TestTraceLoadBalancerFirewall(t *testing.T) {
	e := newEnv(t)
	e.sync(t, lbSnap().Snap, fullSync())
	traceFirewall(t, e, lbFirewallCases())
}
