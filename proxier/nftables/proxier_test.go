package nftables

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/knftables"

	"github.com/proxymodes/proxymodes/harness/golden"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

func newFakeProxier(t testing.TB) (*Proxier, *knftables.Fake) {
	t.Helper()
	fake := knftables.NewFake(knftables.IPv4Family, TableName)
	p, err := New(Config{NFT: fake, ClusterCIDR: testsnap.ClusterCIDR, KeepTransactions: true})
	if err != nil {
		t.Fatal(err)
	}
	return p, fake
}

func fullSync() core.ChangeSet {
	return core.ChangeSet{Full: true, Services: sets.New[types.NamespacedName]()}
}

func changed(snaps ...*core.Snapshot) core.ChangeSet {
	c := core.ChangeSet{Services: sets.New[types.NamespacedName]()}
	for _, s := range snaps {
		for n := range s.Services {
			c.Services.Insert(n.NamespacedName)
		}
	}
	return c
}

func sync(t *testing.T, p *Proxier, snap *core.Snapshot, c core.ChangeSet) {
	t.Helper()
	if err := p.Sync(snap, c); err != nil {
		t.Fatalf("sync: %v\ntransaction:\n%s", err, p.LastTransaction())
	}
}

// fresh is the table a full sync of snap writes into an empty kernel: what
// any sequence of syncs that ends in snap must leave.
func fresh(t *testing.T, snap *core.Snapshot) string {
	t.Helper()
	p, fake := newFakeProxier(t)
	sync(t, p, snap, fullSync())
	return fake.Dump()
}

func webSnap() *testsnap.Builder {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.65.10:8080", "198.18.66.10:8080"}})
	b.Add(testsnap.Port{Name: "np", PortName: "http", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080,
		ExternalIPs: []string{"198.19.200.1"}, Endpoints: []string{"198.18.64.30:8080"}})
	b.Add(testsnap.Port{Name: "sticky", ClusterIP: "198.19.0.20", Port: 443, Affinity: true, Timeout: 600,
		Endpoints: []string{"198.18.64.20:8443", "198.18.65.20:8443"}})
	b.Add(testsnap.Port{Name: "dns", PortName: "dns", Protocol: v1.ProtocolUDP, ClusterIP: "198.19.0.53", Port: 53,
		Endpoints: []string{"198.18.64.53:53"}})
	b.Add(testsnap.Port{Name: "empty", PortName: "http", ClusterIP: "198.19.0.40", Port: 80, NodePort: 30090})
	return b
}

// Load balancer IPs: without source ranges; with ranges, one of which
// holds the node's address (so the load balancer IPs are let through as
// sources too); with externalTrafficPolicy Local; without endpoints; and
// Local without an endpoint on this node.
func lbSnap() *testsnap.Builder {
	b := testsnap.New()
	b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{nodeIP}}
	b.Add(testsnap.Port{Name: "lb", PortName: "http", ClusterIP: "198.19.0.80", Port: 80, NodePort: 30080,
		LoadBalancerIPs: []string{"198.19.250.1"}, Endpoints: []string{"198.18.64.80:8080"}, Remote: []string{"198.18.65.80:8080"}})
	b.Add(testsnap.Port{Name: "lb-ranges", PortName: "http", ClusterIP: "198.19.0.81", Port: 80, NodePort: 30081,
		LoadBalancerIPs: []string{"198.19.250.2", "198.19.250.3"}, SourceRanges: []string{"203.0.113.0/24", "198.18.0.0/24"},
		Endpoints: []string{"198.18.64.81:8080"}, Remote: []string{"198.18.65.81:8080"}})
	b.Add(testsnap.Port{Name: "lb-local", PortName: "http", ClusterIP: "198.19.0.82", Port: 80, NodePort: 30082, ExternalLocal: true,
		LoadBalancerIPs: []string{"198.19.250.4"}, SourceRanges: []string{"203.0.113.0/24", "198.18.64.0/18"},
		Endpoints: []string{"198.18.64.82:8080"}, Remote: []string{"198.18.65.82:8080"}})
	b.Add(testsnap.Port{Name: "lb-empty", PortName: "http", ClusterIP: "198.19.0.83", Port: 80, NodePort: 30083,
		LoadBalancerIPs: []string{"198.19.250.5"}, SourceRanges: []string{"203.0.113.0/24"}})
	b.Add(testsnap.Port{Name: "lb-elsewhere", PortName: "http", ClusterIP: "198.19.0.84", Port: 80, NodePort: 30084, ExternalLocal: true,
		LoadBalancerIPs: []string{"198.19.250.6"}, Remote: []string{"198.18.65.84:8080"}})
	return b
}

// The whole table for a representative snapshot, kept in testdata: a
// change to the rules shows in review.
func TestFullSyncGolden(t *testing.T) {
	golden.Check(t, "web.golden", []byte(fresh(t, webSnap().Snap)))
}

func TestLoadBalancerGolden(t *testing.T) {
	golden.Check(t, "lb.golden", []byte(fresh(t, lbSnap().Snap)))
}

// A Service's source ranges change: only its firewall chain and elements
// are rewritten; dropping the ranges removes them, and dropping the load
// balancer IPs leaves nothing of them.
func TestLoadBalancerChanges(t *testing.T) {
	p, fake := newFakeProxier(t)
	b := lbSnap()
	sync(t, p, b.Snap, fullSync())
	port := testsnap.Port{Name: "lb-ranges", PortName: "http", ClusterIP: "198.19.0.81", Port: 80, NodePort: 30081,
		LoadBalancerIPs: []string{"198.19.250.2", "198.19.250.3"}, SourceRanges: []string{"192.0.2.0/24"},
		Endpoints: []string{"198.18.64.81:8080"}, Remote: []string{"198.18.65.81:8080"}}
	n := b.Add(port)
	sync(t, p, b.Snap, core.ChangeSet{Services: sets.New(n.NamespacedName)})
	if tx := p.LastTransaction(); strings.Contains(tx, "ns/lb:") || strings.Contains(tx, "ns/lb-local") || strings.Contains(tx, "ns/lb-empty") {
		t.Errorf("the partial sync for ns/lb-ranges touched other Services:\n%s", tx)
	}
	dump := fake.Dump()
	// The node's address is in no range now: the load balancer IPs are
	// not let through as sources any more.
	if !strings.Contains(dump, "ip saddr != { 192.0.2.0/24 } drop") || strings.Contains(dump, "203.0.113.0/24 , 198.18.0.0/24") {
		t.Errorf("after the ranges changed:\n%s", dump)
	}
	if want := fresh(t, b.Snap); dump != want {
		t.Errorf("after the ranges changed:\n%s\nwant:\n%s", dump, want)
	}

	port.SourceRanges = nil
	b.Add(port)
	sync(t, p, b.Snap, core.ChangeSet{Services: sets.New(n.NamespacedName)})
	if dump, want := fake.Dump(), fresh(t, b.Snap); dump != want || strings.Contains(dump, "192.0.2.0/24") {
		t.Errorf("after the ranges went:\n%s\nwant:\n%s", dump, want)
	}

	port.LoadBalancerIPs = nil
	b.Add(port)
	sync(t, p, b.Snap, core.ChangeSet{Services: sets.New(n.NamespacedName)})
	dump = fake.Dump()
	for _, gone := range []string{"198.19.250.2", "198.19.250.3"} {
		if strings.Contains(dump, gone) {
			t.Errorf("the table still mentions %s after the load balancer went:\n%s", gone, dump)
		}
	}
	if want := fresh(t, b.Snap); dump != want {
		t.Errorf("after the load balancer went:\n%s\nwant:\n%s", dump, want)
	}
}

// Whether a firewall chain lets the load balancer IP through as a source
// depends on the node's addresses, and the tracker reports no Service
// changed when only the Node did: a partial sync must still rewrite the
// firewall chains, and only them.
func TestNodeAddressChangeRewritesFirewalls(t *testing.T) {
	p, fake := newFakeProxier(t)
	b := lbSnap()
	node := b.Snap.Node
	b.Snap.Node = nil // not seen yet at the first sync
	sync(t, p, b.Snap, fullSync())
	if strings.Contains(fake.Dump(), "198.18.0.0/24 , 198.19.250.2") {
		t.Fatalf("the load balancer IPs were let through before the node's address was known:\n%s", fake.Dump())
	}
	b.Snap.Node = node
	sync(t, p, b.Snap, changed())
	if st := p.LastStats(); st.Full || st.Rewritten != 3 {
		t.Errorf("stats %+v: want a partial sync rewriting the 3 ports with source ranges", st)
	}
	if got, want := fake.Dump(), fresh(t, b.Snap); got != want {
		t.Errorf("after the node's address showed up:\n%s\nwant:\n%s", got, want)
	}
	sync(t, p, b.Snap, changed())
	if st := p.LastStats(); st.Rewritten != 0 {
		t.Errorf("stats %+v: a sync with neither a Service nor the node changed rewrote ports", st)
	}
}

func TestSecondFullSyncChangesNothing(t *testing.T) {
	p, fake := newFakeProxier(t)
	snap := webSnap().Snap
	sync(t, p, snap, fullSync())
	before := fake.Dump()
	sync(t, p, snap, fullSync())
	if got := fake.Dump(); got != before {
		t.Errorf("a second full sync changed the table:\n%s\nwant:\n%s", got, before)
	}
}

// A partial sync rewrites only the changed Service, and leaves the table
// as a full sync of the new state would.
func TestPartialSyncTouchesOnlyTheChangedService(t *testing.T) {
	p, fake := newFakeProxier(t)
	b := webSnap()
	sync(t, p, b.Snap, fullSync())

	web := b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.67.10:8080"}})
	c := core.ChangeSet{Services: sets.New(web.NamespacedName)}
	sync(t, p, b.Snap, c)
	tx := p.LastTransaction()
	for _, other := range []string{"ns/np:http", "ns/sticky", "ns/dns:dns", "ns/empty:http"} {
		if strings.Contains(tx, other) {
			t.Errorf("the partial sync for ns/web touched %s:\n%s", other, tx)
		}
	}
	if st := p.LastStats(); st.Full || st.Rewritten != 1 || st.Deleted != 2 {
		t.Errorf("stats %+v: want a partial sync rewriting 1 port and deleting 2 endpoint chains", st)
	}
	if got, want := fake.Dump(), fresh(t, b.Snap); got != want {
		t.Errorf("after the partial sync:\n%s\nwant (a fresh full sync):\n%s", got, want)
	}
}

func TestDeletedServiceLeavesNothing(t *testing.T) {
	p, fake := newFakeProxier(t)
	b := webSnap()
	sync(t, p, b.Snap, fullSync())
	old := core.NewSnapshot()
	for n, s := range b.Snap.Services {
		if n.Name == "np" || n.Name == "sticky" {
			old.Services[n] = s
			delete(b.Snap.Services, n)
			delete(b.Snap.Endpoints, n)
		}
	}
	sync(t, p, b.Snap, changed(old))
	dump := fake.Dump()
	for _, gone := range []string{"198.19.0.30", "198.19.200.1", "30080", "198.19.0.20", "affinity-", "ns/np", "ns/sticky"} {
		if strings.Contains(dump, gone) {
			t.Errorf("the table still mentions %s after its Service was deleted:\n%s", gone, dump)
		}
	}
	if want := fresh(t, b.Snap); dump != want {
		t.Errorf("after deleting two Services:\n%s\nwant:\n%s", dump, want)
	}
}

// A deleted load balancer Service takes its firewall chain and elements
// with it, with and without endpoints.
func TestDeletedLoadBalancerLeavesNothing(t *testing.T) {
	p, fake := newFakeProxier(t)
	b := lbSnap()
	sync(t, p, b.Snap, fullSync())
	old := core.NewSnapshot()
	for n, s := range b.Snap.Services {
		if n.Name != "lb" {
			old.Services[n] = s
			delete(b.Snap.Services, n)
			delete(b.Snap.Endpoints, n)
		}
	}
	sync(t, p, b.Snap, changed(old))
	dump := fake.Dump()
	for _, gone := range []string{"chain ip proxymodes " + fwChainPrefix, "element ip proxymodes firewall-ips", "198.19.250.2", "198.19.250.5", "203.0.113.0/24"} {
		if strings.Contains(dump, gone) {
			t.Errorf("the table still holds %q after the Services with source ranges were deleted:\n%s", gone, dump)
		}
	}
	if want := fresh(t, b.Snap); dump != want {
		t.Errorf("after deleting them:\n%s\nwant:\n%s", dump, want)
	}
}

// Any sequence of partial syncs ends where one full sync of the last
// state would: the partial bookkeeping never leaves or misses anything.
// Each state's table also passes the trace oracle.
func TestRandomPartialSyncsMatchAFullSync(t *testing.T) {
	for seed := int64(1); seed <= 40; seed++ {
		p, fake := newFakeProxier(t)
		prev := withNode(testsnap.Random(seed), seed)
		sync(t, p, prev, fullSync())
		checkTraces(t, fake, prev)
		for step := int64(1); step <= 4; step++ {
			next := withNode(testsnap.Random(seed*100+step), seed+step)
			sync(t, p, next, changed(prev, next))
			if got, want := fake.Dump(), fresh(t, next); got != want {
				t.Fatalf("seed %d step %d: partial sync left:\n%s\nwant:\n%s", seed, step, got, want)
			}
			checkTraces(t, fake, next)
			prev = next
		}
	}
}

// withNode gives two of three random snapshots a Node object with this
// node's address, which many of the random source ranges hold: syncs go
// from a snapshot without to one with, and between two with.
func withNode(snap *core.Snapshot, i int64) *core.Snapshot {
	if i%3 != 0 {
		snap.Node = &core.NodeInfo{Name: snap.NodeName, Addresses: []netip.Addr{nodeIP}}
	}
	return snap
}

// A restarted proxier knows nothing of the table: its first (full) sync
// removes whatever the old process left that is not wanted now.
func TestFirstSyncAfterRestartRemovesLeftovers(t *testing.T) {
	p, fake := newFakeProxier(t)
	sync(t, p, webSnap().Snap, fullSync())
	p2, err := New(Config{NFT: fake, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Fatal(err)
	}
	small := testsnap.Synthetic(2, 1)
	sync(t, p2, small, core.ChangeSet{Services: sets.New[types.NamespacedName]()})
	if !p2.LastStats().Full {
		t.Error("a new proxier's first sync was not full")
	}
	if got, want := fake.Dump(), fresh(t, small); got != want {
		t.Errorf("after a restart:\n%s\nwant:\n%s", got, want)
	}
}

// The timeout is a property of the set that nft cannot change: a new
// timeout must give a new set, and the old one must go.
func TestAffinityTimeoutChange(t *testing.T) {
	p, fake := newFakeProxier(t)
	b := webSnap()
	sync(t, p, b.Snap, fullSync())
	sticky := b.Add(testsnap.Port{Name: "sticky", ClusterIP: "198.19.0.20", Port: 443, Affinity: true, Timeout: 30,
		Endpoints: []string{"198.18.64.20:8443", "198.18.65.20:8443"}})
	sync(t, p, b.Snap, core.ChangeSet{Services: sets.New(sticky.NamespacedName)})
	dump := fake.Dump()
	if strings.Contains(dump, "-600 ") || !strings.Contains(dump, "timeout 30s") {
		t.Errorf("after the timeout went from 600 s to 30 s:\n%s", dump)
	}
}

func TestCleanupRemovesTheTable(t *testing.T) {
	p, fake := newFakeProxier(t)
	sync(t, p, webSnap().Snap, fullSync())
	if err := p.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if d := fake.Dump(); d != "" {
		t.Errorf("after cleanup:\n%s", d)
	}
	if err := p.Cleanup(); err != nil {
		t.Errorf("a second cleanup (no table): %v", err)
	}
}

// A transaction's text is kept only when asked for or when it failed: at
// 30k Services a full sync's is 35 MiB, live between syncs otherwise.
func TestTransactionTextKeptOnlyWhenAskedOrFailed(t *testing.T) {
	nft := &failing{Fake: knftables.NewFake(knftables.IPv4Family, TableName)}
	p, err := New(Config{NFT: nft, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Fatal(err)
	}
	sync(t, p, webSnap().Snap, fullSync())
	if tx := p.LastTransaction(); tx != "" {
		t.Errorf("a successful sync kept its transaction (%d bytes) without KeepTransactions", len(tx))
	}
	nft.fail = true
	if err := p.Sync(webSnap().Snap, fullSync()); err == nil {
		t.Fatal("the sync succeeded though nft failed")
	}
	if !strings.Contains(p.LastTransaction(), "add chain") {
		t.Errorf("a failed sync's transaction was not kept: %q", p.LastTransaction())
	}
}

// failing is a Fake whose transactions fail once fail is set.
type failing struct {
	*knftables.Fake
	fail bool
}

func (f *failing) Run(ctx context.Context, tx *knftables.Transaction) error {
	if f.fail {
		return errors.New("nft: injected failure")
	}
	return f.Fake.Run(ctx, tx)
}
