//go:build pm_selftest

package server

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/metrics"
)

// In a self-test build the server hands the mode the faulty snapshot and,
// for stale-conntrack-kept, never calls the conntrack cleaner; the
// tracker's own state stays right.
func TestFaultsReachTheMode(t *testing.T) {
	for _, c := range []struct {
		f          fault.Fault
		cleanerRan bool
		nodePort   int32
	}{
		{fault.StaleConntrackKept, false, 30080},
		{fault.NodePortIgnored, true, 0},
	} {
		t.Cleanup(fault.Set(c.f)) // the other tests of the package run unbroken
		clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		mode := &recordingMode{}
		ct := &stubCleaner{}
		p, err := New(Config{Mode: mode, SyncPeriod: time.Hour, Metrics: metrics.New(), Health: NewHealth(clk, time.Minute), Conntrack: ct, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		svc := svcObj("a", "198.19.0.1")
		svc.Spec.Type = "NodePort"
		svc.Spec.Ports[0].NodePort = 30080
		p.Tracker().UpsertService(svc)
		if err := p.SyncOnce(); err != nil {
			t.Fatal(err)
		}
		_, snap := mode.last()
		for _, sp := range snap.Services {
			if sp.NodePort != c.nodePort {
				t.Errorf("%s: the mode got NodePort %d, want %d", c.f, sp.NodePort, c.nodePort)
			}
		}
		if ran := len(ct.got) > 0; ran != c.cleanerRan {
			t.Errorf("%s: conntrack cleaner ran: %t, want %t", c.f, ran, c.cleanerRan)
		}
	}
}
