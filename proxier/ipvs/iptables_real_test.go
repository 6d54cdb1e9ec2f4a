package ipvs

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// TestRealIPTablesRules applies this mode's batches with the real
// iptables-restore (nft and legacy) in a scratch netns, with IPVS and the
// dummy device faked: it needs no ip_vs, so it runs on any Linux host. The
// kernel's view, read back with iptables-save and loaded into the fake,
// must mark and masquerade the same packets as the rules we rendered and
// drop the same sources on their way to a load balancer IP; a second full
// sync must not duplicate jumps; Cleanup must leave nothing.
func TestRealIPTablesRules(t *testing.T) {
	for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			if _, err := exec.LookPath(fmt.Sprintf("iptables-%s-restore", v)); err != nil {
				t.Skipf("iptables-%s-restore not installed", v)
			}
			netnstest.Run(t, iptables.OSExec{}, func(ex *netnstest.Guarded) {
				be, err := iptables.NewBackend(ex, v)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := be.Save(); err != nil {
					t.Errorf("iptables-%s unusable in this kernel: %v", v, err)
					return
				}
				e := &env{ipvs: NewFake(), links: NewFakeLinks(node1), ipt: iptables.NewFake(), sys: NewFakeSysctl()}
				p, err := New(Config{IPVS: e.ipvs, Links: e.links, IPTables: be, Sysctl: e.sys, ClusterCIDR: testsnap.ClusterCIDR})
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := webSnap()
				addLoadBalancers(b)
				if err := p.Sync(b.Snap, fullSync()); err != nil {
					t.Errorf("full sync: %v\n%s", err, p.LastBatch())
					return
				}
				saved, err := be.Save()
				if err != nil {
					t.Error(err)
					return
				}
				if err := e.ipt.Restore(saved); err != nil {
					t.Errorf("loading iptables-save output into the fake: %v\n%s", err, saved)
					return
				}
				// Trace through what the kernel holds, not what we sent.
				e.p = p
				traceMasquerade(t, e)
				traceFirewall(t, e, lbFirewallCases())

				if err := p.Sync(b.Snap, fullSync()); err != nil {
					t.Errorf("second full sync: %v", err)
				}
				if strings.Contains(string(p.LastBatch()), "-I ") {
					t.Errorf("second full sync re-inserted jump rules:\n%s", p.LastBatch())
				}
				if err := p.Cleanup(); err != nil {
					t.Errorf("cleanup: %v", err)
				}
				if saved, _ := be.Save(); strings.Contains(string(saved), ChainPrefix) {
					t.Errorf("cleanup left rules behind:\n%s", saved)
				}
			})
		})
	}
}
