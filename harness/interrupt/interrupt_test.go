package interrupt

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// reset restores the package state; the tests share one process.
func reset() {
	mu.Lock()
	teardowns = map[int]func(context.Context) error{}
	setups = map[int]*setup{}
	interrupted = false
	mu.Unlock()
}

// TestInterruptWaitsForSetupsBeforeTeardowns: a lab being created is
// cancelled, and the teardowns run only after it has cleaned up.
func TestInterruptWaitsForSetupsBeforeTeardowns(t *testing.T) {
	defer reset()
	var (
		order []string
		omu   sync.Mutex
	)
	note := func(s string) {
		omu.Lock()
		order = append(order, s)
		omu.Unlock()
	}
	OnInterrupt(func(context.Context) error { note("teardown"); return nil })
	ctx, done := Guard(context.Background(), func(context.Context) error { note("fallback"); return nil })
	go func() {
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // removing what it made
		note("setup cleaned up")
		done()
	}()
	Interrupt(time.Minute, nil)
	want := []string{"setup cleaned up", "teardown"}
	if len(order) != len(want) || order[0] != want[0] || order[1] != want[1] {
		t.Fatalf("order %v, want %v (the fallback runs only for a setup that did not finish)", order, want)
	}
	if cause := context.Cause(ctx); cause != errInterrupted {
		t.Errorf("setup context cause %v, want %v", cause, errInterrupted)
	}
}

// TestStuckSetupGetsItsFallback: a setup that does not finish within the
// grace is removed by its fallback, and so is one cut short by a second
// signal.
func TestStuckSetupGetsItsFallback(t *testing.T) {
	for _, second := range []bool{false, true} {
		reset()
		ran := 0
		_, done := Guard(context.Background(), func(context.Context) error { ran++; return nil })
		grace := 100 * time.Millisecond
		stop := make(chan os.Signal, 1)
		if second {
			grace = time.Hour
			stop <- os.Interrupt
		}
		start := time.Now()
		Interrupt(grace, stop)
		if ran != 1 {
			t.Errorf("second signal %v: fallback ran %d times, want 1", second, ran)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("second signal %v: Interrupt took %s", second, el)
		}
		done()
	}
	reset()
}

// TestGuardAfterInterrupt: no lab starts once the process is interrupted.
func TestGuardAfterInterrupt(t *testing.T) {
	defer reset()
	Interrupt(time.Second, nil)
	ctx, done := Guard(context.Background(), nil)
	defer done()
	if ctx.Err() == nil {
		t.Fatal("Guard after an interrupt returned a live context")
	}
}

// TestFinishedSetupIsForgotten: a lab that is up is no longer a setup;
// its teardown is what removes it.
func TestFinishedSetupIsForgotten(t *testing.T) {
	defer reset()
	ctx, done := Guard(context.Background(), func(context.Context) error {
		t.Error("fallback of a finished setup ran")
		return nil
	})
	done()
	done() // safe twice
	if ctx.Err() == nil {
		t.Error("a finished setup's context is still live (its goroutines would linger)")
	}
	Interrupt(time.Second, nil)
}
