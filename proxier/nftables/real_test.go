package nftables

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// TestRealKernel applies the rules with the real nft in a scratch network
// namespace: the kernel must take a full sync, a partial one and a
// restart's full sync, list what the Fake says it should, leave a table
// that is not ours alone, and Cleanup must remove ours.
func TestRealKernel(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is not installed (Debian package nftables; make deps installs it): %v", err)
	}
	netnstest.Run(t, iptables.OSExec{}, func(*netnstest.Guarded) {
		ctx := context.Background()
		other, err := knftables.New(knftables.IPv4Family, "not-ours")
		if err != nil {
			t.Error(err)
			return
		}
		tx := other.NewTransaction()
		tx.Add(&knftables.Table{})
		tx.Add(&knftables.Chain{Name: "keep"})
		tx.Add(&knftables.Rule{Chain: "keep", Rule: "ip daddr 198.19.0.10 counter"})
		if err := other.Run(ctx, tx); err != nil {
			t.Error(err)
			return
		}

		nft, err := knftables.New(knftables.IPv4Family, TableName)
		if err != nil {
			t.Error(err)
			return
		}
		p, err := New(Config{NFT: nft, ClusterCIDR: testsnap.ClusterCIDR})
		if err != nil {
			t.Error(err)
			return
		}
		b := webSnap()
		if err := p.Sync(b.Snap, fullSync()); err != nil {
			t.Errorf("full sync: %v", err)
			return
		}
		web := b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
			Endpoints: []string{"198.18.64.10:8080", "198.18.67.10:8080"}})
		// externalTrafficPolicy Local, with and without an endpoint here:
		// the kernel must take the external chain's fib rules in chains
		// both nat-prerouting and nat-output reach.
		b.Add(testsnap.Port{Name: "etp-local", ClusterIP: "198.19.0.70", Port: 80, NodePort: 30070, ExternalIPs: []string{"198.19.200.70"},
			ExternalLocal: true, Affinity: true, Endpoints: []string{"198.18.64.70:8080"}, Remote: []string{"198.18.65.70:8080"}})
		b.Add(testsnap.Port{Name: "etp-elsewhere", ClusterIP: "198.19.0.71", Port: 80, NodePort: 30071, ExternalIPs: []string{"198.19.200.71"},
			ExternalLocal: true, InternalLocal: true, Remote: []string{"198.18.65.71:8080"}})
		if err := p.Sync(b.Snap, changed(b.Snap)); err != nil {
			t.Errorf("partial sync after %s changed: %v\n%s", web, err, p.LastTransaction())
			return
		}
		p2, _ := New(Config{NFT: nft, ClusterCIDR: testsnap.ClusterCIDR})
		small := testsnap.Synthetic(3, 2)
		if err := p2.Sync(small, changed()); err != nil {
			t.Errorf("a restarted proxier's full sync: %v\n%s", err, p2.LastTransaction())
			return
		}
		// What the kernel holds is what the Fake holds after the same
		// full sync.
		fake := knftables.NewFake(knftables.IPv4Family, TableName)
		pf, _ := New(Config{NFT: fake, ClusterCIDR: testsnap.ClusterCIDR})
		if err := pf.Sync(small, fullSync()); err != nil {
			t.Error(err)
			return
		}
		want, _ := fake.ListAll(ctx)
		got, err := nft.ListAll(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		for _, kind := range []string{"chain", "set", "map"} {
			if g, w := strings.Join(sorted(got[kind]), " "), strings.Join(sorted(want[kind]), " "); g != w {
				t.Errorf("the kernel's %ss:\n  %s\nwant:\n  %s", kind, g, w)
			}
		}
		for _, m := range []string{serviceIPsMap, noEndpointServices} {
			ge, _ := nft.ListElements(ctx, "map", m)
			we, _ := fake.ListElements(ctx, "map", m)
			if len(ge) != len(we) {
				t.Errorf("map %s holds %d elements in the kernel, want %d", m, len(ge), len(we))
			}
		}

		if err := p2.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := nft.ListAll(ctx); !knftables.IsNotFound(err) {
			t.Errorf("after cleanup, listing our table: %v (want not found)", err)
		}
		if rules, err := other.ListRules(ctx, "keep"); err != nil || len(rules) != 1 {
			t.Errorf("the table that is not ours: %d rules, %v; want its 1 rule untouched", len(rules), err)
		}
	})
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}
