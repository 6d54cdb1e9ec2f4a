// Package nftables is the nftables proxy mode, built the way that makes
// nftables scale (kube-proxy's nftables mode, KEP-3866): everything lives
// in one table of our own, `ip proxymodes`, and no other table is touched.
//
//	nat-prerouting, nat-output -> services:
//	    ip daddr . meta l4proto . th dport vmap @service-ips      (cluster, external and LB IPs: O(1))
//	    fib daddr type local ... meta l4proto . th dport vmap @service-nodeports
//	svc-<id>: mark off-cluster sources for SNAT; affinity checks;
//	    numgen random mod N == 0 goto ep-<id>; ... (a cascade, up to
//	    MaxCascade endpoints), or numgen random mod N vmap { 0 : goto ep-<id>, ... }
//	svl-<id>: the same over this node's endpoints, for a cluster IP with
//	    internalTrafficPolicy Local (dropped where there are none) and for
//	    outside clients under externalTrafficPolicy Local
//	ext-<id>: mark for SNAT, goto svc-<id>           (NodePorts, external and LB IPs)
//	    under externalTrafficPolicy Local: pods goto svc-<id>; the node
//	    itself marked, goto svc-<id>; anyone else goto svl-<id> unmarked
//	    (dropped in endpoints-check where this node has no endpoints)
//	ep-<id>:  mark hairpin traffic, refresh affinity, dnat to the endpoint
//	fw-<id>:  ip saddr != { loadBalancerSourceRanges } drop
//	nat-postrouting -> masquerading: masquerade what carries the mark
//	filter-prerouting-pre-dnat, filter-output-pre-dnat (ct state new,
//	    before DNAT) -> firewall-check:
//	    ip daddr . meta l4proto . th dport vmap @firewall-ips -> goto fw-<id>
//	    (load balancer IPs of Services with loadBalancerSourceRanges)
//	filter-input/forward/output (ct state new) -> endpoints-check:
//	    vmaps @no-endpoint-services / @no-endpoint-nodeports -> goto reject,
//	    or drop for a traffic policy Local without endpoints on this node
//
// A Service picks among up to MaxCascade endpoints with a cascade of
// "numgen random mod k == 0 goto ep-<id>" rules, and among more with one
// "numgen random mod N vmap { ... }": that anonymous map makes the pick
// O(1) per new connection, but each one costs the kernel time that grows
// with the table, so a full sync of 10k two-endpoint Services took 21 s
// from an empty table and 52 s over its own (bench, 2026-12-07), and 7.2 s
// at 5k with the maps against 1.3 s with cascades (nft -f of the same
// transaction). A cascade costs one numgen per step, only for a
// connection's first packet.
//
// A full sync is one transaction that rewrites every Service and removes
// what is no longer wanted; a partial sync touches only the changed
// Services' chains, sets and map elements.
package nftables

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
)

// TableName is the mode's table (family ip). Cleanup deletes it whole.
const TableName = "proxymodes"

// MaxCascade is the most endpoints a Service picks among with a cascade
// of rules rather than an anonymous map (see the package comment): past
// it, the O(1) pick is worth its cost in sync time.
const MaxCascade = 8

// NewInterface returns the knftables interface of the mode's table. It
// lists objects over netlink (knftables' UseNetlink; kube-proxy v1.37 does
// the same, its NFTablesNetlink gate being on by default): a full sync
// lists the table to find what to delete, and `nft --json list table`
// prints every rule: 5.4 s of a 7.3 s full sync over an existing table at
// 10k Services, against 0.6 s of 2.6 s over netlink (scratch netns,
// 2026-12-07). Transactions still go through nft. Listing uses the
// calling thread's network namespace, as nft would.
func NewInterface() (knftables.Interface, error) {
	return knftables.New(knftables.IPv4Family, TableName, knftables.UseNetlink)
}

// Fixed objects of the table.
const (
	servicesChain        = "services"
	masqueradingChain    = "masquerading"
	markMasqChain        = "mark-for-masquerade"
	endpointsCheckChain  = "endpoints-check"
	rejectChain          = "reject-chain"
	firewallCheckChain   = "firewall-check"
	firewallIPsMap       = "firewall-ips"
	serviceIPsMap        = "service-ips"
	serviceNodePortsMap  = "service-nodeports"
	noEndpointServices   = "no-endpoint-services"
	noEndpointNodePorts  = "no-endpoint-nodeports"
	ipProtoPortMapType   = "ipv4_addr . inet_proto . inet_service : verdict"
	protoPortMapType     = "inet_proto . inet_service : verdict"
	svcChainPrefix       = "svc-"
	svlChainPrefix       = "svl-"
	extChainPrefix       = "ext-"
	epChainPrefix        = "ep-"
	fwChainPrefix        = "fw-"
	affinitySetPrefix    = "affinity-"
	localNodePortsMatch  = "fib daddr type local ip daddr != 127.0.0.0/8"
	dispatchOnIPProtoKey = "ip daddr . meta l4proto . th dport"
)

// Config configures the nftables mode.
type Config struct {
	// NFT runs transactions on the table TableName, family ip: a real
	// knftables.Interface, or knftables.NewFake in tests.
	NFT knftables.Interface
	// ClusterCIDR is the pod CIDR. Traffic to a cluster IP from outside it
	// is masqueraded. When unset, only hairpin and external traffic is.
	ClusterCIDR netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit that flags packets for SNAT (0-31);
	// kube-proxy's default is 14.
	MasqueradeBit int
	// KeepTransactions keeps every sync's transaction text for
	// LastTransaction; otherwise only a failed one's is kept. At 30k
	// Services a full sync's text is 35 MiB, which would stay live
	// between syncs.
	KeepTransactions bool
}

// Proxier is the nftables Mode. The sync runner serialises its Syncs.
type Proxier struct {
	nft           knftables.Interface
	clusterCIDR   netip.Prefix
	masqueradeAll bool
	mark          string // "0x4000"
	keepTx        bool

	// needFull is set until a sync succeeds: after start-up and after a
	// failure the table's contents are unknown.
	needFull bool
	// owned is what the last successful sync programmed per Service, so
	// that a partial sync can remove what a changed Service no longer has.
	owned map[types.NamespacedName]*objects

	// nodeAddrs are the node's addresses the last successful sync saw.
	nodeAddrs []netip.Addr

	lastTx string
	stats  SyncStats
}

// objects are the per-Service things in the table.
type objects struct {
	chains   []string
	sets     []string
	elements []*knftables.Element
}

// SyncStats describes the last sync attempt.
type SyncStats struct {
	Full       bool
	Services   int // service ports in the snapshot
	Rewritten  int // service ports whose chains were written
	Chains     int // per-Service chains after the sync
	Deleted    int // per-Service chains and sets removed
	Operations int // commands in the transaction
	Render     time.Duration
	Apply      time.Duration
}

var _ core.Mode = (*Proxier)(nil)

// New returns an nftables mode over cfg.NFT.
func New(cfg Config) (*Proxier, error) {
	if cfg.NFT == nil {
		return nil, errors.New("nftables: Config.NFT is required")
	}
	bit := cfg.MasqueradeBit
	if bit == 0 {
		bit = 14
	}
	if bit < 0 || bit > 31 {
		return nil, fmt.Errorf("nftables: masquerade bit %d out of range 0-31", bit)
	}
	if cfg.ClusterCIDR.IsValid() && !cfg.ClusterCIDR.Addr().Is4() {
		return nil, fmt.Errorf("nftables: cluster CIDR %s is not IPv4; this proxier handles IPv4 only", cfg.ClusterCIDR)
	}
	return &Proxier{
		nft:           cfg.NFT,
		clusterCIDR:   cfg.ClusterCIDR.Masked(),
		masqueradeAll: cfg.MasqueradeAll,
		keepTx:        cfg.KeepTransactions,
		mark:          fmt.Sprintf("%#x", uint32(1)<<bit),
		needFull:      true,
		owned:         map[types.NamespacedName]*objects{},
	}, nil
}

// Name implements core.Mode.
func (p *Proxier) Name() string { return "nftables" }

// LastTransaction is the text of the last sync's transaction, when it
// failed or Config.KeepTransactions is set ("" otherwise).
func (p *Proxier) LastTransaction() string { return p.lastTx }

// LastStats returns statistics of the last sync attempt.
func (p *Proxier) LastStats() SyncStats { return p.stats }

// Sync implements core.Mode.
func (p *Proxier) Sync(snap *core.Snapshot, changes core.ChangeSet) error {
	ctx := context.Background()
	full := changes.Full || p.needFull
	p.needFull = true // cleared only on success
	// Which firewall chains let the node through depends on its
	// addresses, and the change tracker reports no Service changed when
	// only the Node did (or when its object first shows up, after the
	// first sync).
	addrs := nodeAddrs(snap)
	if !full && !slices.Equal(addrs, p.nodeAddrs) {
		changes = withSourceRanges(snap, changes)
	}
	st := SyncStats{Full: full, Services: len(snap.Services)}

	renderStart := time.Now()
	tx := p.nft.NewTransaction()
	var existing map[string][]string
	if full {
		var err error
		if existing, err = p.listTable(ctx); err != nil {
			return fmt.Errorf("nftables: listing table %s: %w", TableName, err)
		}
		p.base(tx)
	}
	owned := p.render(tx, snap, changes, full, existing, &st)
	st.Render = time.Since(renderStart)
	st.Operations = tx.NumOperations()
	p.lastTx = ""
	if p.keepTx {
		p.lastTx = tx.String()
	}

	applyStart := time.Now()
	err := p.nft.Run(ctx, tx)
	st.Apply = time.Since(applyStart)
	p.stats = st
	if err != nil {
		p.lastTx = tx.String()
		return fmt.Errorf("nftables: applying %s sync: %w", syncKind(full), err)
	}
	p.needFull = false
	p.owned = owned
	p.nodeAddrs = addrs
	klog.V(2).InfoS("nftables sync done", "full", full, "servicePorts", st.Services, "rewritten", st.Rewritten,
		"chains", st.Chains, "deleted", st.Deleted, "operations", st.Operations, "render", st.Render, "apply", st.Apply)
	return nil
}

// listTable returns the names of the table's chains and sets, none when
// the table is absent. Chains are listed first: listing them by netlink
// never fails for an absent table (all of the family's chains are read and
// filtered by table), while listing sets fails with an error knftables
// v0.0.22 does not recognise as not-found (its text alone says ENOENT).
// Every table this mode writes has chains.
func (p *Proxier) listTable(ctx context.Context) (map[string][]string, error) {
	chains, err := p.nft.List(ctx, "chain")
	if knftables.IsNotFound(err) || (err == nil && len(chains) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sets, err := p.nft.List(ctx, "set")
	if err != nil {
		return nil, err
	}
	return map[string][]string{"chain": chains, "set": sets}, nil
}

// nodeAddrs returns the node's addresses, sorted.
func nodeAddrs(snap *core.Snapshot) []netip.Addr {
	if snap.Node == nil {
		return nil
	}
	return slices.Compact(slices.SortedFunc(slices.Values(snap.Node.Addresses), netip.Addr.Compare))
}

// withSourceRanges returns changes plus every Service with a firewall
// chain. changes is left as it is: the caller may hold on to it.
func withSourceRanges(snap *core.Snapshot, changes core.ChangeSet) core.ChangeSet {
	out := changes
	out.Services = sets.New[types.NamespacedName]()
	if changes.Services != nil {
		out.Services = changes.Services.Clone()
	}
	for n, sp := range snap.Services {
		if len(sp.LoadBalancerIPs) > 0 && len(sp.LoadBalancerSourceRanges) > 0 {
			out.Services.Insert(n.NamespacedName)
		}
	}
	return out
}

func syncKind(full bool) string {
	if full {
		return "full"
	}
	return "partial"
}

// base adds the table's fixed objects and empties its maps: a full sync
// refills them.
func (p *Proxier) base(tx *knftables.Transaction) {
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("proxymodes reference proxier, nftables mode")})
	hook := func(name string, typ knftables.BaseChainType, h knftables.BaseChainHook, prio knftables.BaseChainPriority, rule string) {
		tx.Add(&knftables.Chain{Name: name, Type: knftables.PtrTo(typ), Hook: knftables.PtrTo(h), Priority: knftables.PtrTo(prio)})
		tx.Flush(&knftables.Chain{Name: name})
		tx.Add(&knftables.Rule{Chain: name, Rule: rule})
	}
	for _, c := range []string{servicesChain, masqueradingChain, markMasqChain, endpointsCheckChain, rejectChain, firewallCheckChain} {
		tx.Add(&knftables.Chain{Name: c})
		tx.Flush(&knftables.Chain{Name: c})
	}
	for _, m := range []struct{ name, typ string }{
		{serviceIPsMap, ipProtoPortMapType}, {serviceNodePortsMap, protoPortMapType},
		{noEndpointServices, ipProtoPortMapType}, {noEndpointNodePorts, protoPortMapType},
		{firewallIPsMap, ipProtoPortMapType},
	} {
		tx.Add(&knftables.Map{Name: m.name, Type: m.typ})
		tx.Flush(&knftables.Map{Name: m.name})
	}
	hook("nat-prerouting", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority, "jump "+servicesChain)
	hook("nat-output", knftables.NATType, knftables.OutputHook, knftables.DNATPriority, "jump "+servicesChain)
	hook("nat-postrouting", knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority, "jump "+masqueradingChain)
	// A Service without endpoints is not DNATed, so its packets reach
	// these hooks still addressed to it.
	for _, h := range []knftables.BaseChainHook{knftables.InputHook, knftables.ForwardHook, knftables.OutputHook} {
		hook("filter-"+string(h), knftables.FilterType, h, knftables.FilterPriority, "ct state new jump "+endpointsCheckChain)
	}
	// loadBalancerSourceRanges judge the destination a client chose, the
	// load balancer IP, which nat-prerouting/nat-output rewrite: these
	// run just before them. (Not in the filter-priority hooks, which see
	// the endpoint. And only drop: kernels before 5.9 refuse reject in
	// prerouting.)
	for _, h := range []knftables.BaseChainHook{knftables.PreroutingHook, knftables.OutputHook} {
		hook("filter-"+string(h)+"-pre-dnat", knftables.FilterType, h, knftables.DNATPriority+"-10", "ct state new jump "+firewallCheckChain)
	}

	tx.Add(&knftables.Rule{Chain: servicesChain, Rule: dispatchOnIPProtoKey + " vmap @" + serviceIPsMap})
	tx.Add(&knftables.Rule{Chain: servicesChain, Rule: localNodePortsMatch + " meta l4proto . th dport vmap @" + serviceNodePortsMap})
	tx.Add(&knftables.Rule{Chain: endpointsCheckChain, Rule: dispatchOnIPProtoKey + " vmap @" + noEndpointServices})
	tx.Add(&knftables.Rule{Chain: endpointsCheckChain, Rule: localNodePortsMatch + " meta l4proto . th dport vmap @" + noEndpointNodePorts})
	tx.Add(&knftables.Rule{Chain: firewallCheckChain, Rule: dispatchOnIPProtoKey + " vmap @" + firewallIPsMap})
	tx.Add(&knftables.Rule{Chain: rejectChain, Rule: "reject"})
	tx.Add(&knftables.Rule{Chain: markMasqChain, Rule: "meta mark set meta mark | " + p.mark})
	tx.Add(&knftables.Rule{Chain: masqueradingChain, Rule: "meta mark & " + p.mark + " == 0 return"})
	// Clear the mark so a packet that traverses the stack again is not
	// masqueraded twice.
	tx.Add(&knftables.Rule{Chain: masqueradingChain, Rule: "meta mark set meta mark ^ " + p.mark})
	tx.Add(&knftables.Rule{Chain: masqueradingChain, Rule: "masquerade fully-random"})
}

// id names a Service port's (or an endpoint's) objects after a hash of
// what they serve: stable across syncs and restarts.
func id(parts ...string) string {
	h := sha256.Sum256([]byte("proxymodes/" + strings.Join(parts, "/")))
	return strings.ToLower(base32.StdEncoding.EncodeToString(h[:])[:16])
}

// render adds the Services to tx and returns what each Service owns
// afterwards. On a full sync existing lists the table's objects before it
// (nil on the first), and everything per-Service not rendered is deleted.
func (p *Proxier) render(tx *knftables.Transaction, snap *core.Snapshot, changes core.ChangeSet, full bool,
	existing map[string][]string, st *SyncStats) map[types.NamespacedName]*objects {
	owned := map[types.NamespacedName]*objects{}
	// Whole Services, since changes are tracked per Service: a changed
	// Service has every port rewritten.
	for n, o := range p.owned {
		if !full && !changes.Changed(n) {
			owned[n] = o
		}
	}
	rewrite := func(n types.NamespacedName) bool { return full || changes.Changed(n) }

	// Map elements of rewritten Services go first: the chains they name
	// may be deleted below, which nft refuses while an element refers to
	// them. On a full sync the maps were flushed already.
	if !full {
		for n, o := range p.owned {
			if rewrite(n) {
				for _, e := range o.elements {
					tx.Delete(e)
				}
			}
		}
	}

	addrs := nodeAddrs(snap)
	for _, name := range snap.SortedServicePorts() {
		if !rewrite(name.NamespacedName) {
			continue
		}
		o := owned[name.NamespacedName]
		if o == nil {
			o = &objects{}
			owned[name.NamespacedName] = o
		}
		p.renderService(tx, snap.Services[name], snap.Endpoints[name], snap.NodeName, addrs, o)
		st.Rewritten++
	}

	// What the rewritten Services had and no longer have goes, after the
	// chains that referred to it were flushed or rewritten above.
	keep := map[string]bool{}
	for _, o := range owned {
		for _, c := range o.chains {
			keep[c] = true
		}
		for _, s := range o.sets {
			keep[s] = true
		}
	}
	var staleChains, staleSets []string
	if full && fault.Current() != fault.KernelStateForgotten {
		for _, c := range existing["chain"] {
			if isServiceObject(c) && !keep[c] {
				staleChains = append(staleChains, c)
			}
		}
		for _, s := range existing["set"] {
			if strings.HasPrefix(s, affinitySetPrefix) && !keep[s] {
				staleSets = append(staleSets, s)
			}
		}
	} else {
		for n, o := range p.owned {
			if !rewrite(n) {
				continue
			}
			for _, c := range o.chains {
				if !keep[c] {
					staleChains = append(staleChains, c)
				}
			}
			for _, s := range o.sets {
				if !keep[s] {
					staleSets = append(staleSets, s)
				}
			}
		}
	}
	slices.Sort(staleChains)
	slices.Sort(staleSets)
	// A stale chain may jump to another stale one: empty them all first.
	for _, c := range staleChains {
		tx.Flush(&knftables.Chain{Name: c})
	}
	for _, c := range staleChains {
		tx.Delete(&knftables.Chain{Name: c})
	}
	for _, s := range staleSets {
		tx.Delete(&knftables.Set{Name: s})
	}
	st.Deleted = len(staleChains) + len(staleSets)
	for _, o := range owned {
		st.Chains += len(o.chains)
	}
	return owned
}

// isServiceObject tells the per-Service chains, which a full sync deletes
// when no Service wants them, from the fixed ones. (So the firewall chains
// are not "firewall-" as in kube-proxy: firewall-check would be one.)
func isServiceObject(name string) bool {
	return strings.HasPrefix(name, svcChainPrefix) || strings.HasPrefix(name, svlChainPrefix) ||
		strings.HasPrefix(name, extChainPrefix) || strings.HasPrefix(name, epChainPrefix) ||
		strings.HasPrefix(name, fwChainPrefix)
}

// renderService writes one Service port: its map elements, its firewall
// chain, and when it has endpoints its other chains (and affinity sets),
// recording them in o. all are the port's endpoints, usable or not; node
// is this node, nodeAddrs its addresses.
func (p *Proxier) renderService(tx *knftables.Transaction, svc *core.ServicePort, all []core.Endpoint, node string,
	nodeAddrs []netip.Addr, o *objects) {
	label := svc.Name.String()
	proto := strings.ToLower(string(svc.Protocol))
	port := strconv.Itoa(int(svc.Port))
	sid := id(label, proto)
	svcChain, extChain, svlChain := svcChainPrefix+sid, extChainPrefix+sid, svlChainPrefix+sid
	eps := core.UsableEndpoints(all)
	// internalTrafficPolicy Local: the cluster IP picks among this node's
	// endpoints in a chain of its own, and is dropped when there are none
	// here (kube-proxy does the same).
	_, noLocal := core.InternalEndpoints(svc, all, node)
	element := func(m string, key []string, verdict string) {
		e := &knftables.Element{Map: m, Key: key, Value: []string{verdict}, Comment: knftables.PtrTo(label)}
		tx.Add(e)
		o.elements = append(o.elements, e)
	}
	// The cluster IP first, then the external destinations: external and
	// load balancer IPs are handled alike. An address listed twice (an
	// ingress IP that is also an external IP) gets one element: a second
	// would make the partial sync's delete of the first fail.
	ipKeys := [][]string{{svc.ClusterIP.String(), proto, port}}
	seen := map[netip.Addr]bool{svc.ClusterIP: true}
	for _, ip := range slices.Concat(svc.ExternalIPs, svc.LoadBalancerIPs) {
		if !seen[ip] {
			seen[ip] = true
			ipKeys = append(ipKeys, []string{ip.String(), proto, port})
		}
	}
	var lbKeys [][]string
	for _, ip := range slices.Compact(slices.SortedFunc(slices.Values(svc.LoadBalancerIPs), netip.Addr.Compare)) {
		lbKeys = append(lbKeys, []string{ip.String(), proto, port})
	}
	nodePort := strconv.Itoa(int(svc.NodePort))

	chain := func(name string) {
		tx.Add(&knftables.Chain{Name: name, Comment: knftables.PtrTo(label)})
		tx.Flush(&knftables.Chain{Name: name})
		o.chains = append(o.chains, name)
	}
	rule := func(c string, parts ...any) { tx.Add(&knftables.Rule{Chain: c, Rule: knftables.Concat(parts...)}) }

	// loadBalancerSourceRanges, with or without endpoints: a denied client
	// is dropped before it could be rejected for the lack of them, as in
	// kube-proxy. Only the load balancer IPs are guarded; the same port
	// at the cluster IP, a NodePort or an external IP is not.
	if len(lbKeys) > 0 && len(svc.LoadBalancerSourceRanges) > 0 {
		fwChain := fwChainPrefix + sid
		chain(fwChain)
		var sources []string
		for _, r := range svc.LoadBalancerSourceRanges {
			if s := r.String(); !slices.Contains(sources, s) {
				sources = append(sources, s)
			}
		}
		if svc.SourceRangesAdmitNode(nodeAddrs) {
			for _, k := range lbKeys {
				if !slices.Contains(sources, k[0]) {
					sources = append(sources, k[0])
				}
			}
		}
		// The spaces around the commas keep each source a word of its own
		// for the tracer.
		rule(fwChain, "ip saddr != {", strings.Join(sources, " , "), "} drop")
		for _, k := range lbKeys {
			element(firewallIPsMap, k, "goto "+fwChain)
		}
	}

	if len(eps) == 0 {
		verdict := "goto " + rejectChain
		if fault.Current() == fault.NoEndpointsDropped {
			verdict = "drop"
		}
		for _, k := range ipKeys {
			element(noEndpointServices, k, verdict)
		}
		if svc.NodePort != 0 {
			element(noEndpointNodePorts, []string{proto, nodePort}, verdict)
		}
		return
	}

	hasExt := len(ipKeys) > 1 || svc.NodePort != 0
	// externalTrafficPolicy Local: outside clients reach this node's
	// endpoints only, keeping their address, and are dropped where there
	// are none; pods and the node itself still reach every endpoint.
	external, noLocalExternal := core.ExternalEndpoints(svc, all, node)
	// The cluster-wide chain serves the cluster IP unless its policy is
	// Local, and the external destinations (even under a Local policy,
	// for pods and the node itself).
	usesSVC := !svc.InternalLocal || hasExt
	// Both Local policies pick among the same endpoints: this node's.
	local := core.LocalEndpoints(all, node)
	usesSVL := len(local) > 0 && (svc.InternalLocal || (hasExt && svc.ExternalLocal))
	// Each endpoint either chain picks gets its chain once: a node whose
	// local endpoints are all terminating uses them locally while the
	// cluster-wide chain has only the ready ones.
	var cluster []core.Endpoint
	if usesSVC {
		cluster = eps
	}
	if !usesSVL {
		local = nil
	}
	used := core.UnionEndpoints(cluster, local)
	epChains := make(map[core.Endpoint]string, len(used))
	affinity := make(map[core.Endpoint]string, len(used))
	for _, ep := range used {
		eid := id(label, proto, ep.String())
		epChains[ep] = epChainPrefix + eid
		if svc.ClientIPAffinity {
			// The timeout is part of the name: a set's timeout cannot
			// change, so a new timeout is a new set.
			affinity[ep] = affinitySetPrefix + eid + "-" + strconv.Itoa(int(svc.StickyTimeoutSeconds))
		}
	}
	// Chains and sets exist before any rule or element names them: nft
	// checks each command of a transaction in order.
	if usesSVC {
		chain(svcChain)
	}
	if usesSVL {
		chain(svlChain)
	}
	if hasExt {
		chain(extChain)
	}
	for _, ep := range used {
		chain(epChains[ep])
		if svc.ClientIPAffinity {
			tx.Add(&knftables.Set{Name: affinity[ep], Type: "ipv4_addr", Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
				Timeout: knftables.PtrTo(time.Duration(svc.StickyTimeoutSeconds) * time.Second), Comment: knftables.PtrTo(label + " -> " + ep.String())})
			o.sets = append(o.sets, affinity[ep])
		}
	}

	switch {
	case !svc.InternalLocal:
		element(serviceIPsMap, ipKeys[0], "goto "+svcChain)
		switch {
		case p.masqueradeAll:
			// Only the cluster IP: external destinations reach this chain
			// too, and under externalTrafficPolicy Local a pod's traffic
			// to them keeps its address (as in kube-proxy, whose rule
			// matches the cluster IPs).
			rule(svcChain, "ip daddr", svc.ClusterIP, "jump", markMasqChain)
		case p.clusterCIDR.IsValid():
			// Off-cluster sources reaching a cluster IP through this node
			// may be answered by a pod on another node; SNAT so the reply
			// comes back here.
			rule(svcChain, "ip saddr !=", p.clusterCIDR, "jump", markMasqChain)
		}
	case noLocal:
		element(noEndpointServices, ipKeys[0], "drop")
	default:
		element(serviceIPsMap, ipKeys[0], "goto "+svlChain)
	}
	if hasExt {
		if svc.ExternalLocal {
			// A pod's traffic is not external: it reaches the Service
			// as if it had gone out to a load balancer and come back.
			if p.clusterCIDR.IsValid() {
				rule(extChain, "ip saddr", p.clusterCIDR, "goto", svcChain)
			}
			// The node's own traffic leaves from an address of the node,
			// which an endpoint elsewhere could not answer without SNAT.
			rule(extChain, "fib saddr type local jump", markMasqChain)
			rule(extChain, "fib saddr type local goto", svcChain)
			if len(external) > 0 {
				rule(extChain, "goto", svlChain)
			}
		} else {
			rule(extChain, "jump", markMasqChain)
			rule(extChain, "goto", svcChain)
		}
		// The elements stay even when no endpoint is here for outside
		// clients: pods and the node itself still need the chain.
		for _, k := range ipKeys[1:] {
			element(serviceIPsMap, k, "goto "+extChain)
		}
		if svc.NodePort != 0 {
			element(serviceNodePortsMap, []string{proto, nodePort}, "goto "+extChain)
		}
		if noLocalExternal {
			// What falls off the external chain is still addressed to the
			// external IP or NodePort when endpoints-check sees it: the
			// filter hooks run at filter priority, after nat-prerouting's
			// and nat-output's DNAT (dstnat priority) on the same path, so
			// short-circuited traffic is by then addressed to an endpoint
			// and matches none of these keys (short of an endpoint on the
			// node's own address at a port that is also a NodePort here,
			// which kube-proxy does not guard against either).
			for _, k := range ipKeys[1:] {
				element(noEndpointServices, k, "drop")
			}
			if svc.NodePort != 0 {
				element(noEndpointNodePorts, []string{proto, nodePort}, "drop")
			}
		}
	}

	// pick sends a packet in chain to one of eps: the one its client
	// stuck to, else one at random.
	pick := func(chain string, eps []core.Endpoint) {
		if svc.ClientIPAffinity {
			for _, ep := range eps {
				rule(chain, "ip saddr", "@"+affinity[ep], "goto", epChains[ep])
			}
		}
		targets := make([]string, 0, len(eps)+1)
		for _, ep := range eps {
			targets = append(targets, epChains[ep])
		}
		if fault.Current() == fault.RandomSkewed && len(eps) > 1 {
			// The last endpoint gets two of n+1 picks.
			targets = append(targets, targets[len(targets)-1])
		}
		switch {
		case len(targets) == 1:
			rule(chain, "goto", targets[0])
		case len(targets) <= MaxCascade:
			// Step i is taken with probability 1/(n-i) of what reaches
			// it, so each endpoint gets 1/n. No anonymous map: the
			// kernel's cost of adding one grows with the table, which
			// made a full sync quadratic (see MaxCascade).
			for i, t := range targets[:len(targets)-1] {
				rule(chain, "numgen random mod", len(targets)-i, "== 0 goto", t)
			}
			rule(chain, "goto", targets[len(targets)-1])
		default:
			var vmap []string
			for i, t := range targets {
				vmap = append(vmap, fmt.Sprintf("%d : goto %s", i, t))
			}
			// The spaces around the commas keep "goto <chain>" a word of
			// its own (the Fake checks such references by splitting on
			// spaces).
			rule(chain, "numgen random mod", len(vmap), "vmap {", strings.Join(vmap, " , "), "}")
		}
	}
	if usesSVC {
		pick(svcChain, eps)
	}
	if usesSVL {
		pick(svlChain, local)
	}

	for _, ep := range used {
		// Hairpin: a pod reaching itself through the Service needs SNAT,
		// or it would answer itself directly.
		if fault.Hairpin() {
			rule(epChains[ep], "ip saddr", ep.IP, "jump", markMasqChain)
		}
		if svc.ClientIPAffinity {
			rule(epChains[ep], "update", "@"+affinity[ep], "{ ip saddr }")
		}
		rule(epChains[ep], "meta l4proto", proto, "dnat to", ep.AddrPort())
	}
}

// Cleanup implements core.Mode: it deletes the table.
func (p *Proxier) Cleanup() error {
	return CleanupTable(context.Background(), p.nft)
}

// CleanupTable deletes the table, if it is there: everything the mode made
// lives in it.
func CleanupTable(ctx context.Context, nft knftables.Interface) error {
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("nftables: deleting table %s: %w", TableName, err)
	}
	return nil
}
