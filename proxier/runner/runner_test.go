package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type harness struct {
	t     *testing.T
	clock *clocktesting.FakeClock
	r     *Runner
	ran   chan struct{}

	mu      sync.Mutex
	results []error // returned by successive runs; nil when exhausted
	panics  bool
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	h := &harness{t: t, clock: clocktesting.NewFakeClock(time.Unix(1000, 0)), ran: make(chan struct{}, 100)}
	opts.Clock = h.clock
	r, err := New("test", h.fn, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h.waitWaiters(1)
	return h
}

func (h *harness) fn() error {
	h.mu.Lock()
	var err error
	if len(h.results) > 0 {
		err, h.results = h.results[0], h.results[1:]
	}
	p := h.panics
	h.panics = false
	h.mu.Unlock()
	h.ran <- struct{}{}
	if p {
		panic("boom")
	}
	return err
}

// waitWaiters waits until the loop is blocked on n fake timers: 1 while
// idle, 2 during the min-interval cooldown.
func (h *harness) waitWaiters(n int) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.clock.Waiters() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("loop never reached %d timer waiters (has %d)", n, h.clock.Waiters())
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) expectRun() {
	h.t.Helper()
	select {
	case <-h.ran:
	case <-time.After(5 * time.Second):
		h.t.Fatal("expected a run")
	}
}

func (h *harness) expectNoRun() {
	h.t.Helper()
	select {
	case <-h.ran:
		h.t.Fatal("unexpected run")
	case <-time.After(50 * time.Millisecond):
	}
}

var opts = Options{MinInterval: time.Second, MaxInterval: 10 * time.Second, RetryInterval: 3 * time.Second}

func TestRunIsImmediateThenBoundedByMinInterval(t *testing.T) {
	h := newHarness(t, opts)
	h.expectNoRun()
	h.r.Run()
	h.expectRun()
	h.waitWaiters(2) // cooldown + next run timer
	for i := 0; i < 5; i++ {
		h.r.Run()
	}
	h.expectNoRun()
	h.clock.Step(999 * time.Millisecond)
	h.expectNoRun()
	h.clock.Step(time.Millisecond)
	h.expectRun() // the five requests coalesced into one run
	h.waitWaiters(2)
	h.clock.Step(time.Second)
	h.waitWaiters(1)
	h.expectNoRun()
}

func TestRunsAtMaxIntervalWithoutRequests(t *testing.T) {
	h := newHarness(t, opts)
	h.clock.Step(9 * time.Second)
	h.expectNoRun()
	h.clock.Step(time.Second)
	h.expectRun()
	h.waitWaiters(2)
	h.clock.Step(time.Second) // cooldown over
	h.waitWaiters(1)
	h.clock.Step(8 * time.Second)
	h.expectNoRun()
	h.clock.Step(time.Second) // 10s after the previous run
	h.expectRun()
}

func TestFailedRunIsRetried(t *testing.T) {
	h := newHarness(t, opts)
	h.results = []error{errors.New("sync failed")}
	h.r.Run()
	h.expectRun()
	h.waitWaiters(2)
	h.clock.Step(time.Second)
	h.waitWaiters(1)
	h.clock.Step(time.Second)
	h.expectNoRun()
	h.clock.Step(time.Second) // retry interval (3s) after the failure
	h.expectRun()
	// The retry succeeded: back to the max interval.
	h.waitWaiters(2)
	h.clock.Step(time.Second)
	h.waitWaiters(1)
	h.clock.Step(5 * time.Second)
	h.expectNoRun()
}

func TestPanicIsRecoveredAndRetried(t *testing.T) {
	h := newHarness(t, opts)
	h.panics = true
	h.r.Run()
	h.expectRun()
	h.waitWaiters(2)
	h.clock.Step(3 * time.Second)
	h.expectRun()
}

func TestBadIntervals(t *testing.T) {
	if _, err := New("x", func() error { return nil }, Options{MinInterval: 2 * time.Second, MaxInterval: time.Second, RetryInterval: time.Second}); err == nil {
		t.Error("max < min accepted")
	}
	if _, err := New("x", func() error { return nil }, Options{MaxInterval: time.Second}); err == nil {
		t.Error("zero retry interval accepted")
	}
}
