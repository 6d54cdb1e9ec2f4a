// Package labtest is the glue a test binary needs to use labs: it runs
// agent roles (the re-executed test binary plays the pods' backends) and
// tears labs down when the run is interrupted, so Ctrl-C leaves nothing.
package labtest

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"

	"github.com/proxymodes/proxymodes/harness/agent"
	_ "github.com/proxymodes/proxymodes/harness/backend" // the pods' backend role
)

var (
	mu       sync.Mutex
	cleanups = map[int]func(context.Context) error{}
	nextID   int
)

// OnInterrupt registers a teardown to run if the test binary gets SIGINT
// or SIGTERM; the returned function unregisters it.
func OnInterrupt(fn func(context.Context) error) (unregister func()) {
	mu.Lock()
	defer mu.Unlock()
	id := nextID
	nextID++
	cleanups[id] = fn
	return func() {
		mu.Lock()
		delete(cleanups, id)
		mu.Unlock()
	}
}

// Run replaces m.Run in a TestMain: it runs agent roles, handles
// interrupts and returns m.Run's exit code.
func Run(m *testing.M) int {
	Init()
	return m.Run()
}

// Init is Run without m.Run, for a TestMain that sets a lab up first.
func Init() {
	agent.Init()
	HandleSignals()
}

// HandleSignals makes SIGINT and SIGTERM run the registered teardowns and
// exit with status 130.
func HandleSignals() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "labtest: %v: tearing labs down\n", s)
		mu.Lock()
		for _, fn := range cleanups {
			if err := fn(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "labtest: teardown:", err)
			}
		}
		mu.Unlock()
		os.Exit(130)
	}()
}
