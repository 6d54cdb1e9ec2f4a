// Package server wires the proxier together: informers feed the change
// tracker, a bounded-frequency runner calls the mode's Sync, and the
// metrics and health endpoints report how that goes.
package server

import (
	"context"
	"errors"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxymodes/proxymodes/proxier/conntrack"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/metrics"
	"github.com/proxymodes/proxymodes/proxier/runner"
	"github.com/proxymodes/proxymodes/proxier/tracker"
)

// Labels kube-proxy honours when choosing which Services to handle.
const (
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	labelHeadless         = "service.kubernetes.io/headless"
)

// Config configures a Proxier.
type Config struct {
	// Client talks to the API server (required).
	Client kubernetes.Interface
	// NodeName is this node's name, used to watch its Node object.
	NodeName string
	// Mode programs the dataplane (required).
	Mode core.Mode
	// MinSyncPeriod is the least time between syncs (default 1s).
	MinSyncPeriod time.Duration
	// SyncPeriod is the most time between syncs (default 30s).
	SyncPeriod time.Duration
	// RetryPeriod is the time until a failed sync is retried
	// (default max(MinSyncPeriod, 1s)).
	RetryPeriod time.Duration
	// FullSyncPeriod forces a full sync when the last one is this old
	// (default 1h, as kube-proxy: full iptables-nft syncs of thousands of
	// Services take seconds to minutes).
	FullSyncPeriod time.Duration
	// Metrics receives sync metrics; nil disables them.
	Metrics *metrics.Metrics
	// Health is updated after each successful sync; nil disables it.
	Health *Health
	// ServiceHealth serves healthCheckNodePorts after each successful
	// sync; nil disables them.
	ServiceHealth *ServiceHealth
	// Conntrack clears stale UDP entries after syncs; nil disables it.
	Conntrack conntrack.Cleaner
	// Clock is the time source; nil means the real clock.
	Clock clock.Clock
}

// Proxier runs one Mode against the API server.
type Proxier struct {
	cfg     Config
	clock   clock.Clock
	tracker *tracker.Tracker
	runner  *runner.Runner

	mu              sync.Mutex // guards the fields below (syncs are serial anyway)
	needFull        bool
	lastFull        time.Time
	pendingTriggers []time.Time
	pendingStale    core.ChangeSet
	syncs           int
	faults          fault.Filter // only used by pm_selftest builds
}

// wrapHandler lets a test slow the tracker's event handlers down.
var wrapHandler = func(h cache.ResourceEventHandler) cache.ResourceEventHandler { return h }

// New validates cfg and builds a Proxier. Nothing runs until Run.
func New(cfg Config) (*Proxier, error) {
	if cfg.Mode == nil {
		return nil, errors.New("server: Config.Mode is required")
	}
	if cfg.MinSyncPeriod == 0 {
		cfg.MinSyncPeriod = time.Second
	}
	if cfg.SyncPeriod == 0 {
		cfg.SyncPeriod = 30 * time.Second
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = max(cfg.MinSyncPeriod, time.Second)
	}
	if cfg.FullSyncPeriod == 0 {
		cfg.FullSyncPeriod = time.Hour
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	p := &Proxier{cfg: cfg, clock: cfg.Clock, needFull: true}
	r, err := runner.New(cfg.Mode.Name()+"-sync", p.SyncOnce, runner.Options{
		MinInterval: cfg.MinSyncPeriod, MaxInterval: cfg.SyncPeriod, RetryInterval: cfg.RetryPeriod, Clock: cfg.Clock,
	})
	if err != nil {
		return nil, err
	}
	p.runner = r
	p.tracker = tracker.New(cfg.NodeName, p.queued)
	return p, nil
}

// Tracker returns the change tracker (tests feed it directly).
func (p *Proxier) Tracker() *tracker.Tracker { return p.tracker }

func (p *Proxier) queued() {
	if p.cfg.Metrics != nil {
		// As kube-proxy's change trackers do: a reader that sees the new
		// queued time also sees the change pending until a sync takes it.
		p.cfg.Metrics.ServiceChangesPending.Set(float64(p.tracker.Pending()))
		p.cfg.Metrics.LastQueuedTimestamp.Set(float64(p.clock.Now().UnixNano()) / 1e9)
	}
	p.runner.Run()
}

// Run starts the informers, waits for their caches, and syncs until ctx
// is done. It returns an error only if the caches never sync.
func (p *Proxier) Run(ctx context.Context) error {
	if p.cfg.Client == nil {
		return errors.New("server: Config.Client is required to Run")
	}
	// Like kube-proxy: skip Services another proxy claims, and headless
	// ones (their slices carry the same label).
	noProxyName, err := labels.NewRequirement(labelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		return err
	}
	noHeadless, err := labels.NewRequirement(labelHeadless, selection.DoesNotExist, nil)
	if err != nil {
		return err
	}
	selector := labels.NewSelector().Add(*noProxyName, *noHeadless).String()
	factory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	svcInformer := factory.Core().V1().Services().Informer()
	sliceInformer := factory.Discovery().V1().EndpointSlices().Informer()
	svcReg, err := svcInformer.AddEventHandler(wrapHandler(p.tracker.ServiceHandler()))
	if err != nil {
		return err
	}
	sliceReg, err := sliceInformer.AddEventHandler(wrapHandler(p.tracker.EndpointSliceHandler()))
	if err != nil {
		return err
	}
	// The handlers', not the informers', HasSynced: an informer has synced
	// once its store holds the initial list, while its handlers may still
	// be delivering it. A first sync then saw part of the Services (6173
	// of 10001 in the bench of 2026-12-07) and, after a restart, deleted
	// the rules of the rest until the next sync.
	synced := []cache.InformerSynced{svcReg.HasSynced, sliceReg.HasSynced}
	if p.cfg.ServiceHealth != nil {
		defer p.cfg.ServiceHealth.Close()
	}

	if p.cfg.NodeName != "" {
		nodeFactory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", p.cfg.NodeName).String()
			}))
		nodeInformer := nodeFactory.Core().V1().Nodes().Informer()
		if _, err := nodeInformer.AddEventHandler(p.tracker.NodeHandler()); err != nil {
			return err
		}
		nodeFactory.Start(ctx.Done())
		defer nodeFactory.Shutdown()
		// The Node is informational; do not wait for it.
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if fault.WatchesAPI(fault.Current()) {
		go p.watchAPI(ctx)
	}

	klog.InfoS("Waiting for Service and EndpointSlice caches", "mode", p.cfg.Mode.Name())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("server: Service/EndpointSlice caches did not sync; check the kubeconfig and RBAC (list/watch services, endpointslices, nodes)")
	}
	klog.InfoS("Caches synced; starting sync loop", "mode", p.cfg.Mode.Name())
	p.runner.Run() // first sync right away
	p.runner.Loop(ctx)
	return nil
}

// watchAPI, for the self-test faults that break on a lost API server
// only, polls its /readyz and tells the fault filter; a change in the
// answer forces a full sync.
func (p *Proxier) watchAPI(ctx context.Context) {
	rc := p.cfg.Client.Discovery().RESTClient()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		down := rc.Get().AbsPath("/readyz").Do(rctx).Error() != nil
		cancel()
		p.mu.Lock()
		changed := p.faults.APIDown != down
		p.faults.APIDown = down
		p.faults.APILost = p.faults.APILost || down
		if changed {
			p.needFull = true
		}
		p.mu.Unlock()
		if changed {
			klog.InfoS("Self-test fault: the API server's answer changed", "fault", fault.Current(), "down", down)
			p.runner.Run()
		}
	}
}

// SyncOnce takes the tracker's state and syncs the mode once. The runner
// calls it; tests may call it directly.
func (p *Proxier) SyncOnce() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	snap, changes, triggers := p.tracker.Take()
	if f := fault.Current(); f != "" {
		snap = p.faults.Apply(f, snap)
	}
	p.pendingTriggers = append(p.pendingTriggers, triggers...)
	// Stale UDP state survives a failed sync so it is still cleared.
	p.pendingStale.StaleUDPEndpoints = append(p.pendingStale.StaleUDPEndpoints, changes.StaleUDPEndpoints...)
	p.pendingStale.StaleUDPServiceIPs = append(p.pendingStale.StaleUDPServiceIPs, changes.StaleUDPServiceIPs...)

	start := p.clock.Now()
	changes.Full = p.needFull || start.Sub(p.lastFull) >= p.cfg.FullSyncPeriod
	p.needFull = true // until this sync succeeds
	err := p.cfg.Mode.Sync(snap, changes)
	end := p.clock.Now()
	p.syncs++
	if err != nil {
		p.cfg.Metrics.ObserveSync(end.Sub(start), changes.Full)
		p.cfg.Metrics.SyncFailed()
		klog.ErrorS(err, "Sync failed; will retry with a full sync", "mode", p.cfg.Mode.Name(), "retryIn", p.cfg.RetryPeriod)
		return err
	}
	p.needFull = false
	if changes.Full {
		p.lastFull = start
	}
	if p.cfg.Metrics != nil {
		p.cfg.Metrics.ServiceChangesTotal.Add(float64(changes.Services.Len()))
		p.cfg.Metrics.ServiceChangesPending.Set(float64(p.tracker.Pending()))
	}
	p.cfg.Metrics.SyncSucceeded(end, len(snap.Services), snap.EndpointCount(), p.pendingTriggers)
	// After the timestamp, as kube-proxy does: a reader that sees this
	// sync counted in the histogram also sees when it ended, and can tell
	// when it began (harness/syncstate relies on that order).
	p.cfg.Metrics.ObserveSync(end.Sub(start), changes.Full)
	p.pendingTriggers = nil
	p.cfg.Health.Updated(end)
	// After the rules: a load balancer told "200" may send at once.
	if p.cfg.ServiceHealth != nil {
		if err := p.cfg.ServiceHealth.Sync(snap); err != nil {
			klog.ErrorS(err, "Serving health check ports failed; retrying at the next sync")
		}
	}
	if p.cfg.Conntrack != nil && fault.Current() != fault.StaleConntrackKept {
		if err := p.cfg.Conntrack.ClearStale(snap, p.pendingStale); err != nil {
			klog.ErrorS(err, "Clearing stale conntrack entries failed")
		}
		if len(p.pendingStale.StaleUDPEndpoints) > 0 {
			// A datagram that arrived between the data plane change and
			// the cleanup may have left a fresh stale entry (seen with
			// IPVS); the next sync's reconcile removes it, so make that
			// sync come after MinSyncPeriod, not SyncPeriod.
			p.runner.Run()
		}
	}
	p.pendingStale = core.ChangeSet{}
	klog.V(2).InfoS("Synced", "mode", p.cfg.Mode.Name(), "full", changes.Full, "changedServices", changes.Services.Len(),
		"servicePorts", len(snap.Services), "elapsed", end.Sub(start))
	return nil
}

// Syncs returns how many syncs were attempted.
func (p *Proxier) Syncs() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.syncs
}

// NeedsFullSync reports whether the next sync will be full because the
// last one failed (or none succeeded yet).
func (p *Proxier) NeedsFullSync() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.needFull
}
