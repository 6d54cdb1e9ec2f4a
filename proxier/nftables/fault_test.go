//go:build pm_selftest

package nftables

import (
	"maps"
	"regexp"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// The faults this mode implements itself: random-skewed gives the last
// endpoint two of n+1 numgen picks, no-endpoints-dropped drops instead of
// rejecting, hairpin-not-masqueraded leaves out the endpoints' hairpin
// marks.
func TestFaults(t *testing.T) {
	t.Cleanup(fault.Set(fault.RandomSkewed))
	p, fake := newFakeProxier(t)
	sync(t, p, webSnap().Snap, fullSync())
	dump := fake.Dump()
	if !strings.Contains(dump, `numgen random mod 4 == 0 goto ep-likvol2cx4mqxqi2
add rule ip proxymodes svc-zzbpzj6bf3am6xgk numgen random mod 3 == 0 goto ep-qmif6eyxntmtudfy
add rule ip proxymodes svc-zzbpzj6bf3am6xgk numgen random mod 2 == 0 goto ep-zimgzvi5wmqaujrq
add rule ip proxymodes svc-zzbpzj6bf3am6xgk goto ep-zimgzvi5wmqaujrq`) {
		t.Errorf("random-skewed: web's picks are not 1/4, 1/4, 1/2:\n%s", dump)
	}
	fault.Set(fault.NoEndpointsDropped)
	p, fake = newFakeProxier(t)
	sync(t, p, webSnap().Snap, fullSync())
	got := traced(t, fake, "filter-forward", Packet{Src: pod, Dst: emptyIP, DstPort: 80})
	if len(got) != 1 || got[0] != "drop" {
		t.Errorf("no-endpoints-dropped: a packet to a Service without endpoints is %v, want drop", got)
	}
	hairpin := regexp.MustCompile(`ip saddr \S+ jump ` + markMasqChain)
	if !hairpin.MatchString(dump) {
		t.Fatalf("no hairpin rule to take away: %s", dump)
	}
	fault.Set(fault.HairpinNotMasqueraded)
	p, fake = newFakeProxier(t)
	sync(t, p, webSnap().Snap, fullSync())
	if m := hairpin.FindAllString(fake.Dump(), -1); len(m) > 0 {
		t.Errorf("hairpin-not-masqueraded: %d hairpin rules remain: %v", len(m), m)
	}
}

// A proxier started over an earlier one's table (a restart) leaves what a
// fresh one would; with kernel-state-forgotten the chains of a Service
// deleted while it was down remain, and the suite's restart feature must
// catch them.
func TestFaultKernelStateForgotten(t *testing.T) {
	b := webSnap()
	without := *b.Snap
	without.Services = maps.Clone(b.Snap.Services)
	for n := range without.Services {
		if n.Name == "web" {
			delete(without.Services, n)
		}
	}
	want := fresh(t, &without)
	restart := func() string {
		t.Helper()
		first, fake := newFakeProxier(t)
		sync(t, first, b.Snap, fullSync())
		second, err := New(Config{NFT: fake, ClusterCIDR: testsnap.ClusterCIDR})
		if err != nil {
			t.Fatal(err)
		}
		sync(t, second, &without, fullSync())
		return fake.Dump()
	}
	if got := restart(); got != want {
		t.Fatalf("unbroken: a restart without web leaves\n%s\nwant\n%s", got, want)
	}
	t.Cleanup(fault.Set(fault.KernelStateForgotten))
	if got := restart(); got == want {
		t.Error("kernel-state-forgotten: the restarted proxier still removed web's chains")
	}
}
