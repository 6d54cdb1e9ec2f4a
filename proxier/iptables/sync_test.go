package iptables

import (
	"errors"
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
