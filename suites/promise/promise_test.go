package promise

import (
	"strings"
	"testing"
)

// TestTable pins the table to DESIGN.md's "What each mode promises".
func TestTable(t *testing.T) {
	want := map[string]struct {
		sel                  Selection
		aff, try, src, flows bool
	}{
		"userspace": {RoundRobin, true, true, false, false},
		"iptables":  {Random, true, false, true, true},
		"ipvs":      {RoundRobin, true, false, true, true},
		"nftables":  {Random, true, false, true, true},
	}
	if len(Table) != len(want) {
		t.Fatalf("table has %d modes, want %d", len(Table), len(want))
	}
	for mode, w := range want {
		p, err := For(mode)
		if err != nil {
			t.Fatal(err)
		}
		if p.Selection != w.sel || p.ClientIPAffinity != w.aff || p.Retry != w.try || p.PodSourceKept != w.src || p.FlowsOutliveProxier != w.flows {
			t.Errorf("%s: %s", mode, p.Summary())
		}
		if !p.Has(IPTables) || p.Basis == "" {
			t.Errorf("%s: every mode is checked in iptables and states its basis", mode)
		}
	}
}

func TestUnknownModeListsValidOnes(t *testing.T) {
	_, err := For("ebpf")
	if err == nil || !strings.Contains(err.Error(), "userspace, iptables, ipvs, nftables") {
		t.Fatalf("got %v", err)
	}
}

func TestClaim(t *testing.T) {
	p, _ := For("iptables")
	q, err := Claim(p, "selection=round-robin, retry=true")
	if err != nil {
		t.Fatal(err)
	}
	if q.Selection != RoundRobin || !q.Retry || !q.ClientIPAffinity || !strings.HasPrefix(q.Basis, "OVERRIDDEN") {
		t.Errorf("claim: %+v", q)
	}
	for _, bad := range []string{"selection=lc", "retry=maybe", "speed=fast", "retry"} {
		if _, err := Claim(p, bad); err == nil {
			t.Errorf("claim %q accepted", bad)
		}
	}
	if r, _ := Claim(p, ""); r.Basis != p.Basis {
		t.Error("empty claim changed the row")
	}
}
