package nftables

import (
	"context"
	"fmt"
	"testing"

	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/knftables"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// svcAt describes Service i of a sweep-shaped snapshot: two endpoints,
// every tenth Service with a NodePort and every seventh with affinity, so
// that each kind of per-Service object is present at scale.
func svcAt(i int, endpoints ...string) testsnap.Port {
	p := testsnap.Port{Name: fmt.Sprintf("svc-%05d", i), PortName: "http", Port: 80,
		ClusterIP: fmt.Sprintf("198.19.%d.%d", i/250, 1+i%250), Endpoints: endpoints}
	if i%10 == 0 {
		p.NodePort = int32(30000 + i%2000)
	}
	if i%7 == 0 {
		p.Affinity, p.Timeout = true, 600
	}
	if p.Endpoints == nil {
		p.Endpoints = []string{fmt.Sprintf("198.18.64.%d:8080", 1+i%250), fmt.Sprintf("198.18.65.%d:8080", 1+i%250)}
	}
	return p
}

// unapplied takes transactions without applying them. knftables' Fake
// looks elements up linearly, which makes a 10k-Service full sync take
// ~16 s; the size of a transaction does not need the table it applies to
// (TestRandomPartialSyncsMatchAFullSync checks the contents).
type unapplied struct{ *knftables.Fake }

func (unapplied) Run(context.Context, *knftables.Transaction) error { return nil }

// endpointChangeOps programs n Services with a full sync, moves one
// Service's second endpoint, and returns the stats of the partial sync
// that applies the move.
func endpointChangeOps(t *testing.T, n int) SyncStats {
	t.Helper()
	p, err := New(Config{NFT: unapplied{knftables.NewFake(knftables.IPv4Family, TableName)}, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Fatal(err)
	}
	b := testsnap.New()
	for i := 0; i < n; i++ {
		b.Add(svcAt(i))
	}
	sync(t, p, b.Snap, fullSync())
	moved := b.Add(svcAt(70, "198.18.64.71:8080", "198.18.66.99:8080")) // NodePort and affinity
	sync(t, p, b.Snap, core.ChangeSet{Services: sets.New(moved.NamespacedName)})
	return p.LastStats()
}

// The proxier never writes the whole ruleset for an endpoint change: the
// transaction for one moved endpoint has exactly as many operations at 10k
// Services as at 100 (O(changed), not O(Services)).
func TestEndpointChangeCostDoesNotGrowWithServices(t *testing.T) {
	small := endpointChangeOps(t, 100)
	large := endpointChangeOps(t, 10000)
	if large.Full || small.Full {
		t.Fatalf("the endpoint change ran a full sync (100: %+v, 10k: %+v)", small, large)
	}
	if large.Operations != small.Operations || large.Rewritten != 1 {
		t.Errorf("one endpoint change: %d operations at 10k Services, %d at 100 (rewritten %d ports); want the same, for 1 port",
			large.Operations, small.Operations, large.Rewritten)
	}
	t.Logf("one endpoint change: %d operations at 100 and at 10k Services", large.Operations)
}
