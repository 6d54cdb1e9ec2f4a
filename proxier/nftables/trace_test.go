package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

func traced(t *testing.T, fake *knftables.Fake, base string, p Packet) []string {
	t.Helper()
	if p.Protocol == "" {
		p.Protocol = "tcp"
	}
	outs, err := Trace(fake, base, p)
	if err != nil {
		t.Fatalf("trace %+v from %s: %v", p, base, err)
	}
	return summary(outs)
}

// tracedHooks is traced through every base chain of hooks.
func tracedHooks(t *testing.T, fake *knftables.Fake, p Packet, hooks ...knftables.BaseChainHook) []string {
	t.Helper()
	if p.Protocol == "" {
		p.Protocol = "tcp"
	}
	outs, err := TraceHooks(fake, p, hooks...)
	if err != nil {
		t.Fatalf("trace %+v through %v: %v", p, hooks, err)
	}
	return summary(outs)
}

func summary(outs []Outcome) []string {
	var got []string
	for _, o := range outs {
		s := o.Verdict
		if o.DNAT != "" {
			s += " " + o.DNAT
		}
		if o.Mark != 0 {
			s += " masq"
		}
		got = append(got, s)
	}
	slices.Sort(got)
	return got
}

func tableFor(t *testing.T) *knftables.Fake {
	t.Helper()
	p, fake := newFakeProxier(t)
	sync(t, p, webSnap().Snap, fullSync())
	return fake
}

var (
	pod     = netip.MustParseAddr("198.18.70.5")  // in the cluster CIDR, no endpoint
	outside = netip.MustParseAddr("198.18.0.99")  // a node address, off the pod CIDR
	nodeIP  = netip.MustParseAddr("198.18.0.11")  // this node
	webVIP  = netip.MustParseAddr("198.19.0.10")  // 3 endpoints
	npVIP   = netip.MustParseAddr("198.19.0.30")  // NodePort 30080, external IP
	extIP   = netip.MustParseAddr("198.19.200.1") // np's external IP
	emptyIP = netip.MustParseAddr("198.19.0.40")  // no endpoints, NodePort 30090
)

// The random oracle's clients: testsnap.Random puts no endpoint on
// podClient (PodIP stays below 198.18.127.0), so no hairpin mark muddles
// the masquerade checks.
var (
	podClient  = netip.MustParseAddr("198.18.127.250")
	nodeClient = outside
)

const masqMark = 0x4000

func dnatTargets(outs []Outcome) []string {
	var got []string
	for _, o := range outs {
		if o.Verdict == "dnat" {
			got = append(got, o.DNAT)
		}
	}
	slices.Sort(got)
	return got
}

func endpointStrings(eps []core.Endpoint) []string {
	var want []string
	for _, ep := range eps {
		want = append(want, ep.String())
	}
	slices.Sort(want)
	return want
}

// checkTraces checks every service port of snap against the table in
// fake: a pod reaches the endpoints internalTrafficPolicy allows at the
// cluster IP, unmarked; at a NodePort or external IP an outside client
// reaches those externalTrafficPolicy allows, marked unless it is Local,
// while pods and the node itself reach every usable endpoint. What has no
// endpoints is rejected in the filter hooks, what a Local policy leaves
// none for on this node is dropped. Load balancer IPs are checked by
// checkLoadBalancer.
func checkTraces(t *testing.T, fake *knftables.Fake, snap *core.Snapshot) {
	t.Helper()
	for _, name := range snap.SortedServicePorts() {
		svc := snap.Services[name]
		all := snap.Endpoints[name]
		eps := core.UsableEndpoints(all)
		want := endpointStrings(eps)
		proto := strings.ToLower(string(svc.Protocol))

		vip := Packet{Protocol: proto, Src: podClient, Dst: svc.ClusterIP, DstPort: uint16(svc.Port)}
		internal, noLocal := core.InternalEndpoints(svc, all, snap.NodeName)
		checkNAT(t, fake, fmt.Sprintf("%s: cluster IP from a pod", name), "nat-prerouting", vip, endpointStrings(internal), false)
		switch {
		case len(eps) == 0:
			checkFilter(t, fake, fmt.Sprintf("%s: cluster IP without endpoints", name), "filter-forward", vip, "reject")
		case noLocal:
			checkFilter(t, fake, fmt.Sprintf("%s: cluster IP, internalTrafficPolicy Local without local endpoints", name), "filter-forward", vip, "drop")
		}

		external, noLocalExternal := core.ExternalEndpoints(svc, all, snap.NodeName)
		type dst struct {
			p      Packet
			filter string // where a packet nat left alone is checked
		}
		var dsts []dst
		if svc.NodePort != 0 {
			dsts = append(dsts, dst{Packet{Protocol: proto, Dst: nodeIP, DstPort: uint16(svc.NodePort), LocalDst: true}, "filter-input"})
		}
		for _, eip := range svc.ExternalIPs {
			dsts = append(dsts, dst{Packet{Protocol: proto, Dst: eip, DstPort: uint16(svc.Port)}, "filter-forward"})
		}
		for _, d := range dsts {
			what := fmt.Sprintf("%s: %s:%d", name, d.p.Dst, d.p.DstPort)
			out, pd, self := d.p, d.p, d.p
			out.Src, pd.Src, self.Src, self.LocalSrc = nodeClient, podClient, nodeIP, true
			checkNAT(t, fake, what+" from outside", "nat-prerouting", out, endpointStrings(external), !svc.ExternalLocal)
			checkNAT(t, fake, what+" from a pod", "nat-prerouting", pd, want, !svc.ExternalLocal)
			checkNAT(t, fake, what+" from the node", "nat-output", self, want, true)
			switch {
			case len(eps) == 0:
				checkFilter(t, fake, what+" from outside without endpoints", d.filter, out, "reject")
			case noLocalExternal:
				checkFilter(t, fake, what+" from outside, externalTrafficPolicy Local without local endpoints", d.filter, out, "drop")
			}
		}
		for _, lb := range svc.LoadBalancerIPs {
			checkLoadBalancer(t, fake, snap, name, lb)
		}
	}
}

// farClient is in no source range testsnap.Random or the tests here use.
var farClient = netip.MustParseAddr("192.0.2.99")

// checkLoadBalancer traces connections to one load balancer IP of a
// service port through the kernel's path, firewall included: from pods,
// from outside, from the node itself and from an address at either end
// of each source range. One the ranges admit is treated as at an
// external IP; any other is dropped before DNAT. No ranges admit every
// source; with a range that holds one of the node's addresses the load
// balancer IP as source (the node's own traffic looped back) passes too.
func checkLoadBalancer(t *testing.T, fake *knftables.Fake, snap *core.Snapshot, name core.ServicePortName, lb netip.Addr) {
	t.Helper()
	svc := snap.Services[name]
	all := snap.Endpoints[name]
	eps := core.UsableEndpoints(all)
	external, _ := core.ExternalEndpoints(svc, all, snap.NodeName)
	ranges := svc.LoadBalancerSourceRanges
	var nodeAddrs []netip.Addr
	if snap.Node != nil {
		nodeAddrs = snap.Node.Addresses
	}
	inRanges := func(a netip.Addr) bool {
		return slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return r.Contains(a) })
	}
	allowFromNode := slices.ContainsFunc(nodeAddrs, inRanges)

	type client struct {
		src  netip.Addr
		self bool // the node sends it: output, not prerouting
	}
	clients := []client{{podClient, false}, {nodeClient, false}, {farClient, false}, {nodeIP, true}, {lb, true}}
	for _, r := range ranges {
		clients = append(clients, client{r.Addr(), false}, client{lastAddr(r), false})
	}
	var allowed, denied int
	for _, c := range clients {
		// An endpoint as client is a hairpin, which marks for SNAT.
		if slices.ContainsFunc(all, func(ep core.Endpoint) bool { return ep.IP == c.src }) {
			continue
		}
		what := fmt.Sprintf("%s: load balancer IP %s:%d from %s", name, lb, svc.Port, c.src)
		pkt := Packet{Protocol: strings.ToLower(string(svc.Protocol)), Src: c.src, Dst: lb, DstPort: uint16(svc.Port), LocalSrc: c.self}
		hooks := []knftables.BaseChainHook{knftables.PreroutingHook, knftables.ForwardHook}
		if c.self {
			what += " (the node)"
			hooks = []knftables.BaseChainHook{knftables.OutputHook}
		}
		outs, err := TraceHooks(fake, pkt, hooks...)
		if err != nil {
			t.Errorf("%s: trace: %v", what, err)
			continue
		}
		if len(ranges) > 0 && !inRanges(c.src) && !(c.src == lb && allowFromNode) {
			denied++
			// Dropped by the firewall, before any DNAT, whatever the
			// endpoints.
			if len(outs) != 1 || outs[0].Verdict != "drop" || !slices.ContainsFunc(outs[0].Chains, func(c string) bool { return strings.HasPrefix(c, fwChainPrefix) }) {
				t.Errorf("%s, outside the source ranges %v: %v, want dropped by the firewall", what, ranges, outs)
			}
			continue
		}
		allowed++
		want, masq := external, !svc.ExternalLocal
		switch {
		case c.self:
			want, masq = eps, true
		case testsnap.ClusterCIDR.Contains(c.src):
			want = eps
		}
		if len(want) == 0 {
			verdict := "reject"
			if len(eps) > 0 {
				verdict = "drop" // Local, no endpoint here
			}
			if len(outs) != 1 || outs[0].Verdict != verdict {
				t.Errorf("%s: %v, want %s", what, outs, verdict)
			}
			continue
		}
		if got, want := dnatTargets(outs), endpointStrings(want); !slices.Equal(got, want) || len(outs) != len(got) {
			t.Errorf("%s reaches %v, want %v\n%v", what, got, want, outs)
		}
		for _, o := range outs {
			if o.Verdict == "dnat" && (o.Mark&masqMark != 0) != masq {
				t.Errorf("%s: marked for masquerade %t, want %t: %v", what, o.Mark&masqMark != 0, masq, o)
			}
		}
	}
	// The clients above always include one inside and one outside.
	if allowed == 0 || (len(ranges) > 0 && denied == 0) {
		t.Errorf("%s: %s: %d clients allowed, %d denied: the oracle missed a side", name, lb, allowed, denied)
	}
}

// lastAddr is the highest address in r.
func lastAddr(r netip.Prefix) netip.Addr {
	a := r.Masked().Addr().As4()
	host := ^uint32(0) >> r.Bits() // 0 for a /32: Go shifts all bits out
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// checkNAT traces pkt from a nat base chain: it must reach exactly want,
// and be marked for masquerade exactly when masq.
func checkNAT(t *testing.T, fake *knftables.Fake, what, base string, pkt Packet, want []string, masq bool) {
	t.Helper()
	outs, err := Trace(fake, base, pkt)
	if err != nil {
		t.Errorf("%s: trace: %v", what, err)
		return
	}
	if got := dnatTargets(outs); !slices.Equal(got, want) {
		t.Errorf("%s reaches %v, want %v\n%v", what, got, want, outs)
	}
	for _, o := range outs {
		if o.Verdict == "dnat" && (o.Mark&masqMark != 0) != masq {
			t.Errorf("%s: marked for masquerade %t, want %t: %v", what, o.Mark&masqMark != 0, masq, o)
		}
	}
}

// checkFilter traces pkt, not DNATed, from a filter base chain: the one
// outcome must be verdict.
func checkFilter(t *testing.T, fake *knftables.Fake, what, base string, pkt Packet, verdict string) {
	t.Helper()
	outs, err := Trace(fake, base, pkt)
	if err != nil || len(outs) != 1 || outs[0].Verdict != verdict {
		t.Errorf("%s: %s gives %v (err %v), want %s", what, base, outs, err, verdict)
	}
}

// Where packets go, for each kind of destination the mode handles.
func TestTrace(t *testing.T) {
	fake := tableFor(t)
	web := []string{"dnat 198.18.64.10:8080", "dnat 198.18.65.10:8080", "dnat 198.18.66.10:8080"}
	for _, tc := range []struct {
		name string
		base string
		p    Packet
		want []string
	}{
		{"a pod reaches each endpoint, unmarked", "nat-prerouting", Packet{Src: pod, Dst: webVIP, DstPort: 80}, web},
		{"an off-cluster source is marked for SNAT", "nat-prerouting", Packet{Src: outside, Dst: webVIP, DstPort: 80},
			[]string{"dnat 198.18.64.10:8080 masq", "dnat 198.18.65.10:8080 masq", "dnat 198.18.66.10:8080 masq"}},
		{"hairpin: an endpoint reaching itself is marked", "nat-prerouting", Packet{Src: netip.MustParseAddr("198.18.65.10"), Dst: webVIP, DstPort: 80},
			[]string{"dnat 198.18.64.10:8080", "dnat 198.18.65.10:8080 masq", "dnat 198.18.66.10:8080"}},
		{"the wrong port is not a Service", "nat-prerouting", Packet{Src: pod, Dst: webVIP, DstPort: 81}, []string{"accept"}},
		{"the wrong protocol is not a Service", "nat-prerouting", Packet{Protocol: "udp", Src: pod, Dst: webVIP, DstPort: 80}, []string{"accept"}},
		{"a NodePort on a local address, marked", "nat-prerouting", Packet{Src: pod, Dst: nodeIP, DstPort: 30080, LocalDst: true}, []string{"dnat 198.18.64.30:8080 masq"}},
		{"a NodePort port on a remote address is not", "nat-prerouting", Packet{Src: pod, Dst: nodeIP, DstPort: 30080}, []string{"accept"}},
		{"a NodePort on loopback is not", "nat-output", Packet{Src: pod, Dst: netip.MustParseAddr("127.0.0.1"), DstPort: 30080, LocalDst: true}, []string{"accept"}},
		{"an external IP, marked", "nat-prerouting", Packet{Src: pod, Dst: extIP, DstPort: 80}, []string{"dnat 198.18.64.30:8080 masq"}},
		{"UDP", "nat-output", Packet{Protocol: "udp", Src: nodeIP, Dst: netip.MustParseAddr("198.19.0.53"), DstPort: 53}, []string{"dnat 198.18.64.53:53 masq"}},
		{"no endpoints: not DNATed", "nat-prerouting", Packet{Src: pod, Dst: emptyIP, DstPort: 80}, []string{"accept"}},
		{"no endpoints: rejected when forwarded", "filter-forward", Packet{Src: pod, Dst: emptyIP, DstPort: 80}, []string{"reject"}},
		{"no endpoints: rejected from the node itself", "filter-output", Packet{Src: nodeIP, Dst: emptyIP, DstPort: 80}, []string{"reject"}},
		{"no endpoints: a NodePort is rejected", "filter-input", Packet{Src: outside, Dst: nodeIP, DstPort: 30090, LocalDst: true}, []string{"reject"}},
		{"an established flow is not checked again", "filter-forward", Packet{Src: pod, Dst: emptyIP, DstPort: 80, Established: true}, []string{"accept"}},
		{"a Service with endpoints passes the filter", "filter-forward", Packet{Src: pod, Dst: webVIP, DstPort: 80}, []string{"accept"}},
		{"masquerading: a marked packet", "nat-postrouting", Packet{Src: pod, Dst: webVIP, DstPort: 80, Mark: 0x4000}, []string{"masquerade"}},
		{"masquerading: an unmarked one", "nat-postrouting", Packet{Src: pod, Dst: webVIP, DstPort: 80}, []string{"accept"}},
	} {
		if got := traced(t, fake, tc.base, tc.p); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// With ClientIP affinity a client may be sent by its set straight to its
// endpoint, or, when it has none yet, picked at random; either way only
// the Service's endpoints, and the pick refreshes the set.
func TestTraceAffinity(t *testing.T) {
	fake := tableFor(t)
	outs, err := Trace(fake, "nat-prerouting", Packet{Protocol: "tcp", Src: pod, Dst: netip.MustParseAddr("198.19.0.20"), DstPort: 443})
	if err != nil {
		t.Fatal(err)
	}
	viaSet, viaNumgen := 0, 0
	for _, o := range outs {
		if o.Verdict != "dnat" || !strings.HasSuffix(o.DNAT, ":8443") || !o.Random {
			t.Errorf("outcome %s", o)
		}
		ep := o.Chains[len(o.Chains)-1]
		rules := fake.Table.Chains[ep].Rules
		if !slices.ContainsFunc(rules, func(r *knftables.Rule) bool { return strings.HasPrefix(r.Rule, "update @affinity-") }) {
			t.Errorf("%s: endpoint chain %s does not refresh the affinity set", o, ep)
		}
		if len(o.Chains) == 4 { // nat-prerouting, services, svc, ep: the set sent it
			viaSet++
		} else {
			viaNumgen++
		}
	}
	if viaSet == 0 || len(outs) != 2 {
		t.Errorf("outcomes %v: want the 2 endpoints, reached through their affinity sets too", outs)
	}
}

// internalTrafficPolicy Local: the cluster IP reaches this node's
// endpoints only, and is dropped (not rejected) where there are none; the
// NodePort still reaches every endpoint.
func TestTraceInternalTrafficPolicyLocal(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "mixed", ClusterIP: "198.19.0.60", Port: 80, NodePort: 30060, InternalLocal: true,
		Endpoints: []string{"198.18.64.60:8080"}, Remote: []string{"198.18.65.60:8080"}})
	b.Add(testsnap.Port{Name: "elsewhere", ClusterIP: "198.19.0.61", Port: 80, InternalLocal: true,
		Remote: []string{"198.18.65.61:8080"}})
	p, fake := newFakeProxier(t)
	sync(t, p, b.Snap, fullSync())
	mixed, elsewhere := netip.MustParseAddr("198.19.0.60"), netip.MustParseAddr("198.19.0.61")
	for _, tc := range []struct {
		name string
		base string
		p    Packet
		want []string
	}{
		{"the cluster IP reaches the local endpoint only", "nat-prerouting", Packet{Src: pod, Dst: mixed, DstPort: 80}, []string{"dnat 198.18.64.60:8080"}},
		{"the NodePort reaches both", "nat-prerouting", Packet{Src: outside, Dst: nodeIP, DstPort: 30060, LocalDst: true},
			[]string{"dnat 198.18.64.60:8080 masq", "dnat 198.18.65.60:8080 masq"}},
		{"no local endpoint: not DNATed", "nat-prerouting", Packet{Src: pod, Dst: elsewhere, DstPort: 80}, []string{"accept"}},
		{"no local endpoint: dropped when forwarded", "filter-forward", Packet{Src: pod, Dst: elsewhere, DstPort: 80}, []string{"drop"}},
	} {
		if got := traced(t, fake, tc.base, tc.p); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// externalTrafficPolicy Local: outside clients reach this node's
// endpoints only, unmarked, and are dropped where there are none; pods
// reach every endpoint unmarked and the node itself every endpoint
// marked. With masquerade-all only the cluster IP is marked for pods.
func TestTraceExternalTrafficPolicyLocal(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "mixed", ClusterIP: "198.19.0.70", Port: 80, NodePort: 30070, ExternalIPs: []string{"198.19.200.70"},
		ExternalLocal: true, Endpoints: []string{"198.18.64.70:8080"}, Remote: []string{"198.18.65.70:8080"}})
	b.Add(testsnap.Port{Name: "elsewhere", ClusterIP: "198.19.0.71", Port: 80, NodePort: 30071, ExternalIPs: []string{"198.19.200.71"},
		ExternalLocal: true, Remote: []string{"198.18.65.71:8080"}})
	mixedExt, elsewhereExt := netip.MustParseAddr("198.19.200.70"), netip.MustParseAddr("198.19.200.71")
	local, remote := "dnat 198.18.64.70:8080", "dnat 198.18.65.70:8080"
	p, fake := newFakeProxier(t)
	sync(t, p, b.Snap, fullSync())
	for _, tc := range []struct {
		name string
		base string
		p    Packet
		want []string
	}{
		{"outside to the NodePort: the local endpoint, unmarked", "nat-prerouting", Packet{Src: outside, Dst: nodeIP, DstPort: 30070, LocalDst: true}, []string{local}},
		{"outside to the external IP: the local endpoint, unmarked", "nat-prerouting", Packet{Src: outside, Dst: mixedExt, DstPort: 80}, []string{local}},
		{"a pod to the NodePort: both, unmarked", "nat-prerouting", Packet{Src: pod, Dst: nodeIP, DstPort: 30070, LocalDst: true}, []string{local, remote}},
		{"a pod to the external IP: both, unmarked", "nat-prerouting", Packet{Src: pod, Dst: mixedExt, DstPort: 80}, []string{local, remote}},
		{"the node to the NodePort: both, marked", "nat-output", Packet{Src: nodeIP, LocalSrc: true, Dst: nodeIP, DstPort: 30070, LocalDst: true},
			[]string{local + " masq", remote + " masq"}},
		{"the node to the external IP: both, marked", "nat-output", Packet{Src: nodeIP, LocalSrc: true, Dst: mixedExt, DstPort: 80},
			[]string{local + " masq", remote + " masq"}},
		{"outside, no local endpoint: the NodePort is not DNATed", "nat-prerouting", Packet{Src: outside, Dst: nodeIP, DstPort: 30071, LocalDst: true}, []string{"accept"}},
		{"outside, no local endpoint: the NodePort is dropped", "filter-input", Packet{Src: outside, Dst: nodeIP, DstPort: 30071, LocalDst: true}, []string{"drop"}},
		{"outside, no local endpoint: the external IP is dropped", "filter-forward", Packet{Src: outside, Dst: elsewhereExt, DstPort: 80}, []string{"drop"}},
		{"a pod, no local endpoint: the NodePort still reaches the remote one", "nat-prerouting", Packet{Src: pod, Dst: nodeIP, DstPort: 30071, LocalDst: true},
			[]string{"dnat 198.18.65.71:8080"}},
		{"the node, no local endpoint: the external IP reaches the remote one, marked", "nat-output", Packet{Src: nodeIP, LocalSrc: true, Dst: elsewhereExt, DstPort: 80},
			[]string{"dnat 198.18.65.71:8080 masq"}},
		{"the cluster IP is not affected", "nat-prerouting", Packet{Src: pod, Dst: netip.MustParseAddr("198.19.0.71"), DstPort: 80}, []string{"dnat 198.18.65.71:8080"}},
	} {
		if got := traced(t, fake, tc.base, tc.p); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	checkTraces(t, fake, b.Snap)

	all := knftables.NewFake(knftables.IPv4Family, TableName)
	pa, err := New(Config{NFT: all, ClusterCIDR: testsnap.ClusterCIDR, MasqueradeAll: true})
	if err != nil {
		t.Fatal(err)
	}
	sync(t, pa, b.Snap, fullSync())
	if got, want := traced(t, all, "nat-prerouting", Packet{Src: pod, Dst: nodeIP, DstPort: 30070, LocalDst: true}), []string{local, remote}; !slices.Equal(got, want) {
		t.Errorf("masquerade-all, a pod to the NodePort: %v, want %v", got, want)
	}
	if got, want := traced(t, all, "nat-prerouting", Packet{Src: pod, Dst: netip.MustParseAddr("198.19.0.70"), DstPort: 80}), []string{local + " masq", remote + " masq"}; !slices.Equal(got, want) {
		t.Errorf("masquerade-all, a pod to the cluster IP: %v, want %v", got, want)
	}
}

// Load balancer IPs: handled like external IPs, behind their source
// ranges, which the firewall checks before DNAT for traffic from outside,
// from pods and from the node alike.
func TestTraceLoadBalancer(t *testing.T) {
	p, fake := newFakeProxier(t)
	sync(t, p, lbSnap().Snap, fullSync())
	allowed := netip.MustParseAddr("203.0.113.9")
	lbIP := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 250, byte(i)}) }
	in := []knftables.BaseChainHook{knftables.PreroutingHook, knftables.ForwardHook}
	out := []knftables.BaseChainHook{knftables.OutputHook}
	for _, tc := range []struct {
		name  string
		p     Packet
		hooks []knftables.BaseChainHook
		want  []string
	}{
		{"no ranges: any client, marked", Packet{Src: farClient, Dst: lbIP(1), DstPort: 80}, in,
			[]string{"dnat 198.18.64.80:8080 masq", "dnat 198.18.65.80:8080 masq"}},
		{"no ranges: a pod, marked", Packet{Src: pod, Dst: lbIP(1), DstPort: 80}, in,
			[]string{"dnat 198.18.64.80:8080 masq", "dnat 198.18.65.80:8080 masq"}},
		{"the wrong port is not the Service", Packet{Src: farClient, Dst: lbIP(1), DstPort: 81}, in, []string{"accept"}},
		{"ranges: a client inside one", Packet{Src: allowed, Dst: lbIP(2), DstPort: 80}, in,
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"ranges: the second load balancer IP too", Packet{Src: allowed, Dst: lbIP(3), DstPort: 80}, in,
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"ranges: a client outside them is dropped", Packet{Src: farClient, Dst: lbIP(2), DstPort: 80}, in, []string{"drop"}},
		{"ranges: a pod outside them is dropped", Packet{Src: pod, Dst: lbIP(2), DstPort: 80}, in, []string{"drop"}},
		{"ranges: the node, inside one", Packet{Src: nodeIP, LocalSrc: true, Dst: lbIP(2), DstPort: 80}, out,
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"ranges: the node's traffic looped back from the load balancer IP", Packet{Src: lbIP(3), LocalSrc: true, Dst: lbIP(3), DstPort: 80}, out,
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"ranges: the other load balancer IP as source too", Packet{Src: lbIP(2), LocalSrc: true, Dst: lbIP(3), DstPort: 80}, out,
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"ranges never guard the cluster IP", Packet{Src: farClient, Dst: netip.MustParseAddr("198.19.0.81"), DstPort: 80}, in,
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"ranges never guard the NodePort", Packet{Src: farClient, Dst: nodeIP, LocalDst: true, DstPort: 30081},
			[]knftables.BaseChainHook{knftables.PreroutingHook, knftables.InputHook},
			[]string{"dnat 198.18.64.81:8080 masq", "dnat 198.18.65.81:8080 masq"}},
		{"Local: an outside client in range reaches the local endpoint, unmarked", Packet{Src: allowed, Dst: lbIP(4), DstPort: 80}, in,
			[]string{"dnat 198.18.64.82:8080"}},
		{"Local: a pod in range reaches both, unmarked", Packet{Src: pod, Dst: lbIP(4), DstPort: 80}, in,
			[]string{"dnat 198.18.64.82:8080", "dnat 198.18.65.82:8080"}},
		{"Local: the node is in no range", Packet{Src: nodeIP, LocalSrc: true, Dst: lbIP(4), DstPort: 80}, out, []string{"drop"}},
		{"Local: nor is the load balancer IP", Packet{Src: lbIP(4), LocalSrc: true, Dst: lbIP(4), DstPort: 80}, out, []string{"drop"}},
		{"no endpoints: a client in range is rejected", Packet{Src: allowed, Dst: lbIP(5), DstPort: 80}, in, []string{"reject"}},
		{"no endpoints: the node, in no range, is dropped before it could be rejected", Packet{Src: nodeIP, LocalSrc: true, Dst: lbIP(5), DstPort: 80}, out, []string{"drop"}},
		{"no endpoints: a client outside the ranges is dropped", Packet{Src: farClient, Dst: lbIP(5), DstPort: 80}, in, []string{"drop"}},
		{"Local without an endpoint here: outside clients are dropped", Packet{Src: farClient, Dst: lbIP(6), DstPort: 80}, in, []string{"drop"}},
		{"Local without an endpoint here: pods reach the remote one", Packet{Src: pod, Dst: lbIP(6), DstPort: 80}, in, []string{"dnat 198.18.65.84:8080"}},
		{"Local without an endpoint here: the node too, marked", Packet{Src: nodeIP, LocalSrc: true, Dst: lbIP(6), DstPort: 80}, out, []string{"dnat 198.18.65.84:8080 masq"}},
	} {
		if got := tracedHooks(t, fake, tc.p, tc.hooks...); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// (The tracer runs nat chains for any packet; the kernel, for a
	// connection's first only.)
	if got := traced(t, fake, "filter-prerouting-pre-dnat", Packet{Src: farClient, Dst: lbIP(2), DstPort: 80, Established: true}); !slices.Equal(got, []string{"accept"}) {
		t.Errorf("an established connection is checked again: %v, want accept", got)
	}
	checkTraces(t, fake, lbSnap().Snap)
}

// The tracer refuses rules it does not know, so a new rule form cannot
// slip past the trace tests unexamined.
func TestTraceRefusesUnknownRules(t *testing.T) {
	fake := tableFor(t)
	tx := fake.NewTransaction()
	tx.Add(&knftables.Rule{Chain: servicesChain, Rule: "ip daddr 198.19.0.99 counter accept"})
	if err := fake.Run(t.Context(), tx); err != nil {
		t.Fatal(err)
	}
	if _, err := Trace(fake, "nat-prerouting", Packet{Protocol: "tcp", Src: pod, Dst: webVIP, DstPort: 81}); err == nil {
		t.Error("an unknown rule form was traced")
	}
}

// Past MaxCascade endpoints the pick is one numgen map instead of a
// cascade of rules; either way every endpoint is reachable and nothing
// else is, and the rules say which form they took.
func TestTracePickForms(t *testing.T) {
	for _, n := range []int{2, MaxCascade, MaxCascade + 1} {
		var eps, want []string
		for i := range n {
			ep := fmt.Sprintf("198.18.64.%d:8080", 100+i)
			eps = append(eps, ep)
			want = append(want, "dnat "+ep)
		}
		p, fake := newFakeProxier(t)
		b := testsnap.New()
		b.Add(testsnap.Port{Name: "many", PortName: "http", Port: 80, ClusterIP: "198.19.0.77", Endpoints: eps})
		sync(t, p, b.Snap, fullSync())
		got := traced(t, fake, "nat-prerouting", Packet{Src: pod, Dst: netip.MustParseAddr("198.19.0.77"), DstPort: 80})
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%d endpoints: %v, want %v", n, got, want)
		}
		dump := fake.Dump()
		vmap, cascade := strings.Contains(dump, fmt.Sprintf("numgen random mod %d vmap {", n)), strings.Contains(dump, fmt.Sprintf("numgen random mod %d == 0 goto", n))
		if (n > MaxCascade) != vmap || (n > MaxCascade) == cascade {
			t.Errorf("%d endpoints: a numgen map %t, a cascade %t; want a cascade up to %d endpoints, a map past it", n, vmap, cascade, MaxCascade)
		}
	}
}
