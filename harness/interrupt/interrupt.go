// Package interrupt makes SIGINT and SIGTERM leave nothing behind. A lab
// that is being created is cancelled and given time to remove what it
// made (Guard); then the teardowns of labs that are up run (OnInterrupt).
//
// Teardowns registered only after a lab was up were not enough: Ctrl-C
// while UML guests booted left their processes and namespaces behind,
// because nothing knew of the lab yet and the process exited at once.
package interrupt

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// SetupGrace bounds how long an interrupted process waits for labs being
// created to clean up after themselves; a second signal stops the wait.
// Taking down a half-booted UML lab takes about 10 s.
const SetupGrace = 2 * time.Minute

var (
	mu          sync.Mutex
	teardowns   = map[int]func(context.Context) error{}
	setups      = map[int]*setup{}
	nextID      int
	interrupted bool
	installed   bool
)

type setup struct {
	cancel   context.CancelFunc
	done     chan struct{}
	fallback func(context.Context) error
}

// OnInterrupt registers a teardown to run if the process is interrupted;
// the returned function unregisters it.
func OnInterrupt(fn func(context.Context) error) (unregister func()) {
	mu.Lock()
	defer mu.Unlock()
	id := nextID
	nextID++
	teardowns[id] = fn
	return func() {
		mu.Lock()
		delete(teardowns, id)
		mu.Unlock()
	}
}

// Guard is called at the start of a lab's creation. The returned context
// is cancelled when the process is interrupted, and the interrupt waits
// (up to SetupGrace) for done, which the creator calls once it has
// finished or removed what it made; if done does not come, fallback (if
// not nil) removes the lab by name. After an interrupt, Guard returns a
// context that is already cancelled, so no new lab starts.
func Guard(ctx context.Context, fallback func(context.Context) error) (_ context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	mu.Lock()
	defer mu.Unlock()
	if interrupted {
		cancel(errInterrupted)
		return ctx, func() {}
	}
	id := nextID
	nextID++
	s := &setup{cancel: func() { cancel(errInterrupted) }, done: make(chan struct{}), fallback: fallback}
	setups[id] = s
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			mu.Lock()
			delete(setups, id)
			mu.Unlock()
			close(s.done)
			cancel(context.Canceled)
		})
	}
}

var errInterrupted = fmt.Errorf("interrupted (SIGINT or SIGTERM)")

// HandleSignals makes SIGINT and SIGTERM run Interrupt and exit with
// status 130. Calling it again does nothing.
func HandleSignals() {
	mu.Lock()
	if installed {
		mu.Unlock()
		return
	}
	installed = true
	mu.Unlock()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "%v: tearing labs down (a second signal stops waiting for labs being created)\n", s)
		Interrupt(SetupGrace, sigs)
		os.Exit(130)
	}()
}

// Interrupt cancels the labs being created, waits up to grace (or until
// stop delivers) for them to finish, then runs every teardown. It is
// HandleSignals' work without the exit, for tests.
func Interrupt(grace time.Duration, stop <-chan os.Signal) {
	mu.Lock()
	interrupted = true
	var pending []*setup
	for _, s := range setups {
		pending = append(pending, s)
	}
	mu.Unlock()
	deadline := time.After(grace)
	for _, s := range pending {
		s.cancel()
	}
	var fns []func(context.Context) error
	waiting := true
	for _, s := range pending {
		if waiting {
			select {
			case <-s.done:
				continue
			case <-deadline:
				fmt.Fprintf(os.Stderr, "interrupt: a lab being created did not clean up within %s\n", grace)
				waiting = false
			case <-stop:
				fmt.Fprintln(os.Stderr, "interrupt: second signal: not waiting for labs being created")
				waiting = false
			}
		}
		select {
		case <-s.done:
		default:
			if s.fallback != nil {
				fns = append(fns, s.fallback)
			}
		}
	}
	mu.Lock()
	for _, fn := range teardowns {
		fns = append(fns, fn)
	}
	mu.Unlock()
	// Without the lock: a teardown may unregister itself.
	for _, fn := range fns {
		if err := fn(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "interrupt: teardown:", err)
		}
	}
}
