package iptables

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// nullBackend accepts everything and holds nothing: it isolates render
// cost from iptables cost.
type nullBackend struct{}

func (nullBackend) Restore([]byte) error  { return nil }
func (nullBackend) Save() ([]byte, error) { return nil, nil }

// benchSizes are the Service counts benchmarked; $PM_BENCH_SIZES (e.g.
// "2000,5000") overrides them.
var benchSizes = func() []int {
	if env := os.Getenv("PM_BENCH_SIZES"); env != "" {
		var out []int
		for _, f := range strings.Split(env, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
				out = append(out, n)
			}
		}
		return out
	}
	return []int{1000, 10000}
}()

const benchEndpoints = 3

// BenchmarkRender measures building a full-sync batch for synthetic
// snapshots (3 endpoints per Service), without running iptables.
func BenchmarkRender(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap := testsnap.Synthetic(n, benchEndpoints)
			p, err := New(Config{Backend: nullBackend{}, ClusterCIDR: testsnap.ClusterCIDR})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := p.Sync(snap, fullSync()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(p.LastStats().BatchBytes), "batch-bytes")
			b.ReportMetric(float64(p.LastStats().NATRules+p.LastStats().FilterRules), "rules")
		})
	}
}

// BenchmarkSync measures full and one-service partial syncs with the real
// iptables-restore (nft and legacy) in a scratch network namespace. Each
// op is one sync; save-ms, render-ms and restore-ms split the last one.
//
//	go test ./proxier/iptables -run '^$' -bench BenchmarkSync -benchtime 3x
func BenchmarkSync(b *testing.B) {
	for _, v := range realVariants {
		for _, n := range benchSizes {
			for _, kind := range []string{"full", "partial"} {
				b.Run(fmt.Sprintf("backend=%s/services=%d/sync=%s", v, n, kind), func(b *testing.B) {
					if _, err := (OSExec{}).LookPath(fmt.Sprintf("iptables-%s-restore", v)); err != nil {
						b.Skipf("iptables-%s-restore not installed", v)
					}
					benchRealSync(b, v, n, kind == "full")
				})
			}
		}
	}
}

func benchRealSync(b *testing.B, v Variant, n int, full bool) {
	netnstest.Run(b, OSExec{}, func(ex *netnstest.Guarded) {
		be, err := NewBackend(ex, v)
		if err != nil {
			b.Error(err)
			return
		}
		p, err := New(Config{Backend: be, ClusterCIDR: testsnap.ClusterCIDR})
		if err != nil {
			b.Error(err)
			return
		}
		snap := testsnap.Synthetic(n, benchEndpoints)
		// The first sync creates everything; it is not timed.
		if err := p.Sync(snap, fullSync()); err != nil {
			b.Error(err)
			return
		}
		// Partial syncs alternate one Service between 3 and 2 endpoints.
		name := snap.SortedServicePorts()[n/2]
		all := snap.Endpoints[name]
		var save, render, restore time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			changes := fullSync()
			if !full {
				if i%2 == 0 {
					snap.Endpoints[name] = all[:2]
				} else {
					snap.Endpoints[name] = all
				}
				changes = partialSync(name.Name)
			}
			if err := p.Sync(snap, changes); err != nil {
				b.Error(err)
				return
			}
			st := p.LastStats()
			save += st.Save
			render += st.Render
			restore += st.Restore
		}
		b.StopTimer()
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
		b.ReportMetric(ms(save), "save-ms/op")
		b.ReportMetric(ms(render), "render-ms/op")
		b.ReportMetric(ms(restore), "restore-ms/op")
		b.ReportMetric(float64(p.LastStats().BatchBytes), "batch-bytes")
		if err := p.Cleanup(); err != nil {
			b.Error(err)
		}
	})
}
