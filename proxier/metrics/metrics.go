// Package metrics defines the proxier's Prometheus metrics. Names follow
// kube-proxy's (subsystem "kubeproxy") so the same dashboards and harness
// scrapers work against both; metrics kube-proxy lacks use the
// "proxymodes_proxier" prefix.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const subsystem = "kubeproxy"

// Metrics holds every metric and the registry that serves them. A nil
// *Metrics is valid and records nothing, which keeps tests short.
type Metrics struct {
	Registry *prometheus.Registry

	SyncDuration           prometheus.Histogram
	SyncFullDuration       prometheus.Histogram
	SyncPartialDuration    prometheus.Histogram
	NetworkProgramming     prometheus.Histogram
	LastSyncTimestamp      prometheus.Gauge
	LastQueuedTimestamp    prometheus.Gauge
	SyncFailures           prometheus.Counter
	RestoreFailures        prometheus.Counter
	PartialRestoreFailures prometheus.Counter
	RulesTotal             *prometheus.GaugeVec // by table: rules in the kernel after the sync
	RulesLastSync          *prometheus.GaugeVec // by table: rules written by the last sync
	ServicePorts           prometheus.Gauge
	Endpoints              prometheus.Gauge
	ServiceChangesTotal    prometheus.Counter
	ServiceChangesPending  prometheus.Gauge
}

// New creates the metrics in a fresh registry, with the Go and process
// collectors added.
func New() *Metrics {
	// Same buckets as kube-proxy: 1ms .. 16s, doubling.
	syncBuckets := prometheus.ExponentialBuckets(0.001, 2, 15)
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets,
		}),
		SyncFullDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: subsystem, Name: "sync_full_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets,
		}),
		SyncPartialDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: subsystem, Name: "sync_partial_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets,
		}),
		NetworkProgramming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Subsystem: subsystem, Name: "network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds (from the EndpointSlice last-change-trigger-time to rules applied)",
			Buckets: merge(
				prometheus.LinearBuckets(0.25, 0.25, 2), // 0.25s, 0.50s
				prometheus.LinearBuckets(1, 1, 59),      // 1s .. 59s
				prometheus.LinearBuckets(60, 5, 12),     // 60s .. 115s
				prometheus.LinearBuckets(120, 30, 7),    // 2min .. 5min
			),
		}),
		LastSyncTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced",
		}),
		LastQueuedTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "The last time a sync of proxy rules was queued",
		}),
		SyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_failures_total",
			Help: "Cumulative proxy rules sync failures, any mode",
		}),
		RestoreFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_iptables_restore_failures_total",
			Help: "Cumulative proxy iptables restore failures",
		}),
		PartialRestoreFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_iptables_partial_restore_failures_total",
			Help: "Cumulative proxy iptables partial restore failures",
		}),
		RulesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_iptables_total",
			Help: "Total number of iptables rules owned by the proxier",
		}, []string{"table"}),
		RulesLastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_iptables_last",
			Help: "Number of iptables rules written by the proxier in the last sync",
		}, []string{"table"}),
		ServicePorts: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "proxymodes", Subsystem: "proxier", Name: "service_ports",
			Help: "Service ports in the last synced snapshot",
		}),
		Endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "proxymodes", Subsystem: "proxier", Name: "endpoints",
			Help: "Endpoints (all service ports) in the last synced snapshot",
		}),
		ServiceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_service_changes_total",
			Help: "Cumulative Services whose ports or endpoints changed",
		}),
		ServiceChangesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Subsystem: subsystem, Name: "sync_proxy_rules_service_changes_pending",
			Help: "Pending Service changes",
		}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.SyncDuration, m.SyncFullDuration, m.SyncPartialDuration, m.NetworkProgramming,
		m.LastSyncTimestamp, m.LastQueuedTimestamp, m.SyncFailures, m.RestoreFailures,
		m.PartialRestoreFailures, m.RulesTotal, m.RulesLastSync, m.ServicePorts, m.Endpoints,
		m.ServiceChangesTotal, m.ServiceChangesPending,
	)
	return m
}

func merge(parts ...[]float64) []float64 {
	var out []float64
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ObserveSync records one sync attempt of the given duration.
func (m *Metrics) ObserveSync(d time.Duration, full bool) {
	if m == nil {
		return
	}
	m.SyncDuration.Observe(d.Seconds())
	if full {
		m.SyncFullDuration.Observe(d.Seconds())
	} else {
		m.SyncPartialDuration.Observe(d.Seconds())
	}
}

// SyncFailed counts a failed sync.
func (m *Metrics) SyncFailed() {
	if m != nil {
		m.SyncFailures.Inc()
	}
}

// SyncSucceeded records a successful sync at now: its timestamp, the state
// sizes, and the network programming latency of each trigger time.
func (m *Metrics) SyncSucceeded(now time.Time, servicePorts, endpoints int, triggers []time.Time) {
	if m == nil {
		return
	}
	m.LastSyncTimestamp.Set(float64(now.UnixNano()) / 1e9)
	m.ServicePorts.Set(float64(servicePorts))
	m.Endpoints.Set(float64(endpoints))
	for _, t := range triggers {
		m.NetworkProgramming.Observe(now.Sub(t).Seconds())
	}
}

// SetRules records rule counts of one iptables table.
func (m *Metrics) SetRules(table string, total, lastSync int) {
	if m == nil {
		return
	}
	m.RulesTotal.WithLabelValues(table).Set(float64(total))
	m.RulesLastSync.WithLabelValues(table).Set(float64(lastSync))
}

// RestoreFailed counts a failed iptables-restore.
func (m *Metrics) RestoreFailed(partial bool) {
	if m == nil {
		return
	}
	m.RestoreFailures.Inc()
	if partial {
		m.PartialRestoreFailures.Inc()
	}
}
