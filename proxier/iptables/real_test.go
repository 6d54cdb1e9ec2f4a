package iptables

import (
	"os"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// TestRealRestoreAndTrace applies the golden snapshots with the real
// iptables-restore (nft and legacy) in a scratch netns, reads the kernel's
// view back with iptables-save, loads that into a Fake and traces packets
// through it: the kernel must have understood the rules as we meant them.
// Then it checks that a partial sync applies and Cleanup leaves nothing.
func TestRealRestoreAndTrace(t *testing.T) {
	for _, v := range realVariants {
		t.Run(string(v), func(t *testing.T) {
			requireVariant(t, v)
			inScratchNetns(t, func(ex Exec) {
				be, err := NewBackend(ex, v)
				if err != nil {
					t.Error(err)
					return
				}
				b := testsnap.New()
				for _, tc := range goldenCases {
					for _, p := range tc.ports {
						p.Name = tc.name + "-" + p.Name
						p.ClusterIP = testsnap.ServiceIP(len(b.Snap.Services))
						if p.NodePort != 0 {
							p.NodePort += int32(len(b.Snap.Services))
						}
						if len(p.ExternalIPs) > 0 {
							// A fresh slice: goldenCases must not change.
							p.ExternalIPs = []string{testsnap.ServiceIP(1000 + len(b.Snap.Services))}
						}
						b.Add(p)
					}
				}
				withNode(b.Snap)
				p, err := New(Config{Backend: be, ClusterCIDR: testsnap.ClusterCIDR})
				if err != nil {
					t.Error(err)
					return
				}
				if err := p.Sync(b.Snap, fullSync()); err != nil {
					t.Errorf("full sync: %v", err)
					return
				}
				saved, err := be.Save()
				if err != nil {
					t.Error(err)
					return
				}
				if os.Getenv("PM_DUMP") != "" {
					t.Logf("iptables-%s-save:\n%s", v, saved)
				}
				kernel := NewFake()
				if err := kernel.Restore(saved); err != nil {
					t.Errorf("loading iptables-save output into the fake: %v\n%s", err, saved)
					return
				}
				checkTraces(t, kernel, b.Snap)

				// A second full sync must find our jumps in place and
				// not duplicate them.
				if err := p.Sync(b.Snap, fullSync()); err != nil {
					t.Errorf("second full sync: %v", err)
				}
				if strings.Contains(string(p.LastBatch()), "-I PREROUTING") {
					t.Errorf("second full sync re-inserted jump rules:\n%s", p.LastBatch())
				}

				// Partial sync: drop one endpoint of one service.
				name := firstWithEndpoints(b.Snap, 3)
				b.Snap.Endpoints[name] = b.Snap.Endpoints[name][1:]
				if err := p.Sync(b.Snap, partialSync(name.Name)); err != nil {
					t.Errorf("partial sync: %v", err)
				}
				if p.LastStats().DeletedChains != 1 {
					t.Errorf("partial sync deleted %d chains, want 1 (the removed endpoint's)", p.LastStats().DeletedChains)
				}

				if err := p.Cleanup(); err != nil {
					t.Errorf("cleanup: %v", err)
				}
				saved, _ = be.Save()
				if strings.Contains(string(saved), ChainPrefix) {
					t.Errorf("cleanup left rules behind:\n%s", saved)
				}
			})
		})
	}
}
