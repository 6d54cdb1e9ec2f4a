package iptables

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// randomCases is how many seeded snapshots the randomized tests use.
const randomCases = 300

// changedBetween marks every Service present in either snapshot, the way
// the tracker would after replacing one state with the other.
func changedBetween(a, b *core.Snapshot) core.ChangeSet {
	c := core.ChangeSet{Services: sets.New[types.NamespacedName]()}
	for _, s := range []*core.Snapshot{a, b} {
		for n := range s.Services {
			c.Services.Insert(n.NamespacedName)
		}
	}
	return c
}

// FuzzSync renders a random snapshot into the fake, then moves to another
// random snapshot with a partial sync; after each step every service must
// route to exactly its usable endpoints. `go test` runs the seed corpus;
// `go test -fuzz FuzzSync ./proxier/iptables` explores further.
func FuzzSync(f *testing.F) {
	for seed := int64(0); seed < randomCases; seed++ {
		f.Add(seed, seed+randomCases)
	}
	f.Fuzz(func(t *testing.T, seed1, seed2 int64) {
		s1, s2 := testsnap.Random(seed1), withNode(testsnap.Random(seed2))
		// The node's object may come before the first sync or after it;
		// either way the firewall must follow its addresses.
		if seed1%2 == 0 {
			withNode(s1)
		}
		p, fake := newFakeProxier(t)
		if err := p.Sync(s1, fullSync()); err != nil {
			t.Fatalf("full sync: %v\n%s", err, p.LastBatch())
		}
		checkTraces(t, fake, s1)
		if err := p.Sync(s2, changedBetween(s1, s2)); err != nil {
			t.Fatalf("partial sync: %v\n%s", err, p.LastBatch())
		}
		checkTraces(t, fake, s2)
		// Nothing of s1's services may survive the partial sync.
		for name := range fake.Table("nat").Chains {
			if isServiceChain(name) && !p.activeNAT.Has(name) {
				t.Errorf("stale chain %s after partial sync", name)
			}
		}
	})
}

// TestRandomBatchesWithRealIptables feeds the batches of randomized
// snapshots to the real iptables-restore, nft and legacy, in a scratch
// network namespace: every full batch must pass --test, and every tenth
// seed is applied for real, followed by a partial sync to another
// snapshot, and the kernel's rules are traced.
func TestRandomBatchesWithRealIptables(t *testing.T) {
	cases := randomCases
	if testing.Short() {
		cases = 30
	}
	for _, v := range realVariants {
		t.Run(string(v), func(t *testing.T) {
			requireVariant(t, v)
			inScratchNetns(t, func(ex Exec) {
				be, err := NewBackend(ex, v)
				if err != nil {
					t.Error(err)
					return
				}
				for seed := int64(0); seed < int64(cases); seed++ {
					snap := testsnap.Random(seed)
					p, _ := newFakeProxier(t)
					if err := p.Sync(snap, fullSync()); err != nil {
						t.Errorf("seed %d: fake sync: %v", seed, err)
						continue
					}
					if err := be.Test(p.LastBatch()); err != nil {
						t.Errorf("seed %d: iptables-%s-restore --test rejected the batch: %v%s", seed, v, err, failingLines(err, p.LastBatch()))
						continue
					}
					if seed%10 != 0 {
						continue
					}
					real, err := New(Config{Backend: be, ClusterCIDR: testsnap.ClusterCIDR})
					if err != nil {
						t.Error(err)
						return
					}
					next := withNode(testsnap.Random(seed + 100000))
					if err := real.Sync(snap, fullSync()); err != nil {
						t.Errorf("seed %d: real full sync: %v", seed, err)
						continue
					}
					if err := real.Sync(next, changedBetween(snap, next)); err != nil {
						t.Errorf("seed %d: real partial sync: %v", seed, err)
						continue
					}
					saved, err := be.Save()
					if err != nil {
						t.Error(err)
						return
					}
					kernel := NewFake()
					if err := kernel.Restore(saved); err != nil {
						t.Errorf("seed %d: loading iptables-save output: %v", seed, err)
						continue
					}
					checkTraces(t, kernel, next)
					if err := real.Cleanup(); err != nil {
						t.Errorf("seed %d: cleanup: %v", seed, err)
					}
				}
			})
		})
	}
}
