package sweep

import (
	"context"
	"fmt"

	"github.com/proxymodes/proxymodes/harness/syncstate"
)

// Metric names both implementations export (the reference proxier copies
// kube-proxy's names so that one scraper reads both).
const (
	mSync        = syncstate.MetricSync
	mSyncFull    = syncstate.MetricSyncFull
	mSyncPartial = syncstate.MetricSyncPartial
	mLastSync    = syncstate.MetricLastSync
	mCPU         = syncstate.MetricCPU
	mRSS         = syncstate.MetricRSS
)

type metricsSource interface {
	ProxierMetrics(ctx context.Context, node string) (string, error)
}

func read(ctx context.Context, src metricsSource, node string) (syncstate.Metrics, error) {
	text, err := src.ProxierMetrics(ctx, node)
	if err != nil {
		return nil, err
	}
	m, err := syncstate.ParseMetrics(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", node, err)
	}
	return m, nil
}

// syncs is the number of completed syncs.
func syncs(m syncstate.Metrics) uint64 {
	n, _, _ := m.Histogram(mSync)
	return n
}

// meanSince is the mean duration of the syncs of one histogram between two
// readings; ok is false when none completed.
func meanSince(before, after syncstate.Metrics, name string) (float64, bool) {
	n0, s0, ok0 := before.Histogram(name)
	n1, s1, ok1 := after.Histogram(name)
	if !ok0 || !ok1 || n1 <= n0 {
		return 0, false
	}
	return (s1 - s0) / float64(n1-n0), true
}
