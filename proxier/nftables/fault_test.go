//go:build pm_selftest

package nftables

import (
	"regexp"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/fault"
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
	if !strings.Contains(dump, "numgen random mod 4 vmap { 0 : goto ep-likvol2cx4mqxqi2 , 1 : goto ep-qmif6eyxntmtudfy , 2 : goto ep-zimgzvi5wmqaujrq , 3 : goto ep-zimgzvi5wmqaujrq }") {
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
