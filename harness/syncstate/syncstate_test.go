package syncstate

import (
	"fmt"
	"testing"
)

// kubeProxy renders metrics shaped as kube-proxy v1.37 serves them: the
// timestamps and durations carry an ip_family label.
func kubeProxy(syncs int, sum, last, queued float64, svcPending, epPending int) string {
	return fmt.Sprintf(`# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} %d
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} %g
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} %d
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} %g
# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} %g
# TYPE kubeproxy_sync_proxy_rules_service_changes_pending gauge
kubeproxy_sync_proxy_rules_service_changes_pending %d
# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_pending gauge
kubeproxy_sync_proxy_rules_endpoint_changes_pending %d
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.5
`, syncs, sum, syncs, last, queued, svcPending, epPending)
}

func TestParseKubeProxy(t *testing.T) {
	s, err := Parse(kubeProxy(4, 2.5, 1700000010.25, 1700000009.5, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	want := State{Syncs: 4, SyncSeconds: 2.5, LastSync: 1700000010.25, LastQueued: 1700000009.5, CPUSeconds: 3.5}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
}

// Before its first sync kube-proxy serves no histogram and no last-sync
// time (labelled series appear when first set).
func TestParseBeforeFirstSync(t *testing.T) {
	s, err := Parse("# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge\nkubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"} 5\n")
	if err != nil {
		t.Fatal(err)
	}
	var f Follower
	f.Observe(s)
	if q, why := f.Quiet(); q {
		t.Fatalf("%v: quiet before any sync", s)
	} else {
		t.Logf("not quiet: %s", why)
	}
}

func TestFollower(t *testing.T) {
	// Readings of one proxier, as (syncs, sum of durations, last sync,
	// last queued, pending).
	st := func(n int, sum, last, queued, pending float64) State {
		return State{Syncs: uint64(n), SyncSeconds: sum, LastSync: last, LastQueued: queued, Pending: pending}
	}
	at := func(s State, readAt float64) State { s.ReadAt = readAt; return s }
	for _, tc := range []struct {
		name     string
		readings []State
		quiet    bool
	}{
		{"no sync yet", []State{st(0, 0, 0, 10, 0)}, false},
		{"synced after the only change", []State{st(1, 2, 12, 9, 0)}, true},
		{"change queued after the last sync", []State{st(1, 2, 12, 9, 0), st(1, 2, 12, 13, 1)}, false},
		{"change pending", []State{st(1, 2, 12, 9, 0), st(1, 2, 12, 11, 1)}, false},
		// The case "last sync ended after the last change" gets wrong: a
		// change queued at 25 during a sync from 20 to 40, taken by the
		// next sync (pending 0 again) that is still running.
		{"sync that takes a change queued during the previous one is running",
			[]State{st(1, 2, 12, 9, 0), st(2, 22, 40, 25, 1), st(2, 22, 40, 25, 0)}, false},
		{"...and once it has ended", []State{st(1, 2, 12, 9, 0), st(2, 22, 40, 25, 1), st(2, 22, 40, 25, 0), st(3, 42, 60, 25, 0)}, true},
		// kube-proxy sets the last-sync time, then counts the sync.
		{"last-sync time set, sync not counted yet", []State{st(1, 2, 12, 9, 0), st(1, 2, 30, 15, 0)}, false},
		{"...and once it is counted", []State{st(1, 2, 12, 9, 0), st(1, 2, 30, 15, 0), st(2, 12, 30, 15, 0)}, true},
		// kube-proxy stamps the queued time, starts the sync microseconds
		// later, and counts its duration a few ms after stamping its end:
		// the bound puts the start 5 ms before the queued time.
		{"kube-proxy: sync started right after the change was queued",
			[]State{st(1, 2, 12, 9, 0), st(2, 2.025, 20.02, 20, 0)}, true},
		// Watching starts after nine 0.15 s syncs (an existing cluster).
		{"first reading after many syncs", []State{st(9, 1.35, 59.81, 59.2, 0)}, true},
		{"periodic sync, nothing queued since", []State{st(1, 2, 12, 9, 0), st(2, 3, 42, 9, 0)}, true},
		// Two syncs between readings: their total bounds the last one.
		{"two syncs between readings, the bound still shows the change", []State{st(1, 2, 12, 9, 0), st(3, 32, 50, 30, 0)}, false},
		{"two short syncs between readings", []State{st(1, 2, 12, 9, 0), st(3, 2.2, 50, 30, 0)}, true},
		// Seen in the guest (kube-proxy, ipvs): sync 2 ran 86.218-93.473;
		// a change queued at 86.251, 33 ms into it, within the slack, was
		// still pending at 93.742; sync 3 took it (pending 0) and ran
		// until 101.754. Read at 94.6, the bound said sync 2 took it.
		{"change queued just after the last sync began, seen pending after it ended",
			[]State{at(st(1, 10, 80, 70, 0), 80.5), at(st(2, 17.255, 93.473, 86.251, 1), 93.742), at(st(2, 17.255, 93.473, 86.251, 0), 94.6)}, false},
		{"...and once the sync that took it has ended",
			[]State{at(st(1, 10, 80, 70, 0), 80.5), at(st(2, 17.255, 93.473, 86.251, 1), 93.742), at(st(2, 17.255, 93.473, 86.251, 0), 94.6),
				at(st(3, 24.516, 101.754, 86.251, 0), 102)}, true},
		{"pending seen long before the last sync", []State{at(st(1, 2, 12, 9, 1), 9.5), at(st(2, 4, 30, 9, 0), 31)}, true},
		// A restarted proxier counts from zero: its own syncs decide.
		{"restarted, not synced yet", []State{st(40, 4, 100, 99, 0), st(0, 0, 0, 130, 0)}, false},
		{"restarted and synced", []State{st(40, 4, 100, 99, 0), st(0, 0, 0, 130, 0), st(1, 0.2, 131.2, 130, 0)}, true},
		{"restarted, first read after two syncs", []State{st(40, 4, 100, 99, 0), st(2, 0.3, 131.2, 130, 0)}, true},
		// Lanes run, kube-proxy nftables: the only change was queued at
		// 687.072, the sync that took it began at 687.0723, stamped its end
		// at 687.103 and counted 148 ms (conntrack cleanup after the
		// stamp), so the bound put its start at 686.955. Nothing more
		// happened: stillness must prove it quiet, after StillFor (2 s).
		{"bound too early, still for less than StillFor", lanesRun(686.110, 687.428, 687.93, 688.43, 689.93), false},
		{"bound too early, still for StillFor", lanesRun(686.110, 687.428, 687.93, 688.43, 690.43), true},
		// Nothing pending on the first reading with the queued time may
		// predate the change's count; a change seen pending restarts it.
		{"still, but the change seen pending", append(lanesRun(686.110, 687.428, 687.93, 688.43),
			at(st(48, 7.148, 687.103, 687.072, 1), 689.5), at(st(48, 7.148, 687.103, 687.072, 0), 690), at(st(48, 7.148, 687.103, 687.072, 0), 690.5)), false},
		// A sync that runs long is measured: StillFor grows with it.
		{"still for 2 s after a 1 s sync", append([]State{at(st(1, 1, 10, 5, 0), 10.5), at(st(2, 2, 30, 29.5, 0), 30.2)},
			at(st(2, 2, 30, 29.5, 0), 30.7), at(st(2, 2, 30, 29.5, 0), 31.2), at(st(2, 2, 30, 29.5, 0), 33.3)), false},
	} {
		var f Follower
		for _, r := range tc.readings {
			f.Observe(r)
		}
		if got, why := f.Quiet(); got != tc.quiet {
			t.Errorf("%s: Quiet() = %t (%s), want %t", tc.name, got, why, tc.quiet)
		}
	}
}

// lanesRun is the reading before the change and then the same reading
// after it, at each of the given times.
func lanesRun(before float64, after ...float64) []State {
	r := []State{{Syncs: 47, SyncSeconds: 7, LastSync: 685.949, LastQueued: 685.270, ReadAt: before}}
	for _, a := range after {
		r = append(r, State{Syncs: 48, SyncSeconds: 7.148, LastSync: 687.103, LastQueued: 687.072, ReadAt: a})
	}
	return r
}

func TestParsePendingCountsBoth(t *testing.T) {
	s, err := Parse(kubeProxy(1, 0.1, 20, 19, 0, 2))
	if err != nil {
		t.Fatal(err)
	}
	if s.Pending != 2 {
		t.Fatalf("%v: two endpoint changes are pending", s)
	}
}

func TestParseRejectsOtherMetrics(t *testing.T) {
	if _, err := Parse("# TYPE up gauge\nup 1\n"); err == nil {
		t.Fatal("metrics without the sync histogram parsed as a proxier's")
	}
}

func TestSince(t *testing.T) {
	a := State{Syncs: 3, SyncSeconds: 1, CPUSeconds: 2}
	b := State{Syncs: 4, SyncSeconds: 15, CPUSeconds: 9}
	d := b.Since(a)
	if d.Syncs != 1 || d.Mean != 14 || d.CPU != 7 {
		t.Fatalf("got %+v, want one sync of 14s and 7s of CPU", d)
	}
}

// The benchmarks read histograms and gauges by name: a dual-stack
// kube-proxy's two ip_family series add up, and what the proxier does not
// export (kube-proxy's ipvs mode has no full/partial split) says so.
func TestMetricsSumSeriesAndSayWhatIsMissing(t *testing.T) {
	m, err := ParseMetrics(`# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 3
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 1.5
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 3
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="+Inf"} 2
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 0.5
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 2
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 100
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 102
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 4096
`)
	if err != nil {
		t.Fatal(err)
	}
	if n, sum, ok := m.Histogram(MetricSync); n != 5 || sum != 2 || !ok {
		t.Errorf("sync histogram: %d syncs, %g s, %v; want 5, 2, true", n, sum, ok)
	}
	if _, _, ok := m.Histogram(MetricSyncFull); ok {
		t.Error("a histogram the proxier does not export reads as exported")
	}
	if v, ok := m.Latest(MetricLastSync); v != 102 || !ok {
		t.Errorf("last sync %g %v, want the later series, 102", v, ok)
	}
	if v, ok := m.Total(MetricRSS); v != 4096 || !ok {
		t.Errorf("rss %g %v, want 4096", v, ok)
	}
	if _, ok := m.Total(MetricCPU); ok {
		t.Error("a gauge the proxier does not export reads as exported")
	}
}
