// Package ipvs is the IPVS proxy mode. Every Service port becomes an IPVS
// virtual server on its cluster IP (and on each external IP, on each load
// balancer ingress IP, and on each node address for a NodePort); its
// usable endpoints become real servers reached by masquerading. Under a
// Local traffic policy the virtual servers it governs (internal: the
// cluster IP; external: NodePorts, external IPs and load balancer IPs) get
// only this node's endpoints, and external traffic under
// externalTrafficPolicy Local is not source-NATed, so the backend sees the
// client. The VIPs are bound to a dummy device (kube-ipvs0) so the node
// accepts their traffic, and a small iptables batch marks the connections
// that must be source-NATed and drops traffic to a load balancer IP from
// outside its loadBalancerSourceRanges.
//
// Each sync diffs the kernel's IPVS table against the snapshot and applies
// only the difference, so a restarted proxier converges without flushing
// and established connections survive. A real server whose endpoint stops
// being usable is first set to weight 0 (no new connections) and deleted
// on a later sync, once it has no active connections or its grace period
// has passed; UDP and SCTP real servers are deleted at once.
//
// Every dependency on the kernel is an injected interface (Interface for
// IPVS, Links for the dummy device, Sysctl, iptables.Interface), each with
// an in-memory fake, so the reconcile logic is unit-tested without ip_vs.
package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/iptables"
	"github.com/proxymodes/proxymodes/proxier/metrics"
)

// DefaultDummyDevice is the device that holds the VIPs, named as in
// kube-proxy.
const DefaultDummyDevice = "kube-ipvs0"

// DefaultScheduler is used when Config.Scheduler is empty.
const DefaultScheduler = "rr"

// DefaultGracePeriod bounds how long a weight-0 real server that still has
// active connections is kept before it is deleted.
const DefaultGracePeriod = 2 * time.Minute

// Schedulers lists the accepted --ipvs-scheduler values.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq"}

// ParseScheduler checks a --ipvs-scheduler value; empty means rr.
func ParseScheduler(s string) (string, error) {
	if s == "" {
		return DefaultScheduler, nil
	}
	if slices.Contains(Schedulers, s) {
		return s, nil
	}
	return "", fmt.Errorf("unknown IPVS scheduler %q: valid schedulers are %s", s, strings.Join(Schedulers, ", "))
}

// Config configures the IPVS mode. Nil interfaces get the real kernel
// implementation for the network namespace of the thread calling New.
type Config struct {
	// Scheduler is the IPVS scheduler of every virtual server (rr when
	// empty). New fails on values not in Schedulers.
	Scheduler string
	// IPTables applies the masquerade rules (required): an
	// *iptables.Backend, or an *iptables.Fake in tests.
	IPTables iptables.Interface
	// IPVS programs virtual and real servers; nil opens a Kernel handle.
	IPVS Interface
	// Links manages the dummy device; nil uses Netlink.
	Links Links
	// Sysctl sets the kernel parameters IPVS needs (on full syncs, in the
	// namespace of the syncing thread); nil uses /proc/sys.
	Sysctl Sysctl
	// ClusterCIDR is the pod CIDR: traffic to a cluster IP from outside it
	// is masqueraded. When unset, node-originated traffic is.
	ClusterCIDR netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit flagging packets for SNAT (0-31,
	// default 14).
	MasqueradeBit int
	// NodePortAddresses are the addresses NodePort virtual servers are
	// created on. When empty: the Node object's addresses, or, before the
	// Node is known, every local IPv4 address except loopback.
	NodePortAddresses []netip.Addr
	// ExcludeCIDRs protects virtual servers this mode did not create
	// (like kube-proxy's --ipvs-exclude-cidrs): every other IPv4 virtual
	// server in the namespace is considered ours and is reconciled away.
	ExcludeCIDRs []netip.Prefix
	// DummyDevice holds the VIPs (default kube-ipvs0).
	DummyDevice string
	// GracePeriod is how long a weight-0 real server with active
	// connections is kept (default DefaultGracePeriod).
	GracePeriod time.Duration
	// Clock times grace periods; nil is the real clock.
	Clock clock.PassiveClock
	// Metrics receives restore failures; may be nil.
	Metrics *metrics.Metrics
}

// Proxier is the IPVS Mode. It is not safe for concurrent use; the sync
// runner serialises calls.
type Proxier struct {
	scheduler   string
	ipvs        Interface
	links       Links
	sysctl      Sysctl
	ipt         iptables.Interface
	rcfg        ruleConfig
	nodePortIPs []netip.Addr
	exclude     []netip.Prefix
	dummy       string
	grace       time.Duration
	clock       clock.PassiveClock
	metrics     *metrics.Metrics

	// needFull is set until a sync succeeds: after start-up and after a
	// failure the kernel state is unknown, so everything is re-read.
	needFull bool
	// quiescing holds the real servers set to weight 0 (or found there)
	// that are waiting to be deleted, with when that was first seen.
	quiescing map[VSKey]map[netip.AddrPort]time.Time
	// lastRules is the body of the last batch applied; a partial sync
	// skips iptables-restore when nothing changed.
	lastRules []byte
	lastBatch []byte
	stats     SyncStats
}

// SyncStats describes the last sync attempt.
type SyncStats struct {
	Full            bool
	ServicePorts    int // in the snapshot
	VirtualServers  int // wanted after the sync
	ServicesAdded   int
	ServicesUpdated int
	ServicesDeleted int
	DestLists       int // virtual servers whose real servers were read and diffed
	DestsAdded      int
	DestsUpdated    int // weight changes other than quiescing
	DestsQuiesced   int // set to weight 0
	DestsDeleted    int
	Quiescing       int // weight-0 real servers still waiting
	AddrsBound      int
	AddrsUnbound    int
	RulesApplied    bool // iptables-restore ran
	IPVS            time.Duration
	IPTables        time.Duration
	Elapsed         time.Duration
}

var _ core.Mode = (*Proxier)(nil)

// New validates cfg and opens the kernel interfaces that were not injected,
// in the network namespace of the calling thread. It changes no kernel
// state: the first Sync sets the sysctls and programs IPVS.
func New(cfg Config) (*Proxier, error) {
	sched, err := ParseScheduler(cfg.Scheduler)
	if err != nil {
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	if cfg.IPTables == nil {
		return nil, errors.New("ipvs: Config.IPTables is required")
	}
	bit := cfg.MasqueradeBit
	if bit == 0 {
		bit = 14
	}
	if bit < 0 || bit > 31 {
		return nil, fmt.Errorf("ipvs: masquerade bit %d out of range 0-31", bit)
	}
	if cfg.ClusterCIDR.IsValid() && !cfg.ClusterCIDR.Addr().Is4() {
		return nil, fmt.Errorf("ipvs: cluster CIDR %s is not IPv4; this proxier handles IPv4 only", cfg.ClusterCIDR)
	}
	p := &Proxier{
		scheduler:   sched,
		ipvs:        cfg.IPVS,
		links:       cfg.Links,
		ipt:         cfg.IPTables,
		nodePortIPs: slices.Clone(cfg.NodePortAddresses),
		exclude:     slices.Clone(cfg.ExcludeCIDRs),
		dummy:       cfg.DummyDevice,
		grace:       cfg.GracePeriod,
		clock:       cfg.Clock,
		metrics:     cfg.Metrics,
		needFull:    true,
		quiescing:   map[VSKey]map[netip.AddrPort]time.Time{},
	}
	mark := fmt.Sprintf("%#x", uint32(1)<<bit)
	p.rcfg = ruleConfig{clusterCIDR: cfg.ClusterCIDR.Masked(), masqueradeAll: cfg.MasqueradeAll, masqMark: mark, masqMatch: mark + "/" + mark}
	if p.dummy == "" {
		p.dummy = DefaultDummyDevice
	}
	if p.grace <= 0 {
		p.grace = DefaultGracePeriod
	}
	if p.clock == nil {
		p.clock = clock.RealClock{}
	}
	if p.ipvs == nil {
		k, err := NewKernel()
		if err != nil {
			return nil, fmt.Errorf("ipvs: %w", err)
		}
		p.ipvs = k
	}
	if p.links == nil {
		n, err := NewNetlink()
		if err != nil {
			return nil, fmt.Errorf("ipvs: %w", err)
		}
		p.links = n
	}
	p.sysctl = cfg.Sysctl
	if p.sysctl == nil {
		p.sysctl = ProcSysctl{}
	}
	return p, nil
}

// Name implements core.Mode.
func (p *Proxier) Name() string { return "ipvs" }

// Scheduler returns the scheduler every virtual server gets.
func (p *Proxier) Scheduler() string { return p.scheduler }

// LastStats returns statistics of the last sync attempt.
func (p *Proxier) LastStats() SyncStats { return p.stats }

// LastBatch returns the iptables-restore input of the last sync that ran
// iptables-restore.
func (p *Proxier) LastBatch() []byte { return p.lastBatch }

// wantedVS is one virtual server the snapshot asks for.
type wantedVS struct {
	vs    VirtualServer
	svc   core.ServicePortName
	dests []RealServer
}

// desired computes the virtual servers and VIPs for snap.
func (p *Proxier) desired(snap *core.Snapshot) (map[VSKey]*wantedVS, []VSKey, []netip.Addr, error) {
	want := map[VSKey]*wantedVS{}
	var order []VSKey
	vips := map[netip.Addr]bool{}
	var nodeIPs []netip.Addr
	nodeIPsKnown := false

	// Conflicts and unsupported protocols are configuration problems that
	// a retry cannot fix, so they are logged, not returned.
	add := func(name core.ServicePortName, vs VirtualServer, dests []RealServer) {
		k := vs.Key()
		if prev, ok := want[k]; ok {
			klog.V(1).InfoS("Skipping virtual server already used by another service port", "virtualServer", k, "servicePort", name, "usedBy", prev.svc)
			return
		}
		want[k] = &wantedVS{vs: vs, svc: name, dests: dests}
		order = append(order, k)
	}
	for _, name := range snap.SortedServicePorts() {
		svc := snap.Services[name]
		proto, err := protocolNumber(svc.Protocol)
		if err != nil {
			klog.V(1).InfoS("Skipping service port", "servicePort", name, "err", err)
			continue
		}
		if !svc.ClusterIP.Is4() {
			klog.V(4).InfoS("Skipping service port without an IPv4 cluster IP", "servicePort", name)
			continue
		}
		realServers := func(eps []core.Endpoint) []RealServer {
			var out []RealServer
			for _, ep := range eps {
				if ep.IP.Is4() {
					out = append(out, RealServer{Address: ep.IP, Port: uint16(ep.Port), Weight: 1})
				}
			}
			return out
		}
		// internalTrafficPolicy Local: the cluster IP's virtual server
		// has this node's endpoints only, and none when there are none
		// here (IPVS then refuses, as for kube-proxy).
		internal, _ := core.InternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
		// externalTrafficPolicy Local does the same for the NodePort,
		// external-IP and load-balancer-IP virtual servers. IPVS cannot
		// tell a pod or the node itself from an outside client there, so
		// unlike the iptables mode they get this node's endpoints too.
		// Where there are none, kube-proxy falls back to the cluster-wide
		// endpoints when the internal policy allows it (kubernetes#97081),
		// which lets pods in but sends outside clients to a backend whose
		// unSNATed reply never reaches them; refusing fails them fast
		// instead.
		external, _ := core.ExternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
		dests := realServers(external)
		base := VirtualServer{Protocol: proto, Scheduler: p.scheduler}
		if svc.ClientIPAffinity {
			base.Persistent, base.Timeout = true, uint32(svc.StickyTimeoutSeconds)
		}
		at := func(a netip.Addr, port int32) VirtualServer {
			vs := base
			vs.Address, vs.Port = a, uint16(port)
			return vs
		}
		add(name, at(svc.ClusterIP, svc.Port), realServers(internal))
		vips[svc.ClusterIP] = true
		for _, eip := range svc.ExternalIPs {
			if eip.Is4() {
				add(name, at(eip, svc.Port), dests)
				vips[eip] = true
			}
		}
		// A load balancer delivers its traffic with the ingress IP as
		// destination, so the node must accept it like an external IP;
		// loadBalancerSourceRanges are enforced by the filter rules, not
		// here, since IPVS has no notion of a source.
		for _, lb := range svc.LoadBalancerIPs {
			if lb.Is4() {
				add(name, at(lb, svc.Port), dests)
				vips[lb] = true
			}
		}
		if svc.NodePort != 0 {
			if !nodeIPsKnown {
				nodeIPs, err = p.nodeAddresses(snap)
				if err != nil {
					return nil, nil, nil, err
				}
				nodeIPsKnown = true
			}
			for _, a := range nodeIPs {
				add(name, at(a, svc.NodePort), dests)
			}
		}
	}
	sortedVIPs := make([]netip.Addr, 0, len(vips))
	for a := range vips {
		sortedVIPs = append(sortedVIPs, a)
	}
	slices.SortFunc(sortedVIPs, netip.Addr.Compare)
	return want, order, sortedVIPs, nil
}

// nodeAddresses returns the IPv4 addresses NodePorts are served on.
func (p *Proxier) nodeAddresses(snap *core.Snapshot) ([]netip.Addr, error) {
	src := p.nodePortIPs
	if len(src) == 0 && snap.Node != nil {
		src = snap.Node.Addresses
	}
	if len(src) == 0 {
		local, err := p.links.LocalAddrs(p.dummy)
		if err != nil {
			return nil, fmt.Errorf("listing node addresses for NodePorts: %w", err)
		}
		src = local
	}
	var out []netip.Addr
	for _, a := range src {
		if a.Is4() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// owned reports whether a virtual server in the kernel is ours to manage.
func (p *Proxier) owned(a netip.Addr) bool {
	for _, c := range p.exclude {
		if c.Contains(a) {
			return false
		}
	}
	return true
}

// errList collects per-object errors so that one bad Service does not stop
// the others from being programmed.
type errList []error

func (e *errList) add(err error) {
	if err != nil {
		*e = append(*e, err)
	}
}

func (e errList) err() error {
	const shown = 10
	if len(e) <= shown {
		return errors.Join(e...)
	}
	return errors.Join(append(slices.Clone(e[:shown]), fmt.Errorf("... and %d more errors", len(e)-shown))...)
}

// Sync implements core.Mode.
func (p *Proxier) Sync(snap *core.Snapshot, changes core.ChangeSet) error {
	start := p.clock.Now()
	full := changes.Full || p.needFull
	p.needFull = true // cleared only on success
	st := SyncStats{Full: full, ServicePorts: len(snap.Services)}
	defer func() {
		st.Elapsed = p.clock.Since(start)
		p.stats = st
	}()
	var errs errList

	want, order, vips, err := p.desired(snap)
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	st.VirtualServers = len(want)

	// VIPs first: a virtual server is useless until the node accepts
	// traffic for its address.
	if full {
		// Full syncs re-check the node's sysctls too, in case something
		// reset them.
		if err := EnsureSysctls(p.sysctl); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
		if err := p.links.EnsureDummy(p.dummy); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
	}
	bound, err := p.links.Addrs(p.dummy)
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	isBound := make(map[netip.Addr]bool, len(bound))
	for _, a := range bound {
		isBound[a] = true
	}
	for _, a := range vips {
		if !isBound[a] {
			errs.add(p.links.AddAddr(p.dummy, a))
			st.AddrsBound++
		}
	}

	ipvsStart := p.clock.Now()
	current, err := p.ipvs.GetServices()
	if err != nil {
		return fmt.Errorf("ipvs: listing virtual servers: %w", err)
	}
	inKernel := make(map[VSKey]VirtualServer, len(current))
	for _, vs := range current {
		inKernel[vs.Key()] = vs
	}
	for _, k := range order {
		w := want[k]
		cur, exists := inKernel[k]
		created := false
		switch {
		case !exists:
			if err := p.ipvs.NewService(w.vs); err != nil {
				errs.add(fmt.Errorf("adding virtual server %s for %s: %w", w.vs, w.svc, err))
				continue
			}
			created = true
			st.ServicesAdded++
		case !cur.sameSettings(w.vs):
			if err := p.ipvs.UpdateService(w.vs); err != nil {
				errs.add(fmt.Errorf("updating virtual server %s for %s: %w", w.vs, w.svc, err))
			} else {
				st.ServicesUpdated++
			}
		}
		if created || full || changes.Changed(w.svc.NamespacedName) || len(p.quiescing[k]) > 0 {
			errs.add(p.syncDests(k, w, created, &st))
		}
	}
	var stale []VSKey
	for k := range inKernel {
		if want[k] == nil && p.owned(k.Address) {
			stale = append(stale, k)
		}
	}
	sort.Slice(stale, func(i, j int) bool { return lessKey(stale[i], stale[j]) })
	keepIPVS := fault.Current() == fault.IPVSStateKept
	if keepIPVS {
		stale = nil
	}
	for _, k := range stale {
		// The whole Service (or this address of it) is gone: nothing
		// can reach it any more, so there is nothing to drain.
		if err := p.ipvs.DeleteService(k); err != nil {
			errs.add(fmt.Errorf("deleting virtual server %s: %w", k, err))
			continue
		}
		delete(p.quiescing, k)
		st.ServicesDeleted++
	}
	for k := range p.quiescing {
		if want[k] == nil {
			delete(p.quiescing, k)
		}
		st.Quiescing += len(p.quiescing[k])
	}
	st.IPVS = p.clock.Since(ipvsStart)

	// Unbind VIPs only after their virtual servers are gone.
	for _, a := range bound {
		if _, found := slices.BinarySearchFunc(vips, a, netip.Addr.Compare); !found && !keepIPVS {
			errs.add(p.links.DelAddr(p.dummy, a))
			st.AddrsUnbound++
		}
	}

	iptStart := p.clock.Now()
	errs.add(p.syncRules(snap, full, &st))
	st.IPTables = p.clock.Since(iptStart)

	if len(errs) > 0 {
		return fmt.Errorf("ipvs: %s sync: %w", syncKind(full), errs.err())
	}
	p.needFull = false
	klog.V(2).InfoS("ipvs sync done", "full", full, "servicePorts", st.ServicePorts, "virtualServers", st.VirtualServers,
		"added", st.ServicesAdded, "updated", st.ServicesUpdated, "deleted", st.ServicesDeleted,
		"destsAdded", st.DestsAdded, "destsQuiesced", st.DestsQuiesced, "destsDeleted", st.DestsDeleted,
		"quiescing", st.Quiescing, "rulesApplied", st.RulesApplied, "elapsed", p.clock.Since(start))
	return nil
}

func syncKind(full bool) string {
	if full {
		return "full"
	}
	return "partial"
}

// syncDests makes the real servers of one virtual server match w.dests.
// Real servers that are no longer wanted are quiesced (weight 0) first and
// deleted on a later sync, once idle or after the grace period.
func (p *Proxier) syncDests(k VSKey, w *wantedVS, created bool, st *SyncStats) error {
	var errs errList
	if created {
		for _, rs := range w.dests {
			if err := p.ipvs.NewDestination(k, rs); err != nil {
				errs.add(fmt.Errorf("adding real server %s to %s: %w", rs.AddrPort(), k, err))
				continue
			}
			st.DestsAdded++
		}
		return errs.err()
	}
	cur, err := p.ipvs.GetDestinations(k)
	if err != nil {
		return fmt.Errorf("listing real servers of %s: %w", k, err)
	}
	st.DestLists++
	have := make(map[netip.AddrPort]RealServer, len(cur))
	for _, rs := range cur {
		have[rs.AddrPort()] = rs
	}
	wanted := make(map[netip.AddrPort]bool, len(w.dests))
	for _, rs := range w.dests {
		ap := rs.AddrPort()
		wanted[ap] = true
		h, ok := have[ap]
		switch {
		case !ok:
			if err := p.ipvs.NewDestination(k, rs); err != nil {
				errs.add(fmt.Errorf("adding real server %s to %s: %w", ap, k, err))
				continue
			}
			st.DestsAdded++
		case h.Weight != rs.Weight:
			// Also brings a quiescing endpoint that is usable again back.
			if err := p.ipvs.UpdateDestination(k, rs); err != nil {
				errs.add(fmt.Errorf("setting weight of real server %s of %s: %w", ap, k, err))
				continue
			}
			st.DestsUpdated++
		}
	}

	now := p.clock.Now()
	prev := p.quiescing[k]
	next := map[netip.AddrPort]time.Time{}
	for _, h := range cur {
		ap := h.AddrPort()
		if wanted[ap] {
			continue
		}
		since, tracked := prev[ap]
		switch {
		case k.Protocol != ProtoTCP:
			// UDP and SCTP are deleted at once, as kube-proxy does: a
			// quiesced real server keeps its UDP flows (IPVS counts them
			// as inactive, never active) pinned to a backend that is
			// gone until the next sync, while a deleted one lets
			// expire_nodest_conn move each flow on its next datagram.
			if err := p.ipvs.DeleteDestination(k, ap); err != nil {
				errs.add(fmt.Errorf("deleting real server %s of %s: %w", ap, k, err))
				continue
			}
			st.DestsDeleted++
		case h.Weight != 0:
			if err := p.ipvs.UpdateDestination(k, RealServer{Address: h.Address, Port: h.Port, Weight: 0}); err != nil {
				errs.add(fmt.Errorf("quiescing real server %s of %s: %w", ap, k, err))
				continue
			}
			st.DestsQuiesced++
			next[ap] = now
		case !tracked:
			// Found at weight 0 (after a restart): its grace period
			// starts now.
			next[ap] = now
		case h.ActiveConnections == 0 || now.Sub(since) >= p.grace:
			if err := p.ipvs.DeleteDestination(k, ap); err != nil {
				errs.add(fmt.Errorf("deleting real server %s of %s: %w", ap, k, err))
				next[ap] = since
				continue
			}
			st.DestsDeleted++
		default:
			next[ap] = since
		}
	}
	if len(next) > 0 {
		p.quiescing[k] = next
	} else {
		delete(p.quiescing, k)
	}
	return errs.err()
}

// syncRules applies the masquerade rules. A full sync always restores
// (and repairs our jump rules); a partial one only when the rules of our
// chains changed.
func (p *Proxier) syncRules(snap *core.Snapshot, full bool, st *SyncStats) error {
	var existing map[string]*iptables.Table
	if full {
		data, err := p.ipt.Save()
		if err != nil {
			return fmt.Errorf("reading iptables rules: %w", err)
		}
		if existing, err = iptables.ParseSave(data); err != nil {
			return fmt.Errorf("parsing iptables-save output: %w", err)
		}
	}
	r := renderRules(p.rcfg, snap, existing)
	body := r.body()
	if !full && p.lastRules != nil && string(body) == string(p.lastRules) {
		return nil
	}
	batch := r.batch()
	p.lastBatch = batch
	p.lastRules = nil
	if err := p.ipt.Restore(batch); err != nil {
		p.metrics.RestoreFailed(!full)
		return fmt.Errorf("applying iptables rules: %w", err)
	}
	p.lastRules = body
	st.RulesApplied = true
	p.metrics.SetRules(tableNAT, r.natBody.lines+r.natJumps.lines, r.natBody.lines+r.natJumps.lines)
	p.metrics.SetRules(tableFilter, r.filterBody.lines+r.filterJumps.lines, r.filterBody.lines+r.filterJumps.lines)
	return nil
}

// Cleanup implements core.Mode: it deletes every virtual server this mode
// owns, the dummy device with its VIPs, and the iptables rules.
func (p *Proxier) Cleanup() error {
	p.needFull = true
	p.quiescing = map[VSKey]map[netip.AddrPort]time.Time{}
	p.lastRules = nil
	return cleanup(p.ipvs, p.links, p.ipt, p.dummy, p.exclude)
}

// CleanupLeftovers removes what an IPVS-mode proxier may have left in the
// current network namespace, without constructing one (no sysctls are
// touched). Interfaces left nil in cfg are opened on the kernel; IPVS is
// skipped when the kernel has none. cfg.IPTables is required.
func CleanupLeftovers(cfg Config) error {
	if cfg.IPTables == nil {
		return errors.New("ipvs cleanup: Config.IPTables is required")
	}
	var errs []error
	h := cfg.IPVS
	if h == nil && HasIPVS() {
		k, err := NewKernel()
		if err != nil {
			errs = append(errs, err)
		} else {
			defer k.Close()
			h = k
		}
	}
	links := cfg.Links
	if links == nil {
		n, err := NewNetlink()
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		defer n.Close()
		links = n
	}
	dummy := cfg.DummyDevice
	if dummy == "" {
		dummy = DefaultDummyDevice
	}
	return errors.Join(append(errs, cleanup(h, links, cfg.IPTables, dummy, cfg.ExcludeCIDRs))...)
}

func cleanup(h Interface, links Links, ipt iptables.Interface, dummy string, exclude []netip.Prefix) error {
	var errs []error
	if h != nil {
		svcs, err := h.GetServices()
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs cleanup: listing virtual servers: %w", err))
		}
		p := &Proxier{exclude: exclude}
		for _, vs := range svcs {
			if !p.owned(vs.Address) {
				continue
			}
			if err := h.DeleteService(vs.Key()); err != nil {
				errs = append(errs, fmt.Errorf("ipvs cleanup: deleting %s: %w", vs.Key(), err))
			}
		}
	}
	if err := links.DeleteDummy(dummy); err != nil {
		errs = append(errs, fmt.Errorf("ipvs cleanup: %w", err))
	}
	if err := cleanupRules(ipt); err != nil {
		errs = append(errs, fmt.Errorf("ipvs cleanup: %w", err))
	}
	return errors.Join(errs...)
}
