package suite

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/proxymodes/proxymodes/harness/syncstate"
)

// MetricsSource is what a provider implements to let the suites read a
// node's proxier metrics (Prometheus text), wherever the node runs.
type MetricsSource interface {
	ProxierMetrics(ctx context.Context, node string) (string, error)
}

// GuestStats is what a provider whose nodes run in a guest kernel
// implements, so that a run's sync log shows whether the guest had the CPU
// it needed and whether its clock kept up with the host's.
type GuestStats interface {
	// GuestStats returns one line: the guest's CPU use since the last call
	// and its clock offset from the host's ("" when there is no guest).
	GuestStats(ctx context.Context) string
}

// syncWatch follows every node's proxier through its metrics for the
// whole run: it logs each sync it sees (proxier-syncs.log in the results
// directory), and it knows the slowest sync so far, which sets how long
// the suites wait for a change to converge.
type syncWatch struct {
	src   MetricsSource
	guest GuestStats
	nodes []string
	out   io.Writer
	// now stamps each reading (syncstate.State.ReadAt).
	now func() time.Time

	// readMu keeps readings in order: the loop and Quiet both read, and
	// a Follower must see each node's readings in the order they were
	// taken.
	readMu sync.Mutex

	mu      sync.Mutex
	follow  map[string]*syncstate.Follower
	slowest map[string]float64 // seconds
	syncs   map[string]int
	errs    map[string]string
}

// watchInterval is how often the run reads every proxier's metrics.
const watchInterval = 5 * time.Second

func newSyncWatch(src MetricsSource, guest GuestStats, nodes []string, dir string) *syncWatch {
	w := &syncWatch{src: src, guest: guest, nodes: nodes, out: io.Discard, now: time.Now,
		follow: map[string]*syncstate.Follower{}, slowest: map[string]float64{}, syncs: map[string]int{}, errs: map[string]string{}}
	if dir != "" {
		if f, err := os.Create(filepath.Join(dir, "proxier-syncs.log")); err == nil {
			w.out = f
		}
	}
	return w
}

// loop reads every node until ctx ends.
func (w *syncWatch) loop(ctx context.Context) {
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	for {
		w.readAll(ctx)
		if w.guest != nil {
			if g := w.guest.GuestStats(ctx); g != "" {
				w.logf("guest: %s", g)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readAll reads every node once; for each it returns the reading, or
// why the node is not quiet ("" when it is).
func (w *syncWatch) readAll(ctx context.Context) (map[string]syncstate.State, map[string]string) {
	w.readMu.Lock()
	defer w.readMu.Unlock()
	out, busy := map[string]syncstate.State{}, map[string]string{}
	for _, n := range w.nodes {
		// A reading is stamped when it was asked for: the proxier read
		// its gauges at some point before it answered, and a reading
		// that saw changes pending proves only that they were pending
		// then. Stamped on arrival, a slow answer (seen under load in
		// make test's lanes) could postdate the start of the sync that
		// took them, and the proxier never looked quiet again.
		sent := w.now()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		text, err := w.src.ProxierMetrics(rctx, n)
		cancel()
		var s syncstate.State
		if err == nil {
			s, err = syncstate.Parse(text)
			s.ReadAt = float64(sent.UnixNano()) / 1e9
		}
		if err != nil {
			busy[n] = err.Error()
			w.mu.Lock()
			first := w.errs[n] == ""
			w.errs[n] = err.Error()
			w.mu.Unlock()
			if first {
				w.logf("%s: cannot read the proxier's metrics: %v", n, err)
			}
			continue
		}
		out[n] = s
		if quiet, why := w.record(n, s); !quiet {
			busy[n] = why
		}
	}
	return out, busy
}

// record takes a reading and returns whether the node is quiet now (and
// why not).
func (w *syncWatch) record(node string, s syncstate.State) (bool, string) {
	w.mu.Lock()
	f, seen := w.follow[node]
	if !seen {
		f = &syncstate.Follower{}
		w.follow[node] = f
	}
	prev := f.Current()
	f.Observe(s)
	quiet, why := f.Quiet()
	d := s.Since(prev)
	if seen && d.Syncs > 0 {
		// With one sync between two readings its duration is exact; with
		// more, their mean is a lower bound of the slowest.
		w.slowest[node] = max(w.slowest[node], d.Mean)
		w.syncs[node] += d.Syncs
	} else if !seen && s.Syncs > 0 {
		w.slowest[node] = max(w.slowest[node], s.SyncSeconds/float64(s.Syncs))
		w.syncs[node] = int(s.Syncs)
	}
	w.mu.Unlock()
	if !seen || d.Syncs > 0 {
		w.logf("%s: %s quiet=%t (+%d syncs, mean %.3fs, cpu +%.2fs)", node, s, quiet, d.Syncs, d.Mean, d.CPU)
	}
	return quiet, why
}

func (w *syncWatch) logf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintf(w.out, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// unreadable reports whether no node's metrics could ever be read.
func (w *syncWatch) unreadable() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.follow) == 0
}

// Slowest is the longest sync seen on any node.
func (w *syncWatch) Slowest() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := 0.0
	for _, v := range w.slowest {
		s = max(s, v)
	}
	return time.Duration(s * float64(time.Second))
}

// Summary is one line per node for the report.
func (w *syncWatch) Summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for _, n := range w.nodes {
		if e := w.errs[n]; e != "" && w.syncs[n] == 0 {
			parts = append(parts, fmt.Sprintf("%s: metrics unreadable (%s)", n, e))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: %d syncs, slowest %.3fs", n, w.syncs[n], w.slowest[n]))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// Quiet waits until every node's proxier is quiet (see
// syncstate.Follower): it must read so twice in a row, quietSpacing apart,
// with no change queued in between, so that a change delivered to one
// node's informer a moment after the other's is not missed. It returns an
// error naming the busy nodes when limit passes.
func (w *syncWatch) Quiet(ctx context.Context, limit time.Duration) (time.Duration, error) {
	const quietSpacing = 500 * time.Millisecond
	start := time.Now()
	deadline := start.Add(limit)
	var prev map[string]syncstate.State
	for {
		cur, busy := w.readAll(ctx)
		var why []string
		for _, n := range w.nodes {
			switch {
			case busy[n] != "":
				why = append(why, n+": "+busy[n]+" ("+cur[n].String()+")")
			case prev == nil:
				why = append(why, n+": quiet once")
			case prev[n].LastQueued != cur[n].LastQueued:
				why = append(why, n+": a change was queued since the last reading")
			}
		}
		if len(why) == 0 {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(start), fmt.Errorf("after %s: %s", limit, strings.Join(why, "; "))
		}
		prev = cur
		// A busy node's reading must not count as the first quiet one.
		for n := range busy {
			delete(prev, n)
		}
		select {
		case <-ctx.Done():
		case <-time.After(quietSpacing):
		}
	}
}
