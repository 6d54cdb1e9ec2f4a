// Package labtest is the glue a test binary needs to use labs: it runs
// agent roles (the re-executed test binary plays the pods' backends) and
// tears labs down when the run is interrupted, so Ctrl-C leaves nothing.
package labtest

import (
	"context"
	"io"
	"strings"
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

// Log sends a harness component's progress to a test's log: it is the
// Logger (Logf) the harness packages take, and an io.Writer (a build's
// output, a line per write).
type Log struct{ t testing.TB }

// Logger returns t's Log.
func Logger(t testing.TB) Log { return Log{t} }

// Logf logs a line.
func (l Log) Logf(format string, args ...any) {
	l.t.Helper()
	l.t.Logf(format, args...)
}

func (l Log) Write(p []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// LogWriter is Logger(t) as an io.Writer.
func LogWriter(t testing.TB) io.Writer { return Logger(t) }
