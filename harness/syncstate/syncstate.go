// Package syncstate reads where a Service proxy is in its sync loop from
// the Prometheus metrics it serves. kube-proxy and the reference proxier
// export the same names, so one reader serves both, and the suites wait on
// the proxy's own account of its work instead of guessing with sleeps.
package syncstate

import (
	"fmt"
	"math"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metric names both implementations export.
const (
	MetricSync       = "kubeproxy_sync_proxy_rules_duration_seconds"
	MetricLastSync   = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	MetricLastQueued = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
	MetricSvcPending = "kubeproxy_sync_proxy_rules_service_changes_pending"
	MetricEpPending  = "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
	MetricCPU        = "process_cpu_seconds_total"
	// Only the benchmarks read these: the split of syncs into full and
	// partial ones (kube-proxy's ipvs mode has none), and memory.
	MetricSyncFull    = "kubeproxy_sync_full_proxy_rules_duration_seconds"
	MetricSyncPartial = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
	MetricRSS         = "process_resident_memory_bytes"
)

// Metrics is one parsed reading of a proxier's metrics, for readers that
// need more than State (the benchmarks).
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing proxier metrics: %w", err)
	}
	return Metrics(fams), nil
}

// Histogram returns a histogram's sample count and sum over all its
// series (kube-proxy labels them by ip_family); ok is false when the
// proxier does not export it.
func (m Metrics) Histogram(name string) (count uint64, sum float64, ok bool) {
	for _, s := range m[name].GetMetric() {
		if h := s.GetHistogram(); h != nil {
			count += h.GetSampleCount()
			sum += h.GetSampleSum()
			ok = true
		}
	}
	return count, sum, ok
}

// Total is the sum of a gauge's or counter's series; Latest their
// largest value (for timestamps). ok is false when it is not exported.
func (m Metrics) Total(name string) (float64, bool) {
	return total(m[name]), len(m[name].GetMetric()) > 0
}

// Latest: see Total.
func (m Metrics) Latest(name string) (float64, bool) {
	return latest(m[name]), len(m[name].GetMetric()) > 0
}

// State is one reading of a proxier's sync loop. Timestamps are Unix
// seconds on the proxier's own clock (a guest's clock when it runs in one).
type State struct {
	// Syncs and SyncSeconds are the count and sum of the sync-duration
	// histogram: every sync, successful or not.
	Syncs       uint64
	SyncSeconds float64
	// LastSync is when the last successful sync ended; LastQueued is when
	// the last change asked for a sync.
	LastSync, LastQueued float64
	// Pending counts Service and endpoint changes not yet taken by a sync.
	Pending float64
	// CPUSeconds is the proxier process's CPU time (0 if not exported).
	CPUSeconds float64
	// ReadAt is when the reader got these metrics (unix seconds, its own
	// clock; 0 if unknown). Parse leaves it to the caller.
	ReadAt float64
}

// Parse reads a State from the Prometheus text format. Series that carry
// labels (kube-proxy's ip_family) are combined: the latest timestamp, the
// sum of counts and pending changes.
func Parse(text string) (State, error) {
	fams, err := ParseMetrics(text)
	if err != nil {
		return State{}, err
	}
	proxier := false
	for name := range fams {
		proxier = proxier || strings.HasPrefix(name, "kubeproxy_")
	}
	if !proxier {
		return State{}, fmt.Errorf("the metrics have no kubeproxy_ series: is it kube-proxy or the reference proxier?")
	}
	// kube-proxy's labelled series appear only once set: before its first
	// sync there is no histogram and no last-sync time, which reads as a
	// proxier that has not synced yet.
	var s State
	s.Syncs, s.SyncSeconds, _ = fams.Histogram(MetricSync)
	s.LastSync = latest(fams[MetricLastSync])
	s.LastQueued = latest(fams[MetricLastQueued])
	s.Pending = total(fams[MetricSvcPending]) + total(fams[MetricEpPending])
	s.CPUSeconds = total(fams[MetricCPU])
	return s, nil
}

// StartSlack is how far before the last queued change the bounded start
// of the last sync may lie and still count as after it. kube-proxy
// observes a sync's duration after it stamps the sync's end (health and
// conntrack work lie between), so the bound falls a few milliseconds
// before the real start; and a change makes it queue a sync right after
// stamping the queued time, so that sync starts microseconds after it.
// Without slack kube-proxy's iptables mode, which has no periodic sync,
// never looked quiet after a change (seen: 3 of 17 assessments failed).
// A change that really arrived during the last sync, after it took its
// changes, shows as pending until the next sync takes it, and that sync
// takes milliseconds on a host; only in a slow guest can a reading fall
// inside it, and only for changes in the first 100 ms of a sync.
const StartSlack = 100 * time.Millisecond

// Follower follows one proxier's readings and tells when it is quiet:
// nothing pending, and the last successful sync began after the last
// change was queued. "Ended after" is not enough: a change queued during a
// sync is pending when that sync ends; the next sync takes it (pending
// drops to 0) while the last-sync time still shows the earlier sync, which
// ended after the change was queued. Neither proxier exports when a sync
// began, so the Follower bounds it: the syncs counted between the reading
// before the last-sync time changed and now include that sync, so their
// total time is at least its duration. Both proxiers set the last-sync
// time before they count the sync, so until the count moves the sync is
// treated as still running.
//
// The bound needs slack (StartSlack): the queued time is stamped just
// before the sync it triggers starts, and the bound may fall a few ms
// short of that start. But a change queued within the slack *after* a sync
// began is not taken by it, and would look taken. Such a change stays
// pending until the next sync starts, so a reading that saw it pending
// settles it: the sync that takes it began after that reading.
//
// The bound can also fall too early to prove anything: kube-proxy counts
// in a sync's duration the work after it stamps the sync's end (health
// checks, conntrack cleanup), and under load that work took 117 ms (lanes
// run, kube-proxy nftables: a sync began 1 ms after the only change was
// queued and took it, and the bound put its start 117 ms before the
// change). A proxier with no periodic sync then never looked quiet. So a
// second proof: stillness. A change counts as pending before its queued
// time is stamped, and only a sync's checkout of that change clears the
// count (kube-proxy zeroes it as it checks changes out; the reference
// proxier at the end of the sync). So once a reading has shown the queued
// time, a later reading with nothing pending proves a sync took the
// change. That sync has begun, and it has ended once a reading shows it
// counted, or once nothing moved for StillFor(slowest sync) after that:
// only a sync that runs longer than that would still be missing.
type Follower struct {
	cur, base State
	have      bool
	// first: no reading before the current last-sync time was seen.
	first bool
	// pendingAt is the ReadAt of the latest reading with changes pending.
	pendingAt float64
	// still counts consecutive readings with the same sync count, sync
	// time and queued time and, after the first of them, nothing pending;
	// stillFrom is the ReadAt of the third (the first sent after a
	// reading that proved the change taken had answered).
	still     int
	stillFrom float64
	// slowest is the longest sync seen (exact when one sync fell between
	// two readings, their mean otherwise).
	slowest float64
}

// StillFor is how long a proxier's readings must stay unchanged, with
// nothing pending, before the sync that took the last change counts as
// ended when the bound cannot show it: four times the slowest sync seen,
// and at least 2 s.
func StillFor(slowest float64) float64 { return max(2, 4*slowest) }

// Observe takes the next reading. A sync count that went down is a new
// proxier process (a restart): the Follower starts over with it.
func (f *Follower) Observe(s State) {
	if f.have && s.Syncs < f.cur.Syncs {
		*f = Follower{}
	}
	if !f.have {
		f.base, f.have, f.first = State{}, true, true
	} else if s.LastSync != f.cur.LastSync {
		f.base, f.first = f.cur, false
	}
	if s.Pending > 0 && s.ReadAt > f.pendingAt {
		f.pendingAt = s.ReadAt
	}
	switch {
	case f.still == 0 || s.Syncs != f.cur.Syncs || s.SyncSeconds != f.cur.SyncSeconds ||
		s.LastSync != f.cur.LastSync || s.LastQueued != f.cur.LastQueued:
		f.still = 1
	case s.Pending > 0:
		f.still = 1
	default:
		f.still++
		if f.still == 3 {
			f.stillFrom = s.ReadAt
		}
	}
	if n := s.Syncs - f.cur.Syncs; f.cur.Syncs > 0 && s.Syncs > f.cur.Syncs {
		f.slowest = max(f.slowest, (s.SyncSeconds-f.cur.SyncSeconds)/float64(n))
	} else if f.cur.Syncs == 0 && s.Syncs > 0 {
		f.slowest = max(f.slowest, s.SyncSeconds/float64(s.Syncs))
	}
	f.cur = s
}

// Current is the latest reading.
func (f *Follower) Current() State { return f.cur }

// Quiet reports whether the proxier is quiet, and if not, why.
func (f *Follower) Quiet() (bool, string) {
	s := f.cur
	switch {
	case !f.have:
		return false, "not read yet"
	case s.LastSync == 0:
		return false, "no sync has succeeded yet"
	case s.Pending > 0:
		return false, fmt.Sprintf("%g changes pending", s.Pending)
	case f.still >= 3 && f.stillFrom > 0 && s.ReadAt-f.stillFrom >= StillFor(f.slowest):
		return true, ""
	case s.Syncs <= f.base.Syncs:
		return false, "the last sync is not counted yet (still finishing)"
	}
	took := s.SyncSeconds - f.base.SyncSeconds
	if f.first {
		// Syncs that happened before the first reading cannot be told
		// apart: their total would put the start of the last one far
		// too early, and a proxier with no periodic sync (kube-proxy's
		// iptables mode) would never look quiet. Their mean is the best
		// guess; every later sync gets the bound.
		took /= float64(s.Syncs)
	}
	began := s.LastSync - took
	still := ""
	if f.still >= 3 && f.stillFrom > 0 {
		still = fmt.Sprintf("; still for %.1fs of %.1fs", s.ReadAt-f.stillFrom, StillFor(f.slowest))
	}
	if began < s.LastQueued-StartSlack.Seconds() {
		return false, fmt.Sprintf("the last sync may have begun before the last change was queued (%.3f; it began no earlier than %.3f): a sync that takes it may be running or due%s", s.LastQueued, began, still)
	}
	if began < f.pendingAt-StartSlack.Seconds() {
		return false, fmt.Sprintf("changes were still pending at %.3f, and the last sync may have begun before that (no earlier than %.3f): a sync that takes them may be running or due%s", f.pendingAt, began, still)
	}
	return true, ""
}

// Since describes the syncs between an earlier reading and this one.
type Since struct {
	Syncs int
	// Mean is the mean duration of those syncs; when Syncs is 1 it is
	// that sync's exact duration.
	Mean float64
	CPU  float64
}

// Since returns the syncs and CPU time between prev and s.
func (s State) Since(prev State) Since {
	d := Since{Syncs: int(s.Syncs) - int(prev.Syncs), CPU: s.CPUSeconds - prev.CPUSeconds}
	if d.Syncs > 0 {
		d.Mean = (s.SyncSeconds - prev.SyncSeconds) / float64(d.Syncs)
	}
	return d
}

func (s State) String() string {
	return fmt.Sprintf("syncs=%d pending=%g lastSync=%.3f lastQueued=%.3f", s.Syncs, s.Pending, s.LastSync, s.LastQueued)
}

func latest(f *dto.MetricFamily) float64 {
	v := 0.0
	for _, m := range f.GetMetric() {
		v = math.Max(v, value(m))
	}
	return v
}

func total(f *dto.MetricFamily) float64 {
	v := 0.0
	for _, m := range f.GetMetric() {
		v += value(m)
	}
	return v
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}
