package iptables

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

func twoServices() *testsnap.Builder {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "a", ClusterIP: "198.19.0.1", Port: 80, Endpoints: []string{"198.18.64.1:80", "198.18.64.2:80"}})
	b.Add(testsnap.Port{Name: "b", ClusterIP: "198.19.0.2", Port: 80, Endpoints: []string{"198.18.64.3:80"}})
	return b
}

func TestPartialSyncRewritesOnlyChangedServices(t *testing.T) {
	b := twoServices()
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	a := firstWithEndpoints(b.Snap, 2)
	bName := firstWithEndpoints(b.Snap, 1)
	savesAfterFull := fake.Saves

	// Service a loses an endpoint; b is untouched.
	removed := b.Snap.Endpoints[a][0]
	b.Snap.Endpoints[a] = b.Snap.Endpoints[a][1:]
	if err := p.Sync(b.Snap, partialSync("a")); err != nil {
		t.Fatal(err)
	}
	batch := string(p.LastBatch())
	if fake.Saves != savesAfterFull {
		t.Errorf("partial sync ran iptables-save")
	}
	if !strings.Contains(batch, ":"+serviceChainName(a)+" ") {
		t.Errorf("partial sync did not rewrite the changed service's chain:\n%s", batch)
	}
	for _, c := range []string{serviceChainName(bName), endpointChainName(bName, b.Snap.Endpoints[bName][0])} {
		if strings.Contains(batch, ":"+c+" ") || strings.Contains(batch, "-A "+c+" ") {
			t.Errorf("partial sync touched unchanged chain %s:\n%s", c, batch)
		}
	}
	if strings.Contains(batch, "-I ") || strings.Contains(batch, "-D ") {
		t.Errorf("partial sync touched jump rules:\n%s", batch)
	}
	if !strings.Contains(batch, "-X "+endpointChainName(a, removed)) {
		t.Errorf("partial sync did not delete the removed endpoint's chain:\n%s", batch)
	}
	if got := p.LastStats().Rewritten; got != 1 {
		t.Errorf("rewrote %d service ports, want 1", got)
	}
	// Unchanged service b still works (its chains were kept), a reaches
	// only its remaining endpoint.
	checkTraces(t, fake, b.Snap)
	if _, ok := fake.Table("nat").Chains[endpointChainName(a, removed)]; ok {
		t.Errorf("stale endpoint chain still exists")
	}
}

func TestFailedSyncForcesFullSync(t *testing.T) {
	b := twoServices()
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	a := firstWithEndpoints(b.Snap, 2)
	b.Snap.Endpoints[a] = b.Snap.Endpoints[a][1:]

	fake.FailRestore = errors.New("iptables-restore: line 3 failed")
	err := p.Sync(b.Snap, partialSync("a"))
	if err == nil {
		t.Fatal("sync succeeded although iptables-restore failed")
	}
	if !strings.Contains(err.Error(), "partial") {
		t.Errorf("error does not say which sync failed: %v", err)
	}
	fake.FailRestore = nil

	// The next sync is asked to be partial and to rewrite nothing, but
	// must be full: the failed batch's changes are not in the kernel.
	saves := fake.Saves
	if err := p.Sync(b.Snap, partialSync()); err != nil {
		t.Fatal(err)
	}
	if !p.LastStats().Full {
		t.Fatalf("sync after a failure was partial")
	}
	if fake.Saves != saves+1 {
		t.Errorf("full sync after failure did not read the kernel state")
	}
	if p.LastStats().Rewritten != 2 {
		t.Errorf("full sync rewrote %d service ports, want 2", p.LastStats().Rewritten)
	}
	checkTraces(t, fake, b.Snap)

	// And after that success, partial syncs resume.
	if err := p.Sync(b.Snap, partialSync()); err != nil || p.LastStats().Full {
		t.Errorf("sync after recovery: full=%v err=%v, want partial", p.LastStats().Full, err)
	}
}

func TestFullSyncDeletesStaleChainsAndRepairsJumps(t *testing.T) {
	b := twoServices()
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	// Someone deletes our PREROUTING jump, and a chain of an old
	// proxier run lingers.
	if err := fake.Restore([]byte("*nat\n-D PREROUTING -m comment --comment \"proxymodes service portals\" -j PM-SERVICES\n:PM-SVC-OLDOLDOLDOLDOLDO - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	nat := fake.Table("nat")
	if _, ok := nat.Chains["PM-SVC-OLDOLDOLDOLDOLDO"]; ok {
		t.Errorf("full sync kept a stale service chain")
	}
	if n := len(nat.Chains["PREROUTING"].Rules); n != 1 {
		t.Errorf("PREROUTING has %d rules after repair, want 1", n)
	}
	checkTraces(t, fake, b.Snap)
}

func TestServiceDeletionLeavesNothing(t *testing.T) {
	b := twoServices()
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	empty := core.NewSnapshot()
	if err := p.Sync(empty, partialSync("a", "b")); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		for name, c := range fake.Table(table).Chains {
			if isServiceChain(name) {
				t.Errorf("%s: chain %s left after its service was deleted", table, name)
			}
			for _, r := range c.Rules {
				if strings.Contains(r.String(), "ns/a") || strings.Contains(r.String(), "ns/b") {
					t.Errorf("%s/%s: rule for a deleted service: %s", table, name, r)
				}
			}
		}
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	p, fake := newFakeProxier(t)
	// Foreign rules in the same tables must survive.
	if err := fake.Restore([]byte("*filter\n:OTHER - [0:0]\n-A INPUT -j OTHER\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(twoServices().Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	if strings.Contains(dump, ChainPrefix) {
		t.Errorf("cleanup left our rules:\n%s", dump)
	}
	if !strings.Contains(dump, "-A INPUT -j OTHER") {
		t.Errorf("cleanup removed a foreign rule:\n%s", dump)
	}
	// Cleanup on a clean system does nothing.
	n := len(fake.Restores)
	if err := p.Cleanup(); err != nil || len(fake.Restores) != n {
		t.Errorf("second cleanup: err=%v, restores %d -> %d", err, n, len(fake.Restores))
	}
}

func TestMasqueradeAll(t *testing.T) {
	fake := NewFake()
	p, err := New(Config{Backend: fake, MasqueradeAll: true})
	if err != nil {
		t.Fatal(err)
	}
	b := twoServices()
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	outs, _ := fake.Trace("nat", "PREROUTING", Packet{Protocol: "tcp", Src: podClient, Dst: b.Snap.Services[firstWithEndpoints(b.Snap, 1)].ClusterIP, DstPort: 80})
	if len(outs) != 1 || outs[0].Mark&masqMark == 0 {
		t.Errorf("with MasqueradeAll, pod traffic is not marked: %v", outs)
	}
}

func TestTerminatingEndpointsUsedOnlyWithoutReadyOnes(t *testing.T) {
	b := testsnap.New()
	name := b.Add(testsnap.Port{Name: "t", ClusterIP: "198.19.0.1", Port: 80, Endpoints: []string{"198.18.64.1:80", "198.18.64.2:80"}})
	eps := b.Snap.Endpoints[name]
	eps[0].Ready, eps[0].Terminating = false, true // serving, terminating
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	pkt := Packet{Protocol: "tcp", Src: podClient, Dst: b.Snap.Services[name].ClusterIP, DstPort: 80}
	outs, _ := fake.Trace("nat", "PREROUTING", pkt)
	if got := dnatTargets(outs); len(got) != 1 || got[0] != "198.18.64.2:80" {
		t.Errorf("with one ready endpoint, traffic goes to %v", got)
	}
	eps[1].Ready = false // not ready, not terminating: unusable
	if err := p.Sync(b.Snap, partialSync("t")); err != nil {
		t.Fatal(err)
	}
	outs, _ = fake.Trace("nat", "PREROUTING", pkt)
	if got := dnatTargets(outs); len(got) != 1 || got[0] != "198.18.64.1:80" {
		t.Errorf("with no ready endpoint, traffic goes to %v, want the serving terminating one", got)
	}
}

func lbServices() *testsnap.Builder {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "a", ClusterIP: "198.19.0.1", Port: 80, LoadBalancerIPs: []string{"198.19.201.1"},
		SourceRanges: []string{"198.18.192.0/20"}, Endpoints: []string{"198.18.64.1:80", "198.18.64.2:80"}})
	b.Add(testsnap.Port{Name: "b", ClusterIP: "198.19.0.2", Port: 80, LoadBalancerIPs: []string{"198.19.201.2"},
		Endpoints: []string{"198.18.64.3:80"}})
	return b
}

// touched returns the per-service nat chains of n the batch declares or
// appends to (the endpoint chains aside).
func touched(batch string, n core.ServicePortName) []string {
	var out []string
	for _, c := range []string{serviceChainName(n), externalChainName(n), firewallChainName(n)} {
		if strings.Contains(batch, ":"+c+" ") || strings.Contains(batch, "-A "+c+" ") {
			out = append(out, c)
		}
	}
	return out
}

// A Service's load balancer IPs and source ranges are rewritten by a
// partial sync of that Service alone, and its firewall chain goes when its
// ranges or the Service do.
func TestPartialSyncLoadBalancerChanges(t *testing.T) {
	b := lbServices()
	withNode(b.Snap)
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	checkTraces(t, fake, b.Snap)
	a, bb := firstWithEndpoints(b.Snap, 2), firstWithEndpoints(b.Snap, 1)
	sync := func(what string, names ...string) string {
		t.Helper()
		if err := p.Sync(b.Snap, partialSync(names...)); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		checkTraces(t, fake, b.Snap)
		for name := range fake.Table("nat").Chains {
			if isServiceChain(name) && !p.activeNAT.Has(name) {
				t.Errorf("%s: stale chain %s", what, name)
			}
		}
		return string(p.LastBatch())
	}
	svcA, svcB := *b.Snap.Services[a], *b.Snap.Services[bb]

	// a's ranges change: only a's chains are written.
	svcA.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("198.18.128.0/17")}
	b.Snap.Services[a] = &svcA
	batch := sync("new ranges", "a")
	if got := touched(batch, bb); len(got) != 0 {
		t.Errorf("new ranges of a rewrote b's chains %v:\n%s", got, batch)
	}
	if got := touched(batch, a); !slices.Contains(got, firewallChainName(a)) {
		t.Errorf("new ranges of a did not rewrite its firewall chain:\n%s", batch)
	}
	// The node is in 198.18.0.0/24 now: the load balancer IP is an
	// allowed source.
	if !strings.Contains(batch, "-s 198.19.201.1 -j "+externalChainName(a)) {
		t.Errorf("no rule for the node's traffic from the load balancer IP:\n%s", batch)
	}

	// a loses its ranges: its firewall chain goes, b is untouched.
	svcA2 := svcA
	svcA2.LoadBalancerSourceRanges = nil
	b.Snap.Services[a] = &svcA2
	batch = sync("no ranges", "a")
	if !strings.Contains(batch, "-X "+firewallChainName(a)) || len(touched(batch, bb)) != 0 {
		t.Errorf("dropping a's ranges: want %s deleted and b untouched:\n%s", firewallChainName(a), batch)
	}

	// b gets a range and a second load balancer IP.
	svcB.LoadBalancerIPs = append(slices.Clip(svcB.LoadBalancerIPs), netip.MustParseAddr("198.19.201.3"))
	svcB.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.192.0/20")}
	b.Snap.Services[bb] = &svcB
	batch = sync("b gets ranges", "b")
	if got := touched(batch, a); len(got) != 0 {
		t.Errorf("b's change rewrote a's chains %v", got)
	}
	if _, ok := fake.Table("nat").Chains[firewallChainName(bb)]; !ok {
		t.Errorf("b has ranges but no firewall chain")
	}

	// b is deleted: nothing of it is left, in either table.
	delete(b.Snap.Services, bb)
	delete(b.Snap.Endpoints, bb)
	sync("b deleted", "b")
	dump := fake.Dump()
	for _, s := range []string{serviceChainName(bb), externalChainName(bb), firewallChainName(bb), "ns/b", "198.19.201.2", "198.19.201.3"} {
		if strings.Contains(dump, s) {
			t.Errorf("%s of deleted b left:\n%s", s, dump)
		}
	}
}

// The node's addresses decide whether the load balancer IPs are allowed as
// sources; the tracker marks no Service changed when they change, so the
// next sync, even one with no changed Service, must rewrite the firewall
// chains.
func TestNodeAddressChangeRewritesFirewall(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "a", ClusterIP: "198.19.0.1", Port: 80, LoadBalancerIPs: []string{"198.19.201.1"},
		SourceRanges: []string{"198.18.0.0/24"}, Endpoints: []string{"198.18.64.1:80"}})
	other := b.Add(testsnap.Port{Name: "b", ClusterIP: "198.19.0.2", Port: 80, LoadBalancerIPs: []string{"198.19.201.2"},
		Endpoints: []string{"198.18.64.3:80"}})
	p, fake := newFakeProxier(t)
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	checkTraces(t, fake, b.Snap)
	fromLB := Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.19.201.1"), LocalSrc: true, Dst: netip.MustParseAddr("198.19.201.1"), DstPort: 80}
	if outs, _ := fake.Trace("filter", "OUTPUT", fromLB); len(outs) != 1 || outs[0].Verdict != "DROP" {
		t.Errorf("before the Node is known, the load balancer IP as a source: filter OUTPUT gives %v, want DROP", outs)
	}
	for _, step := range []struct {
		what string
		node *core.NodeInfo
	}{
		{"node seen", &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{nodeIP}}},
		{"node moved", &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{netip.MustParseAddr("198.18.1.1")}}},
	} {
		b.Snap.Node = step.node
		if err := p.Sync(b.Snap, partialSync()); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		if p.LastStats().Full || p.LastStats().Rewritten != 1 || len(touched(string(p.LastBatch()), other)) != 0 {
			t.Errorf("%s: stats %+v, want a partial sync rewriting a alone:\n%s", step.what, p.LastStats(), p.LastBatch())
		}
		checkTraces(t, fake, b.Snap)
	}
	if err := p.Sync(b.Snap, partialSync()); err != nil || p.LastStats().Rewritten != 0 {
		t.Errorf("unchanged node: rewrote %d (err %v), want 0", p.LastStats().Rewritten, err)
	}
}

// A proxier restarted over the rules of an earlier one deletes the
// firewall chain of a Service deleted meanwhile.
func TestRestartDeletesStaleFirewallChain(t *testing.T) {
	b := lbServices()
	first, fake := newFakeProxier(t)
	if err := first.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	a := firstWithEndpoints(b.Snap, 2)
	fw := firewallChainName(a)
	if _, ok := fake.Table("nat").Chains[fw]; !ok {
		t.Fatalf("no firewall chain %s for a:\n%s", fw, fake.Dump())
	}
	delete(b.Snap.Services, a)
	delete(b.Snap.Endpoints, a)
	second, err := New(Config{Backend: fake, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Sync(b.Snap, fullSync()); err != nil {
		t.Fatal(err)
	}
	if dump := fake.Dump(); strings.Contains(dump, fw) || strings.Contains(dump, "198.19.201.1") {
		t.Errorf("after a restart the deleted Service's firewall remains:\n%s", dump)
	}
	checkTraces(t, fake, b.Snap)
}
