package iptables

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/proxymodes/proxymodes/harness/golden"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// newFakeProxier returns a proxier over a fresh Fake, masquerading
// off-cluster traffic for the test pod CIDR.
func newFakeProxier(t testing.TB) (*Proxier, *Fake) {
	t.Helper()
	fake := NewFake()
	p, err := New(Config{Backend: fake, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Fatal(err)
	}
	return p, fake
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

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden.Check(t, name+".golden", got)
}

// goldenCases are the representative snapshots whose whole first-sync
// batch is kept in testdata.
var goldenCases = []struct {
	name  string
	ports []testsnap.Port
}{
	{"no-endpoints", []testsnap.Port{{Name: "empty", PortName: "http", ClusterIP: "198.19.0.10", Port: 80, NodePort: 30080, ExternalIPs: []string{"198.19.200.1"}}}},
	{"one-endpoint", []testsnap.Port{{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80, Endpoints: []string{"198.18.64.10:8080"}}}},
	{"three-endpoints", []testsnap.Port{{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
		Endpoints: []string{"198.18.64.10:8080", "198.18.65.10:8080", "198.18.66.10:8080"}}}},
	{"affinity", []testsnap.Port{{Name: "sticky", ClusterIP: "198.19.0.20", Port: 443, Affinity: true, Timeout: 600,
		Endpoints: []string{"198.18.64.20:8443", "198.18.65.20:8443"}}}},
	{"nodeport", []testsnap.Port{{Name: "np", PortName: "http", ClusterIP: "198.19.0.30", Port: 80, NodePort: 30080,
		ExternalIPs: []string{"198.19.200.1"}, Endpoints: []string{"198.18.64.30:8080", "198.18.65.30:8080"}}}},
	{"udp", []testsnap.Port{{Name: "dns", PortName: "dns", Protocol: v1.ProtocolUDP, ClusterIP: "198.19.0.53", Port: 53,
		Endpoints: []string{"198.18.64.53:53", "198.18.65.53:53"}}}},
	{"loadbalancer", []testsnap.Port{{Name: "lb", PortName: "http", ClusterIP: "198.19.0.40", Port: 80, NodePort: 30080,
		LoadBalancerIPs: []string{"198.19.201.1"}, Endpoints: []string{"198.18.64.40:8080", "198.18.65.40:8080"}}}},
	// One range holds the node's address (withNode): the load balancer
	// IP is allowed as a source too.
	{"loadbalancer-source-ranges", []testsnap.Port{{Name: "lb", PortName: "http", ClusterIP: "198.19.0.41", Port: 80, NodePort: 30081,
		LoadBalancerIPs: []string{"198.19.201.2", "198.19.201.3"}, SourceRanges: []string{"198.18.0.0/24", "198.18.192.0/20"},
		Endpoints: []string{"198.18.64.41:8080", "198.18.65.41:8080"}}}},
	{"loadbalancer-local", []testsnap.Port{{Name: "lb", PortName: "http", ClusterIP: "198.19.0.42", Port: 80, NodePort: 30082,
		LoadBalancerIPs: []string{"198.19.201.4"}, SourceRanges: []string{"198.18.192.0/20"}, ExternalLocal: true,
		Endpoints: []string{"198.18.64.42:8080"}, Remote: []string{"198.18.65.42:8080"}}}},
	{"loadbalancer-no-endpoints", []testsnap.Port{{Name: "lb", PortName: "http", ClusterIP: "198.19.0.43", Port: 80, NodePort: 30083,
		LoadBalancerIPs: []string{"198.19.201.5"}, SourceRanges: []string{"198.18.192.0/20"}}}},
}

// withNode gives snap this node's object, whose address the load
// balancer firewall looks for in source ranges.
func withNode(snap *core.Snapshot) *core.Snapshot {
	snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{nodeIP}}
	return snap
}

func TestGoldenFullSync(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			b := testsnap.New()
			for _, p := range tc.ports {
				b.Add(p)
			}
			withNode(b.Snap)
			p, fake := newFakeProxier(t)
			if err := p.Sync(b.Snap, fullSync()); err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tc.name, p.LastBatch())
			// A second full sync over the state the first one made must
			// be accepted and converge to the same tables.
			before := fake.Dump()
			if err := p.Sync(b.Snap, fullSync()); err != nil {
				t.Fatalf("second full sync: %v", err)
			}
			if after := fake.Dump(); after != before {
				t.Errorf("second full sync changed the tables:\n%s\nvs\n%s", after, before)
			}
			checkTraces(t, fake, b.Snap)
		})
	}
}
