package sweep

import (
	"context"
	"fmt"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metric names both implementations export (the reference proxier copies
// kube-proxy's names so that one scraper reads both).
const (
	mSync        = "kubeproxy_sync_proxy_rules_duration_seconds"
	mSyncFull    = "kubeproxy_sync_full_proxy_rules_duration_seconds"
	mSyncPartial = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
	mLastSync    = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	mCPU         = "process_cpu_seconds_total"
	mRSS         = "process_resident_memory_bytes"
)

// scrape is one reading of a proxier's metrics.
type scrape map[string]*dto.MetricFamily

type metricsSource interface {
	ProxierMetrics(ctx context.Context, node string) (string, error)
}

func read(ctx context.Context, src metricsSource, node string) (scrape, error) {
	text, err := src.ProxierMetrics(ctx, node)
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing %s's proxier metrics: %w", node, err)
	}
	return scrape(fams), nil
}

// histogram returns a histogram's sample count and sum; ok is false when
// the proxier does not export it (kube-proxy's ipvs mode has no
// full/partial split, for example).
func (s scrape) histogram(name string) (count uint64, sum float64, ok bool) {
	f := s[name]
	if f == nil || len(f.Metric) == 0 || f.Metric[0].Histogram == nil {
		return 0, 0, false
	}
	h := f.Metric[0].Histogram
	return h.GetSampleCount(), h.GetSampleSum(), true
}

// value returns a gauge's or counter's value.
func (s scrape) value(name string) (float64, bool) {
	f := s[name]
	if f == nil || len(f.Metric) == 0 {
		return 0, false
	}
	m := f.Metric[0]
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	case m.Untyped != nil:
		return m.Untyped.GetValue(), true
	}
	return 0, false
}

// syncs is the number of completed syncs.
func (s scrape) syncs() uint64 {
	n, _, _ := s.histogram(mSync)
	return n
}

// meanSince is the mean duration of the syncs of one histogram between two
// readings; ok is false when none completed.
func meanSince(before, after scrape, name string) (float64, bool) {
	n0, s0, ok0 := before.histogram(name)
	n1, s1, ok1 := after.histogram(name)
	if !ok0 || !ok1 || n1 <= n0 {
		return 0, false
	}
	return (s1 - s0) / float64(n1-n0), true
}
