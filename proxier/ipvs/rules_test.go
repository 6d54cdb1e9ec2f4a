package ipvs

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/proxymodes/proxymodes/harness/golden"
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
