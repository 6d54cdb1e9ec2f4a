package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

var (
	podClient  = netip.MustParseAddr("198.18.127.250") // in the pod CIDR
	nodeClient = netip.MustParseAddr("198.18.0.99")    // off the pod CIDR
	nodeIP     = netip.MustParseAddr("198.18.0.1")     // this node
)

const masqMark = 0x4000

// firstWithEndpoints returns the first service port (in sorted order) with
// exactly n usable endpoints.
func firstWithEndpoints(snap *core.Snapshot, n int) core.ServicePortName {
	for _, name := range snap.SortedServicePorts() {
		if len(core.UsableEndpoints(snap.Endpoints[name])) == n {
			return name
		}
	}
	panic("no service port with the wanted endpoint count")
}

func dnatTargets(outs []Outcome) []string {
	var got []string
	for _, o := range outs {
		if o.Verdict == "DNAT" {
			got = append(got, o.DNAT)
		}
	}
	sort.Strings(got)
	return got
}

func endpointStrings(eps []core.Endpoint) []string {
	var want []string
	for _, ep := range eps {
		want = append(want, ep.String())
	}
	sort.Strings(want)
	return want
}

// checkTraces checks every service port of snap against the rules in f:
// a packet to the cluster IP (and NodePort, external IPs) can reach exactly
// the usable endpoints, and one without endpoints is rejected in filter.
func checkTraces(t *testing.T, f *Fake, snap *core.Snapshot) {
	t.Helper()
	for _, name := range snap.SortedServicePorts() {
		svc := snap.Services[name]
		eps := core.UsableEndpoints(snap.Endpoints[name])
		proto := strings.ToLower(string(svc.Protocol))
		vipPkt := Packet{Protocol: proto, Src: podClient, Dst: svc.ClusterIP, DstPort: uint16(svc.Port)}
		outs, err := f.Trace("nat", "PREROUTING", vipPkt)
		if err != nil {
			t.Errorf("%s: trace: %v", name, err)
			continue
		}
		internal, noLocal := core.InternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
		if got, want := dnatTargets(outs), endpointStrings(internal); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: cluster IP reaches %v, want %v\n%v", name, got, want, outs)
		}
		if noLocal {
			fouts, err := f.Trace("filter", "FORWARD", vipPkt)
			if err != nil || len(fouts) != 1 || fouts[0].Verdict != "DROP" {
				t.Errorf("%s: internalTrafficPolicy Local without local endpoints: filter FORWARD gives %v (err %v), want DROP", name, fouts, err)
			}
		}
		want := endpointStrings(eps)
		for _, o := range outs {
			if o.Verdict == "DNAT" && o.Mark&masqMark != 0 {
				t.Errorf("%s: pod->cluster IP traffic was marked for masquerade: %v", name, o)
			}
		}
		if len(eps) == 0 {
			fouts, err := f.Trace("filter", "FORWARD", vipPkt)
			if err != nil || len(fouts) != 1 || fouts[0].Verdict != "REJECT" {
				t.Errorf("%s: no endpoints: filter FORWARD gives %v (err %v), want REJECT", name, fouts, err)
			}
		}
		// An outside client reaches the endpoints externalTrafficPolicy
		// allows, with SNAT unless it is Local; pods and the node itself
		// reach every usable endpoint.
		external, noLocalExternal := core.ExternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
		var dsts []Packet
		if svc.NodePort != 0 {
			dsts = append(dsts, Packet{Protocol: proto, Dst: nodeIP, DstPort: uint16(svc.NodePort), LocalDst: true})
		}
		for _, eip := range svc.ExternalIPs {
			dsts = append(dsts, Packet{Protocol: proto, Dst: eip, DstPort: uint16(svc.Port)})
		}
		for _, d := range dsts {
			what := fmt.Sprintf("%s: %s:%d", name, d.Dst, d.DstPort)
			outside, pod, self := d, d, d
			outside.Src, pod.Src, self.Src, self.LocalSrc = nodeClient, podClient, nodeIP, true
			checkExternal(t, f, what+" from outside", "PREROUTING", outside, endpointStrings(external), !svc.ExternalLocal)
			checkExternal(t, f, what+" from a pod", "PREROUTING", pod, want, !svc.ExternalLocal)
			checkExternal(t, f, what+" from the node", "OUTPUT", self, want, true)
			switch {
			case len(eps) == 0:
				fouts, err := f.Trace("filter", "INPUT", outside)
				if err != nil || len(fouts) != 1 || fouts[0].Verdict != "REJECT" {
					t.Errorf("%s: no endpoints: filter INPUT gives %v (err %v), want REJECT", what, fouts, err)
				}
			case noLocalExternal:
				fouts, err := f.Trace("filter", "INPUT", outside)
				if err != nil || len(fouts) != 1 || fouts[0].Verdict != "DROP" {
					t.Errorf("%s: externalTrafficPolicy Local without local endpoints: filter INPUT gives %v (err %v), want DROP", what, fouts, err)
				}
			}
		}
		for _, lbip := range svc.LoadBalancerIPs {
			checkLoadBalancerIP(t, f, snap, name, lbip)
		}
	}
}

// foreignClient is outside the lab's 198.18.0.0/15, so outside every
// source range testsnap.Random makes.
var foreignClient = netip.MustParseAddr("203.0.113.7")

// lbSource is a client of a load balancer IP.
type lbSource struct {
	what string
	pkt  Packet // Src and LocalSrc set
	// kind says how the external chain treats it: "outside", "pod" (in
	// the cluster CIDR) or "node" (a local source, entering at OUTPUT).
	kind string
}

// lbSources returns clients of every kind for the load balancer IP lbip
// of svc: the usual three, one beyond every range, one inside each source
// range and the load balancer IP itself as the node's source.
func lbSources(svc *core.ServicePort, eps []core.Endpoint, lbip netip.Addr) []lbSource {
	src := func(what string, a netip.Addr, kind string) lbSource {
		return lbSource{what: what, pkt: Packet{Src: a, LocalSrc: kind == "node"}, kind: kind}
	}
	out := []lbSource{
		src("outside", nodeClient, "outside"), src("a pod", podClient, "pod"), src("the node", nodeIP, "node"),
		src("beyond every range", foreignClient, "outside"), src("the node through the load balancer IP", lbip, "node"),
	}
	isEndpoint := func(a netip.Addr) bool {
		return slices.ContainsFunc(eps, func(ep core.Endpoint) bool { return ep.IP == a })
	}
	for _, r := range svc.LoadBalancerSourceRanges {
		// The range's last address; not an endpoint's, whose hairpin
		// traffic is masqueraded whatever the policy.
		a := lastAddr(r)
		if isEndpoint(a) {
			if a = r.Addr(); isEndpoint(a) {
				continue
			}
		}
		kind := "outside"
		if testsnap.ClusterCIDR.Contains(a) {
			kind = "pod"
		}
		out = append(out, src("in range "+r.String(), a, kind))
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(b)
}

// lbAllowed is loadBalancerSourceRanges as kube-proxy reads them: no range
// allows everyone; the load balancer IPs themselves are allowed sources
// when a range holds an address of this node.
func lbAllowed(snap *core.Snapshot, svc *core.ServicePort, src netip.Addr) bool {
	ranges := svc.LoadBalancerSourceRanges
	if len(ranges) == 0 || slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return r.Contains(src) }) {
		return true
	}
	if snap.Node == nil || !slices.Contains(svc.LoadBalancerIPs, src) {
		return false
	}
	return slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return slices.ContainsFunc(snap.Node.Addresses, r.Contains) })
}

// checkLoadBalancerIP checks the packets of every lbSources client to
// lbip: an allowed one is treated as if lbip were an external IP; a denied
// one is not DNATed and then dropped in filter, unless the Service has no
// endpoints at all, which is rejected from every source (kube-proxy's
// iptables mode writes no firewall for it).
func checkLoadBalancerIP(t *testing.T, f *Fake, snap *core.Snapshot, name core.ServicePortName, lbip netip.Addr) {
	t.Helper()
	svc := snap.Services[name]
	usable := core.UsableEndpoints(snap.Endpoints[name])
	external, _ := core.ExternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
	proto := strings.ToLower(string(svc.Protocol))
	for _, s := range lbSources(svc, usable, lbip) {
		pkt := s.pkt
		pkt.Protocol, pkt.Dst, pkt.DstPort = proto, lbip, uint16(svc.Port)
		allowed := lbAllowed(snap, svc, pkt.Src)
		what := fmt.Sprintf("%s: load balancer IP %s:%d from %s (%s, allowed %t)", name, lbip, svc.Port, s.what, pkt.Src, allowed)
		start, filterChains := "PREROUTING", []string{"INPUT", "FORWARD"}
		if s.kind == "node" {
			start, filterChains = "OUTPUT", []string{"OUTPUT"}
		}
		var want []string
		switch {
		case !allowed:
		case s.kind == "outside":
			want = endpointStrings(external)
		default:
			want = endpointStrings(usable)
		}
		checkExternal(t, f, what, start, pkt, want, s.kind == "node" || !svc.ExternalLocal)
		if len(want) > 0 {
			continue
		}
		// Not DNATed: the filter table sees the load balancer IP.
		verdict := "DROP"
		if len(usable) == 0 {
			if s.kind == "node" {
				continue // as for external IPs, OUTPUT does not reject
			}
			verdict = "REJECT"
		}
		for _, chain := range filterChains {
			fouts, err := f.Trace("filter", chain, pkt)
			if err != nil || len(fouts) != 1 || fouts[0].Verdict != verdict {
				t.Errorf("%s: filter %s gives %v (err %v), want %s", what, chain, fouts, err, verdict)
			}
		}
	}
}

// checkExternal traces pkt from the nat chain start: it must reach exactly
// want, and be marked for masquerade exactly when masq.
func checkExternal(t *testing.T, f *Fake, what, start string, pkt Packet, want []string, masq bool) {
	t.Helper()
	outs, err := f.Trace("nat", start, pkt)
	if err != nil {
		t.Errorf("%s: trace: %v", what, err)
		return
	}
	if got := dnatTargets(outs); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s reaches %v, want %v\n%v", what, got, want, outs)
	}
	for _, o := range outs {
		if o.Verdict == "DNAT" && (o.Mark&masqMark != 0) != masq {
			t.Errorf("%s: marked for masquerade %t, want %t: %v", what, o.Mark&masqMark != 0, masq, o)
		}
	}
}

func TestTraceVIPReachesEndpoint(t *testing.T) {
	b := testsnap.New()
	name := b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.65.10:8080", "198.18.66.10:8080"}})
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	pkt := Packet{Protocol: "tcp", Src: podClient, Dst: netip.MustParseAddr("198.19.0.10"), DstPort: 80}
	outs, err := fake.Trace("nat", "PREROUTING", pkt)
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 3 {
		t.Fatalf("got %d outcomes, want one per endpoint:\n%v", len(outs), outs)
	}
	svcChain := serviceChainName(name)
	for i, o := range outs {
		ep := b.Snap.Endpoints[name][i]
		if o.Verdict != "DNAT" || o.DNAT != ep.String() {
			t.Errorf("outcome %d: %v, want DNAT to %s", i, o, ep)
		}
		if o.EndpointChain() != endpointChainName(name, ep) {
			t.Errorf("outcome %d went through %q, want endpoint chain %q", i, o.EndpointChain(), endpointChainName(name, ep))
		}
		if len(o.Chains) < 3 || o.Chains[1] != servicesChain || o.Chains[2] != svcChain {
			t.Errorf("outcome %d path %v, want PREROUTING -> %s -> %s -> ...", i, o.Chains, servicesChain, svcChain)
		}
		// Each endpoint is one of several possible outcomes.
		if !o.Random {
			t.Errorf("outcome %d not flagged as random: %v", i, o)
		}
	}

	// Wrong port: no service, nothing happens in nat.
	pkt.DstPort = 81
	outs, _ = fake.Trace("nat", "PREROUTING", pkt)
	if len(outs) != 1 || outs[0].Verdict != "ACCEPT" || outs[0].DNAT != "" {
		t.Errorf("packet to an unused port: %v, want plain ACCEPT", outs)
	}

	// Off-cluster client: marked, and POSTROUTING masquerades it.
	pkt = Packet{Protocol: "tcp", Src: nodeClient, Dst: netip.MustParseAddr("198.19.0.10"), DstPort: 80}
	outs, _ = fake.Trace("nat", "PREROUTING", pkt)
	for _, o := range outs {
		if o.Mark&masqMark == 0 {
			t.Errorf("off-cluster client not marked for masquerade: %v", o)
		}
		post, err := fake.Trace("nat", "POSTROUTING", Packet{Protocol: "tcp", Src: nodeClient, Dst: netip.MustParseAddr(strings.Split(o.DNAT, ":")[0]), DstPort: 8080, Mark: o.Mark})
		if err != nil || len(post) != 1 || post[0].Verdict != "MASQUERADE" {
			t.Errorf("marked packet in POSTROUTING: %v (err %v), want MASQUERADE", post, err)
		}
	}

	// Hairpin: an endpoint reaching its own service through the VIP is
	// marked when it lands on itself, and only then.
	self := netip.MustParseAddr("198.18.64.10")
	outs, _ = fake.Trace("nat", "PREROUTING", Packet{Protocol: "tcp", Src: self, Dst: netip.MustParseAddr("198.19.0.10"), DstPort: 80})
	for _, o := range outs {
		hairpin := strings.HasPrefix(o.DNAT, self.String()+":")
		if (o.Mark&masqMark != 0) != hairpin {
			t.Errorf("hairpin marking wrong for %v (hairpin=%v)", o, hairpin)
		}
	}

	// Unmarked traffic is not masqueraded.
	post, _ := fake.Trace("nat", "POSTROUTING", Packet{Protocol: "tcp", Src: podClient, Dst: self, DstPort: 8080})
	if len(post) != 1 || post[0].Verdict != "ACCEPT" {
		t.Errorf("unmarked packet in POSTROUTING: %v, want ACCEPT", post)
	}
}

func TestTraceAffinity(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "sticky", ClusterIP: "198.19.0.20", Port: 443, Affinity: true, Timeout: 600,
		Endpoints: []string{"198.18.64.20:8443", "198.18.65.20:8443"}})
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	outs, err := fake.Trace("nat", "PREROUTING", Packet{Protocol: "tcp", Src: podClient, Dst: netip.MustParseAddr("198.19.0.20"), DstPort: 443})
	if err != nil {
		t.Fatal(err)
	}
	if got := dnatTargets(outs); strings.Join(got, ",") != "198.18.64.20:8443,198.18.65.20:8443" {
		t.Errorf("affinity service reaches %v", got)
	}
	// Every endpoint chain records the client (recent --set) and every
	// service rule for an endpoint checks that endpoint's own list.
	nat := fake.Table("nat")
	for _, ep := range b.Snap.Endpoints[firstWithEndpoints(b.Snap, 2)] {
		sep := endpointChainName(firstWithEndpoints(b.Snap, 2), ep)
		rules := nat.Chains[sep].Rules
		last := rules[len(rules)-1].String()
		if !strings.Contains(last, "-m recent --name "+sep+" --set") {
			t.Errorf("%s does not record the client: %s", sep, last)
		}
		found := false
		for _, r := range nat.Chains[serviceChainName(firstWithEndpoints(b.Snap, 2))].Rules {
			if strings.Contains(r.String(), "--name "+sep+" --rcheck --seconds 600 --reap -j "+sep) {
				found = true
			}
		}
		if !found {
			t.Errorf("no recent --rcheck rule for %s with the 600s timeout", sep)
		}
	}
}

// internalTrafficPolicy Local: the cluster IP reaches this node's
// endpoints only, and is dropped (not rejected) where there are none; the
// NodePort still reaches every endpoint.
func TestTraceInternalTrafficPolicyLocal(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "mixed", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080, InternalLocal: true,
		Endpoints: []string{"198.18.64.30:8080"}, Remote: []string{"198.18.65.30:8080"}})
	b.Add(testsnap.Port{Name: "elsewhere", ClusterIP: "198.19.0.31", Port: 80, InternalLocal: true,
		Remote: []string{"198.18.65.31:8080"}})
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	trace := func(table, chain string, pkt Packet) []Outcome {
		t.Helper()
		outs, err := fake.Trace(table, chain, pkt)
		if err != nil {
			t.Fatal(err)
		}
		return outs
	}
	mixed := Packet{Protocol: "tcp", Src: podClient, Dst: netip.MustParseAddr("198.19.0.30"), DstPort: 80}
	if got := dnatTargets(trace("nat", "PREROUTING", mixed)); strings.Join(got, ",") != "198.18.64.30:8080" {
		t.Errorf("cluster IP with a local and a remote endpoint reaches %v, want only the local 198.18.64.30:8080", got)
	}
	np := Packet{Protocol: "tcp", Src: nodeClient, Dst: nodeIP, DstPort: 30080, LocalDst: true}
	if got := dnatTargets(trace("nat", "PREROUTING", np)); strings.Join(got, ",") != "198.18.64.30:8080,198.18.65.30:8080" {
		t.Errorf("NodePort reaches %v, want both endpoints (the policy is for the cluster IP)", got)
	}
	elsewhere := Packet{Protocol: "tcp", Src: podClient, Dst: netip.MustParseAddr("198.19.0.31"), DstPort: 80}
	if got := dnatTargets(trace("nat", "PREROUTING", elsewhere)); len(got) != 0 {
		t.Errorf("cluster IP without local endpoints reaches %v, want none", got)
	}
	if outs := trace("filter", "FORWARD", elsewhere); len(outs) != 1 || outs[0].Verdict != "DROP" {
		t.Errorf("cluster IP without local endpoints: filter FORWARD gives %v, want DROP", outs)
	}
}

// loadBalancerSourceRanges: an allowed source reaches the endpoints like
// an external IP's client, another is dropped (not rejected), and the
// ranges restrict neither the cluster IP, the NodePort nor external IPs.
func TestTraceLoadBalancerSourceRanges(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "lb", ClusterIP: "198.19.0.40", Port: 80, NodePort: 30080, ExternalIPs: []string{"198.19.200.1"},
		LoadBalancerIPs: []string{"198.19.201.1"}, SourceRanges: []string{"198.18.192.0/20"},
		Endpoints: []string{"198.18.64.40:8080"}, Remote: []string{"198.18.65.40:8080"}})
	p, fake := newFakeProxier(t)
	if err := p.Sync(withNode(b.Snap), fullSync()); err != nil {
		t.Fatal(err)
	}
	checkTraces(t, fake, b.Snap)
	trace := func(table, chain string, pkt Packet) []Outcome {
		t.Helper()
		outs, err := fake.Trace(table, chain, pkt)
		if err != nil {
			t.Fatal(err)
		}
		return outs
	}
	both := "198.18.64.40:8080,198.18.65.40:8080"
	lb := netip.MustParseAddr("198.19.201.1")
	allowed := Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.18.200.9"), Dst: lb, DstPort: 80}
	outs := trace("nat", "PREROUTING", allowed)
	if got := dnatTargets(outs); strings.Join(got, ",") != both || outs[0].Mark&masqMark == 0 {
		t.Errorf("allowed source reaches %v (%v), want both endpoints, masqueraded", got, outs)
	}
	denied := allowed
	denied.Src = foreignClient
	if got := dnatTargets(trace("nat", "PREROUTING", denied)); len(got) != 0 {
		t.Errorf("denied source reaches %v", got)
	}
	for _, chain := range []string{"INPUT", "FORWARD"} {
		if outs := trace("filter", chain, denied); len(outs) != 1 || outs[0].Verdict != "DROP" {
			t.Errorf("denied source: filter %s gives %v, want DROP", chain, outs)
		}
	}
	for _, dst := range []Packet{
		{Dst: netip.MustParseAddr("198.19.0.40"), DstPort: 80},
		{Dst: nodeIP, DstPort: 30080, LocalDst: true},
		{Dst: netip.MustParseAddr("198.19.200.1"), DstPort: 80},
	} {
		pkt := dst
		pkt.Protocol, pkt.Src = "tcp", foreignClient
		if got := dnatTargets(trace("nat", "PREROUTING", pkt)); strings.Join(got, ",") != both {
			t.Errorf("%s:%d from a source outside the load balancer's ranges reaches %v, want %s", pkt.Dst, pkt.DstPort, got, both)
		}
		if outs := trace("filter", "INPUT", pkt); len(outs) != 1 || outs[0].Verdict != "ACCEPT" {
			t.Errorf("%s:%d from a source outside the load balancer's ranges: filter INPUT gives %v, want ACCEPT", pkt.Dst, pkt.DstPort, outs)
		}
	}
}
