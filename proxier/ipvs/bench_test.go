package ipvs

import (
	"fmt"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// BenchmarkSync measures the mode's own cost (diff and rendering) over the
// fakes, for n Services with 2 endpoints each: a full sync of converged
// state, and a partial sync after one endpoint changed.
func BenchmarkSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		snap := testsnap.Synthetic(n, 2)
		var names []core.ServicePortName
		for name := range snap.Services {
			names = append(names, name)
		}
		setup := func(b *testing.B) *Proxier {
			p, err := New(Config{IPVS: NewFake(), Links: NewFakeLinks(node1), IPTables: iptables.NewFake(), Sysctl: NewFakeSysctl(), ClusterCIDR: testsnap.ClusterCIDR})
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Sync(snap, fullSync()); err != nil {
				b.Fatal(err)
			}
			return p
		}
		b.Run(fmt.Sprintf("services=%d/kind=full", n), func(b *testing.B) {
			p := setup(b)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := p.Sync(snap, fullSync()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("services=%d/kind=one-endpoint", n), func(b *testing.B) {
			p := setup(b)
			name := names[0]
			eps := snap.Endpoints[name]
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				eps[1].Ready = i%2 == 0
				if err := p.Sync(snap, partialSync(name.Name)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
