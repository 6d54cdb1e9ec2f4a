package suite

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeProxiers serves each node's metrics from a script of states: every
// read returns the next state, and the last one repeats.
type fakeProxiers struct {
	mu     sync.Mutex
	script map[string][]string
	reads  map[string]int
}

func (f *fakeProxiers) ProxierMetrics(_ context.Context, node string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.script[node]
	if len(s) == 0 {
		return "", fmt.Errorf("no proxier on %s", node)
	}
	i := min(f.reads[node], len(s)-1)
	f.reads[node]++
	return s[i], nil
}

func metrics(syncs int, last, queued float64, pending int) string {
	return fmt.Sprintf(`# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_sum %d
kubeproxy_sync_proxy_rules_duration_seconds_count %d
kubeproxy_sync_proxy_rules_last_timestamp_seconds %g
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds %g
kubeproxy_sync_proxy_rules_service_changes_pending %d
`, 2*syncs, syncs, last, queued, pending)
}

// watch follows the fake's two nodes. Its clock stands at 90 s, before
// any of the fake's syncs begin: readings are stamped in the proxiers'
// time.
func watch(f *fakeProxiers) *syncWatch {
	w := newSyncWatch(f, nil, []string{"node-1", "node-2"}, "")
	w.now = func() time.Time { return time.Unix(90, 0) }
	return w
}

// A change seen pending at 103, after the sync that the last-sync time
// shows began (102), is not taken by it: Quiet must not return, however
// early the change was queued.
func TestQuietWaitsForASyncAfterPendingWasSeen(t *testing.T) {
	f := &fakeProxiers{reads: map[string]int{}, script: map[string][]string{
		"node-1": {metrics(5, 100, 80, 0)},
		"node-2": {metrics(6, 104, 101, 1), metrics(6, 104, 101, 0)},
	}}
	w := watch(f)
	w.now = func() time.Time { return time.Unix(104, 500e6) }
	_, err := w.Quiet(context.Background(), 1500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "still pending") {
		t.Fatalf("Quiet = %v, want a failure naming the pending changes", err)
	}
}

// slowProxiers answers each read 300 ms after it was asked.
type slowProxiers struct {
	*fakeProxiers
	clock *time.Time
}

func (s slowProxiers) ProxierMetrics(ctx context.Context, node string) (string, error) {
	*s.clock = s.clock.Add(300 * time.Millisecond)
	return s.fakeProxiers.ProxierMetrics(ctx, node)
}

// A reading asked for at 101.0 that saw a change pending, answered at
// 101.3, and then a sync that began at 101.1 (it ended at 103.1 after 2 s)
// and took the change: the proxier is quiet. Stamped on arrival, the
// reading put the pending change after the sync's start, and the wait ran
// out (make test, iptables/kube-proxy, 2026-12-03).
func TestSlowReadingDoesNotPostdateTheSync(t *testing.T) {
	f := &fakeProxiers{reads: map[string]int{}, script: map[string][]string{
		"node-1": {metrics(5, 100, 80, 0)},
		"node-2": {metrics(5, 100, 99, 1), metrics(6, 103.1, 99, 0)},
	}}
	clock := time.Unix(100, 700e6) // node-1's read takes it to 101.0
	w := newSyncWatch(slowProxiers{f, &clock}, nil, []string{"node-1", "node-2"}, "")
	w.now = func() time.Time { return clock }
	if _, err := w.Quiet(context.Background(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestQuietWaitsForEveryNode(t *testing.T) {
	f := &fakeProxiers{reads: map[string]int{}, script: map[string][]string{
		"node-1": {metrics(5, 100, 80, 0)},
		// node-2 has a change pending, a sync takes it, then ends (it
		// began at 102, after the change was queued at 101).
		"node-2": {metrics(5, 100, 101, 1), metrics(5, 100, 101, 0), metrics(6, 104, 101, 0)},
	}}
	w := watch(f)
	if _, err := w.Quiet(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if f.reads["node-2"] < 4 {
		t.Fatalf("Quiet returned after %d reads of node-2; it must see the sync after the change, twice", f.reads["node-2"])
	}
	if got := w.Slowest(); got != 2*time.Second {
		t.Fatalf("slowest sync %s, want 2s (the fake's syncs all take 2s)", got)
	}
}

// A change queued between two quiet readings restarts the wait: the first
// reading's quiet did not include it.
func TestQuietNeedsTheSameQueuedTimeTwice(t *testing.T) {
	f := &fakeProxiers{reads: map[string]int{}, script: map[string][]string{
		"node-1": {metrics(5, 100, 80, 0), metrics(6, 104, 101, 0), metrics(6, 104, 101, 0)},
		"node-2": {metrics(5, 100, 80, 0)},
	}}
	if _, err := watch(f).Quiet(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if f.reads["node-1"] < 3 {
		t.Fatalf("Quiet returned after %d reads of node-1; the queued time changed between the first two", f.reads["node-1"])
	}
}

func TestQuietFailsWhenAProxierNeverSettles(t *testing.T) {
	f := &fakeProxiers{reads: map[string]int{}, script: map[string][]string{
		"node-1": {metrics(5, 100, 80, 0)},
		"node-2": {metrics(5, 100, 101, 3)},
	}}
	_, err := watch(f).Quiet(context.Background(), 1500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "node-2") || strings.Contains(err.Error(), "node-1") {
		t.Fatalf("got %v, want an error that names node-2 only", err)
	}
}
