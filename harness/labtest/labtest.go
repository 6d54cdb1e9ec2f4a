// Package labtest is the glue a test binary needs to use labs: it runs
// agent roles (the re-executed test binary plays the pods' backends) and
// tears labs down when the run is interrupted, so Ctrl-C leaves nothing.
package labtest

import (
	"context"
	"testing"

	"github.com/proxymodes/proxymodes/harness/agent"
	_ "github.com/proxymodes/proxymodes/harness/backend" // the pods' backend role
	"github.com/proxymodes/proxymodes/harness/interrupt"
)

// OnInterrupt registers a teardown to run if the test binary gets SIGINT
// or SIGTERM; the returned function unregisters it.
func OnInterrupt(fn func(context.Context) error) (unregister func()) {
	return interrupt.OnInterrupt(fn)
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

// HandleSignals makes SIGINT and SIGTERM cancel labs being created, run
// the registered teardowns and exit with status 130.
func HandleSignals() { interrupt.HandleSignals() }
