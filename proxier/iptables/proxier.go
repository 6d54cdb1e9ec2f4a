// Package iptables is the iptables proxy mode: each sync renders one
// iptables-restore batch for the nat and filter tables, in the style of
// kube-proxy's iptables proxier but with chains prefixed "PM-".
//
// Chain layout (nat):
//
//	PREROUTING, OUTPUT -> PM-SERVICES -> PM-SVC-<hash>  (per service port, picks an endpoint)
//	                                  -> PM-EXT-<hash>  (external IPs: mark for SNAT, then PM-SVC)
//	                                  -> PM-FW-<hash>   (load balancer IPs with loadBalancerSourceRanges:
//	                                                     allowed sources -> PM-EXT-<hash>, others fall through)
//	                                  -> PM-EXT-<hash>  (load balancer IPs without source ranges)
//	                     PM-SERVICES (last rule, local dst) -> PM-NODEPORTS -> PM-EXT-<hash>
//	                                  -> PM-SVL-<hash>  (internalTrafficPolicy Local: this node's endpoints only)
//	PM-EXT-<hash> under externalTrafficPolicy Local: pods and the node itself -> PM-SVC,
//	                     other clients -> PM-SVL-<hash> without SNAT
//	PM-SVC-<hash>, PM-SVL-<hash> -> PM-SEP-<hash>  (per endpoint: hairpin mark + DNAT)
//	POSTROUTING -> PM-POSTROUTING   (MASQUERADE packets carrying the mark set by PM-MARK-MASQ)
//
// filter: PM-SERVICES (REJECT cluster IPs without endpoints, DROP those whose
// internalTrafficPolicy Local leaves none on this node, from FORWARD and
// OUTPUT), PM-EXTERNAL-SERVICES (REJECT NodePorts/external IPs/load
// balancer IPs without endpoints, DROP those whose externalTrafficPolicy
// Local leaves none on this node, from INPUT and FORWARD),
// PM-PROXY-FIREWALL (DROP new connections still addressed to a load
// balancer IP with source ranges, i.e. that PM-FW-<hash> did not let
// through to DNAT; first in INPUT, FORWARD and OUTPUT), PM-FORWARD (accept
// marked and established service traffic).
package iptables

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/metrics"
)

// Chain names. Everything the mode creates starts with ChainPrefix, which is
// how Cleanup finds it.
const (
	ChainPrefix           = "PM-"
	servicesChain         = "PM-SERVICES"
	externalServicesChain = "PM-EXTERNAL-SERVICES"
	forwardChain          = "PM-FORWARD"
	nodePortsChain        = "PM-NODEPORTS"
	postroutingChain      = "PM-POSTROUTING"
	markMasqChain         = "PM-MARK-MASQ"
	firewallChain         = "PM-PROXY-FIREWALL"

	svcChainPrefix = "PM-SVC-"
	svlChainPrefix = "PM-SVL-"
	sepChainPrefix = "PM-SEP-"
	extChainPrefix = "PM-EXT-"
	fwChainPrefix  = "PM-FW-"
)

// jumpRules are the only rules this mode puts in chains it does not own.
var jumpRules = []Jump{
	// The firewall comes first, as in kube-proxy, so that nothing accepted
	// further down (PM-FORWARD accepts marked packets) skips it.
	{tableFilter, "INPUT", firewallChain, "proxymodes load balancer firewall", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableFilter, "FORWARD", firewallChain, "proxymodes load balancer firewall", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableFilter, "OUTPUT", firewallChain, "proxymodes load balancer firewall", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableFilter, "INPUT", externalServicesChain, "proxymodes externally-visible service portals", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableFilter, "FORWARD", servicesChain, "proxymodes service portals", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableFilter, "FORWARD", externalServicesChain, "proxymodes externally-visible service portals", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableFilter, "FORWARD", forwardChain, "proxymodes forwarding rules", nil},
	{tableFilter, "OUTPUT", servicesChain, "proxymodes service portals", []string{"-m", "conntrack", "--ctstate", "NEW"}},
	{tableNAT, "PREROUTING", servicesChain, "proxymodes service portals", nil},
	{tableNAT, "OUTPUT", servicesChain, "proxymodes service portals", nil},
	{tableNAT, "POSTROUTING", postroutingChain, "proxymodes postrouting rules", nil},
}

// Config configures the iptables mode.
type Config struct {
	// Backend applies and reads rules: a *Backend, or a *Fake in tests.
	Backend Interface
	// ClusterCIDR is the pod CIDR. Traffic to a cluster IP from outside it
	// is masqueraded. When unset, only hairpin and external traffic is.
	ClusterCIDR netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit that flags packets for SNAT (0-31);
	// kube-proxy's default is 14.
	MasqueradeBit int
	// LargeClusterEndpoints is the endpoint count above which per-endpoint
	// comments are left out to shrink the batch (as kube-proxy does);
	// 0 means 1000.
	LargeClusterEndpoints int
	// Metrics receives rule counts and restore failures; may be nil.
	Metrics *metrics.Metrics
}

// Proxier is the iptables Mode. It is not safe for concurrent Syncs; the
// caller (the sync runner) serialises them.
type Proxier struct {
	backend       Interface
	clusterCIDR   netip.Prefix
	masqueradeAll bool
	masqMark      string // "0x4000"
	masqMatch     string // "0x4000/0x4000"
	largeCluster  int
	metrics       *metrics.Metrics

	// needFull is set until a sync succeeds: after start-up and after
	// any failure the kernel state is unknown, so rewrite everything.
	needFull bool
	// activeNAT holds the per-service nat chains the last successful
	// sync left in place; partial syncs delete stale ones from it.
	activeNAT sets.Set[string]
	// nodeAddrs are the node addresses the last successful sync wrote
	// firewall chains for: a source range holding one of them lets the
	// load balancer IPs through as sources (see render), and the tracker
	// marks no Service changed when the Node does.
	nodeAddrs []netip.Addr

	lastBatch []byte
	stats     SyncStats
}

// SyncStats describes the last sync attempt.
type SyncStats struct {
	Full          bool
	Services      int // service ports in the snapshot
	Rewritten     int // service ports whose chains were written
	NATRules      int // -A lines written to nat
	FilterRules   int // -A lines written to filter
	NATChains     int // per-service nat chains active after the sync
	DeletedChains int
	BatchBytes    int
	Save          time.Duration // iptables-save (full syncs only)
	Render        time.Duration // building the batch
	Restore       time.Duration // iptables-restore
}

var _ core.Mode = (*Proxier)(nil)

// New returns an iptables mode using cfg.Backend.
func New(cfg Config) (*Proxier, error) {
	if cfg.Backend == nil {
		return nil, errors.New("iptables: Config.Backend is required")
	}
	bit := cfg.MasqueradeBit
	if bit == 0 {
		bit = 14
	}
	if bit < 0 || bit > 31 {
		return nil, fmt.Errorf("iptables: masquerade bit %d out of range 0-31", bit)
	}
	if cfg.ClusterCIDR.IsValid() && !cfg.ClusterCIDR.Addr().Is4() {
		return nil, fmt.Errorf("iptables: cluster CIDR %s is not IPv4; this proxier handles IPv4 only", cfg.ClusterCIDR)
	}
	large := cfg.LargeClusterEndpoints
	if large == 0 {
		large = 1000
	}
	mark := fmt.Sprintf("%#x", uint32(1)<<bit)
	return &Proxier{
		backend:       cfg.Backend,
		clusterCIDR:   cfg.ClusterCIDR.Masked(),
		masqueradeAll: cfg.MasqueradeAll,
		masqMark:      mark,
		masqMatch:     mark + "/" + mark,
		largeCluster:  large,
		metrics:       cfg.Metrics,
		needFull:      true,
		activeNAT:     sets.New[string](),
	}, nil
}

// Name implements core.Mode.
func (p *Proxier) Name() string { return "iptables" }

// LastBatch returns the iptables-restore input of the last sync attempt.
func (p *Proxier) LastBatch() []byte { return p.lastBatch }

// LastStats returns statistics of the last sync attempt.
func (p *Proxier) LastStats() SyncStats { return p.stats }

// Sync implements core.Mode.
func (p *Proxier) Sync(snap *core.Snapshot, changes core.ChangeSet) error {
	full := changes.Full || p.needFull
	p.needFull = true // cleared only on success
	start := time.Now()

	var existing *savedTables
	var saveTime time.Duration
	if full {
		data, err := p.backend.Save()
		if err != nil {
			return fmt.Errorf("iptables: reading current rules: %w", err)
		}
		t, err := ParseSave(data)
		if err != nil {
			return fmt.Errorf("iptables: parsing iptables-save output: %w", err)
		}
		existing = &savedTables{t}
		saveTime = time.Since(start)
	}

	renderStart := time.Now()
	r := p.render(snap, changes, full, existing)
	p.lastBatch = r.batch
	p.stats = r.stats
	p.stats.Save = saveTime
	p.stats.Render = time.Since(renderStart)

	restoreStart := time.Now()
	err := p.backend.Restore(r.batch)
	p.stats.Restore = time.Since(restoreStart)
	if err != nil {
		p.metrics.RestoreFailed(!full)
		return fmt.Errorf("iptables: applying %s sync: %w%s", syncKind(full), err, failingLines(err, r.batch))
	}
	p.needFull = false
	p.activeNAT = r.activeNAT
	p.nodeAddrs = nodeAddresses(snap)
	p.metrics.SetRules(tableNAT, r.stats.NATRules+r.skippedNATRules, r.stats.NATRules)
	p.metrics.SetRules(tableFilter, r.stats.FilterRules, r.stats.FilterRules)
	klog.V(2).InfoS("iptables sync done", "full", full, "servicePorts", r.stats.Services,
		"rewritten", r.stats.Rewritten, "natRules", r.stats.NATRules, "filterRules", r.stats.FilterRules,
		"deletedChains", r.stats.DeletedChains, "bytes", len(r.batch), "save", p.stats.Save, "render", p.stats.Render, "restore", p.stats.Restore)
	return nil
}

func syncKind(full bool) string {
	if full {
		return "full"
	}
	return "partial"
}

var lineRE = regexp.MustCompile(`line (\d+) failed`)

// failingLines quotes the batch lines around the one iptables-restore
// complained about, so the log shows what was wrong.
func failingLines(err error, batch []byte) string {
	m := lineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	n, _ := strconv.Atoi(m[1])
	lines := strings.Split(string(batch), "\n")
	var b strings.Builder
	for i := max(n-3, 1); i <= min(n+1, len(lines)); i++ {
		marker := "  "
		if i == n {
			marker = "> "
		}
		fmt.Fprintf(&b, "\n%s%d: %s", marker, i, lines[i-1])
	}
	return b.String()
}

// savedTables wraps parsed iptables-save output.
type savedTables struct{ byName map[string]*Table }

// serviceChains returns the per-service nat chains present.
func (t *savedTables) serviceChains() []string {
	var out []string
	if t == nil || t.byName[tableNAT] == nil {
		return nil
	}
	for name := range t.byName[tableNAT].Chains {
		if isServiceChain(name) {
			out = append(out, name)
		}
	}
	return out
}

func isServiceChain(name string) bool {
	return strings.HasPrefix(name, svcChainPrefix) || strings.HasPrefix(name, svlChainPrefix) ||
		strings.HasPrefix(name, sepChainPrefix) || strings.HasPrefix(name, extChainPrefix) ||
		strings.HasPrefix(name, fwChainPrefix)
}

// chainHash names chains after a hash of what they serve, short enough for
// the kernel's 28-character limit.
func chainHash(parts ...string) string {
	h := sha256.Sum256([]byte("proxymodes/" + strings.Join(parts, "/")))
	return base32.StdEncoding.EncodeToString(h[:])[:16]
}

func serviceChainName(sp core.ServicePortName) string {
	return svcChainPrefix + chainHash(sp.String(), string(sp.Protocol))
}

func localChainName(sp core.ServicePortName) string {
	return svlChainPrefix + chainHash(sp.String(), string(sp.Protocol))
}

func externalChainName(sp core.ServicePortName) string {
	return extChainPrefix + chainHash(sp.String(), string(sp.Protocol))
}

func firewallChainName(sp core.ServicePortName) string {
	return fwChainPrefix + chainHash(sp.String(), string(sp.Protocol))
}

func nodeAddresses(snap *core.Snapshot) []netip.Addr {
	if snap.Node == nil {
		return nil
	}
	return snap.Node.Addresses
}

func endpointChainName(sp core.ServicePortName, ep core.Endpoint) string {
	return sepChainPrefix + chainHash(sp.String(), string(sp.Protocol), ep.String())
}

// lineBuffer collects restore lines and counts them.
type lineBuffer struct {
	buf     bytes.Buffer
	lines   int
	discard bool // count only (chains a partial sync leaves alone)
}

func (b *lineBuffer) add(args ...string) {
	b.lines++
	if b.discard {
		return
	}
	for i, a := range args {
		if i > 0 {
			b.buf.WriteByte(' ')
		}
		b.buf.WriteString(a)
	}
	b.buf.WriteByte('\n')
}

func (b *lineBuffer) chain(name string) {
	if !b.discard {
		fmt.Fprintf(&b.buf, ":%s - [0:0]\n", name)
	}
}

func quote(s string) string { return `"` + s + `"` }

type rendered struct {
	batch           []byte
	activeNAT       sets.Set[string]
	stats           SyncStats
	skippedNATRules int
}

// probabilities holds the --probability text for 1/n, formatted like
// kube-proxy ("%0.10f"), for common n. Filled once, read-only after, so
// several Proxiers in one process are safe.
var probabilities = func() []string {
	out := make([]string, 256)
	for n := 1; n < len(out); n++ {
		out[n] = fmt.Sprintf("%0.10f", 1.0/float64(n))
	}
	return out
}()

func probability(n int) string {
	if n > 0 && n < len(probabilities) {
		return probabilities[n]
	}
	return fmt.Sprintf("%0.10f", 1.0/float64(n))
}

// render builds the restore batch. existing is the current kernel state on
// full syncs and nil on partial ones.
func (p *Proxier) render(snap *core.Snapshot, changes core.ChangeSet, full bool, existing *savedTables) rendered {
	var (
		filterChains, filterRules lineBuffer
		natChains, natJumps       lineBuffer
		natRules                  lineBuffer
		filterJumps               lineBuffer
		skipped                   = lineBuffer{discard: true}
		deletes                   lineBuffer
	)
	active := sets.New[string]()
	stats := SyncStats{Full: full, Services: len(snap.Services)}

	for _, c := range []string{servicesChain, externalServicesChain, forwardChain, firewallChain} {
		filterChains.chain(c)
	}
	for _, c := range []string{servicesChain, nodePortsChain, postroutingChain, markMasqChain} {
		natChains.chain(c)
	}

	// Jump rules from built-in chains. A partial sync trusts they exist;
	// a full sync checks them and rewrites them if anything is off.
	if full {
		for _, table := range []string{tableFilter, tableNAT} {
			out := &filterJumps
			if table == tableNAT {
				out = &natJumps
			}
			for _, from := range builtinChains[table] {
				var want []Jump
				for _, j := range jumpRules {
					if j.Table == table && j.From == from {
						want = append(want, j)
					}
				}
				have := OwnedJumps(existing.byName, table, from, nil)
				if JumpsMatch(have, want) {
					continue
				}
				for _, r := range have {
					out.add("-D", from, r.String())
				}
				for i, j := range want {
					out.add("-I", from, strconv.Itoa(i+1), joinArgs(j.Args()))
				}
			}
		}
	}

	natRules.add("-A", postroutingChain, "-m", "mark", "!", "--mark", p.masqMatch, "-j", "RETURN")
	// Clear the mark so a packet that traverses the stack again is not
	// masqueraded twice.
	natRules.add("-A", postroutingChain, "-j", "MARK", "--xor-mark", p.masqMark)
	natRules.add("-A", postroutingChain, "-m", "comment", "--comment", quote("proxymodes service traffic requiring SNAT"), "-j", "MASQUERADE", "--random-fully")
	natRules.add("-A", markMasqChain, "-j", "MARK", "--or-mark", p.masqMark)

	totalEndpoints := 0
	usable := make(map[core.ServicePortName][]core.Endpoint, len(snap.Services))
	for name := range snap.Services {
		eps := core.UsableEndpoints(snap.Endpoints[name])
		usable[name] = eps
		totalEndpoints += len(eps)
	}
	comments := totalEndpoints <= p.largeCluster
	nodeAddrs := nodeAddresses(snap)
	nodeChanged := !slices.Equal(nodeAddrs, p.nodeAddrs)

	for _, name := range snap.SortedServicePorts() {
		svc := snap.Services[name]
		eps := usable[name]
		proto := strings.ToLower(string(svc.Protocol))
		vip := svc.ClusterIP.String()
		port := strconv.Itoa(int(svc.Port))
		svcChain := serviceChainName(name)
		extChain := externalChainName(name)
		label := name.String()
		hasEndpoints := len(eps) > 0
		usesExt := hasEndpoints && svc.ExternallyAccessible()
		// loadBalancerSourceRanges: load balancer IPs go through a
		// firewall chain that passes allowed sources on to the external
		// chain. The others leave nat with their destination unchanged,
		// which PM-PROXY-FIREWALL then drops: DNAT must not happen first,
		// or the filter table could no longer tell them apart. Without
		// endpoints there is nothing to protect, and they are rejected
		// like every source (kube-proxy does the same).
		usesFW := hasEndpoints && len(svc.LoadBalancerIPs) > 0 && len(svc.LoadBalancerSourceRanges) > 0
		lbChain, fwChain := extChain, ""
		if usesFW {
			fwChain = firewallChainName(name)
			lbChain = fwChain
		}
		// internalTrafficPolicy Local: the cluster IP picks among this
		// node's endpoints in a chain of its own, and is dropped when
		// there are none here (kube-proxy does the same).
		_, noLocal := core.InternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
		internalChain := svcChain
		if svc.InternalLocal {
			internalChain = localChainName(name)
		}
		// externalTrafficPolicy Local: outside clients reach this node's
		// endpoints only, without SNAT, and are dropped where there are
		// none; pods and the node itself still reach every endpoint.
		external, noLocalExternal := core.ExternalEndpoints(svc, snap.Endpoints[name], snap.NodeName)
		local := core.LocalEndpoints(snap.Endpoints[name], snap.NodeName)
		usesLocal := len(local) > 0 && (svc.InternalLocal || (usesExt && svc.ExternalLocal))

		// Dispatch rules live in chains rewritten on every sync.
		if hasEndpoints {
			if noLocal {
				filterRules.add("-A", servicesChain, "-m", "comment", "--comment", quote(label+" has no local endpoints"),
					"-m", proto, "-p", proto, "-d", vip, "--dport", port, "-j", "DROP")
			} else {
				natRules.add("-A", servicesChain, "-m", "comment", "--comment", quote(label+" cluster IP"),
					"-m", proto, "-p", proto, "-d", vip, "--dport", port, "-j", internalChain)
			}
			for _, eip := range svc.ExternalIPs {
				natRules.add("-A", servicesChain, "-m", "comment", "--comment", quote(label+" external IP"),
					"-m", proto, "-p", proto, "-d", eip.String(), "--dport", port, "-j", extChain)
			}
			for _, lbip := range svc.LoadBalancerIPs {
				natRules.add("-A", servicesChain, "-m", "comment", "--comment", quote(label+" loadbalancer IP"),
					"-m", proto, "-p", proto, "-d", lbip.String(), "--dport", port, "-j", lbChain)
				if usesFW {
					filterRules.add("-A", firewallChain, "-m", "comment", "--comment", quote(label+" traffic not accepted by "+fwChain),
						"-m", proto, "-p", proto, "-d", lbip.String(), "--dport", port, "-j", "DROP")
				}
			}
			if svc.NodePort != 0 {
				natRules.add("-A", nodePortsChain, "-m", "comment", "--comment", label,
					"-m", proto, "-p", proto, "--dport", strconv.Itoa(int(svc.NodePort)), "-j", extChain)
			}
			if noLocalExternal {
				// What the external chain did not send to the cluster-wide
				// chain (pods, the node itself) is still addressed to the
				// node here.
				reason := quote(label + " has no local endpoints")
				for _, eip := range append(slices.Clip(svc.ExternalIPs), svc.LoadBalancerIPs...) {
					filterRules.add("-A", externalServicesChain, "-m", "comment", "--comment", reason,
						"-m", proto, "-p", proto, "-d", eip.String(), "--dport", port, "-j", "DROP")
				}
				if svc.NodePort != 0 {
					filterRules.add("-A", externalServicesChain, "-m", "comment", "--comment", reason,
						"-m", "addrtype", "--dst-type", "LOCAL",
						"-m", proto, "-p", proto, "--dport", strconv.Itoa(int(svc.NodePort)), "-j", "DROP")
				}
			}
		} else {
			reason := quote(label + " has no endpoints")
			filterRules.add("-A", servicesChain, "-m", "comment", "--comment", reason,
				"-m", proto, "-p", proto, "-d", vip, "--dport", port, "-j", fault.RejectTarget())
			for _, eip := range append(slices.Clip(svc.ExternalIPs), svc.LoadBalancerIPs...) {
				filterRules.add("-A", externalServicesChain, "-m", "comment", "--comment", reason,
					"-m", proto, "-p", proto, "-d", eip.String(), "--dport", port, "-j", fault.RejectTarget())
			}
			if svc.NodePort != 0 {
				filterRules.add("-A", externalServicesChain, "-m", "comment", "--comment", reason,
					"-m", "addrtype", "--dst-type", "LOCAL",
					"-m", proto, "-p", proto, "--dport", strconv.Itoa(int(svc.NodePort)), "-j", fault.RejectTarget())
			}
			continue
		}

		// Per-service chains: only written when the service changed.
		chains, rules := &natChains, &natRules
		if !changes.Changed(name.NamespacedName) && !full && !(usesFW && nodeChanged) {
			chains, rules = &skipped, &skipped
		} else {
			stats.Rewritten++
		}

		// The cluster-wide chain serves the cluster IP unless its policy
		// is Local, and the external destinations.
		usesSVC := !svc.InternalLocal || usesExt
		if usesSVC {
			active.Insert(svcChain)
			chains.chain(svcChain)
		}
		if !svc.InternalLocal {
			masqArgs := []string{"-A", svcChain, "-m", "comment", "--comment", quote(label + " cluster IP"),
				"-m", proto, "-p", proto, "-d", vip, "--dport", port}
			switch {
			case p.masqueradeAll:
				rules.add(append(masqArgs, "-j", markMasqChain)...)
			case p.clusterCIDR.IsValid():
				// Off-cluster sources reaching a cluster IP through this
				// node may be answered by a pod on another node; SNAT so
				// the reply comes back here.
				rules.add(append(masqArgs, "!", "-s", p.clusterCIDR.String(), "-j", markMasqChain)...)
			}
		}

		if usesExt {
			active.Insert(extChain)
			chains.chain(extChain)
			if svc.ExternalLocal {
				if p.clusterCIDR.IsValid() {
					rules.add("-A", extChain, "-m", "comment", "--comment", quote("pod traffic for "+label+" external destinations"),
						"-s", p.clusterCIDR.String(), "-j", svcChain)
				}
				// The node's own traffic leaves from an address of the
				// node, which an endpoint elsewhere could not answer
				// without SNAT.
				rules.add("-A", extChain, "-m", "comment", "--comment", quote("masquerade LOCAL traffic for "+label+" external destinations"),
					"-m", "addrtype", "--src-type", "LOCAL", "-j", markMasqChain)
				rules.add("-A", extChain, "-m", "comment", "--comment", quote("route LOCAL traffic for "+label+" external destinations"),
					"-m", "addrtype", "--src-type", "LOCAL", "-j", svcChain)
				if len(external) > 0 {
					rules.add("-A", extChain, "-j", localChainName(name))
				}
			} else {
				rules.add("-A", extChain, "-m", "comment", "--comment", quote("masquerade traffic for "+label+" external destinations"), "-j", markMasqChain)
				rules.add("-A", extChain, "-j", svcChain)
			}
		}

		if usesFW {
			active.Insert(fwChain)
			chains.chain(fwChain)
			fwArgs := []string{"-A", fwChain, "-m", "comment", "--comment", quote(label + " loadbalancer IP")}
			for _, cidr := range svc.LoadBalancerSourceRanges {
				rules.add(append(fwArgs, "-s", cidr.String(), "-j", extChain)...)
			}
			if svc.SourceRangesAdmitNode(nodeAddrs) {
				for _, lbip := range svc.LoadBalancerIPs {
					rules.add(append(fwArgs, "-s", lbip.String(), "-j", extChain)...)
				}
			}
		}

		comment := func(args []string, text string) []string {
			if comments {
				args = append(args, "-m", "comment", "--comment", text)
			}
			return args
		}
		// pick sends a packet in chain to one of eps: the one its client
		// stuck to, else one at random.
		pick := func(chain string, eps []core.Endpoint) {
			if svc.ClientIPAffinity {
				seconds := strconv.Itoa(int(svc.StickyTimeoutSeconds))
				for _, ep := range eps {
					sep := endpointChainName(name, ep)
					args := comment([]string{"-A", chain}, quote(label+" -> "+ep.String()))
					rules.add(append(args, "-m", "recent", "--name", sep, "--rcheck", "--seconds", seconds, "--reap", "-j", sep)...)
				}
			}
			for i, ep := range eps {
				args := comment([]string{"-A", chain}, quote(label+" -> "+ep.String()))
				if n := len(eps) - i; n > 1 {
					if fault.Current() == fault.RandomSkewed {
						n = len(eps)
					}
					args = append(args, "-m", "statistic", "--mode", "random", "--probability", probability(n))
				}
				rules.add(append(args, "-j", endpointChainName(name, ep))...)
			}
		}
		if usesSVC {
			pick(svcChain, eps)
		}
		// Both Local policies pick among the same endpoints: this node's.
		if usesLocal {
			lc := localChainName(name)
			active.Insert(lc)
			chains.chain(lc)
			pick(lc, local)
		}
		// Each endpoint either chain picks gets its chain once: a node
		// whose local endpoints are all terminating uses them locally
		// while the cluster-wide chain has only the ready ones.
		var cluster []core.Endpoint
		if usesSVC {
			cluster = eps
		}
		if !usesLocal {
			local = nil
		}
		used := core.UnionEndpoints(cluster, local)
		for _, ep := range used {
			sep := endpointChainName(name, ep)
			active.Insert(sep)
			chains.chain(sep)
			// Hairpin: a pod reaching itself through the service needs
			// SNAT or it would answer itself directly.
			if fault.Hairpin() {
				rules.add(append(comment([]string{"-A", sep}, label), "-s", ep.IP.String(), "-j", markMasqChain)...)
			}
			args := comment([]string{"-A", sep}, label)
			if svc.ClientIPAffinity {
				args = append(args, "-m", "recent", "--name", sep, "--set")
			}
			rules.add(append(args, "-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", ep.String())...)
		}
	}

	natRules.add("-A", servicesChain, "-m", "comment", "--comment", quote("proxymodes service nodeports; NOTE: this must be the last rule in this chain"),
		"-m", "addrtype", "--dst-type", "LOCAL", "!", "-d", "127.0.0.0/8", "-j", nodePortsChain)

	filterRules.add("-A", forwardChain, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	filterRules.add("-A", forwardChain, "-m", "comment", "--comment", quote("proxymodes forwarding rules"),
		"-m", "mark", "--mark", p.masqMatch, "-j", "ACCEPT")
	filterRules.add("-A", forwardChain, "-m", "comment", "--comment", quote("proxymodes forwarding conntrack rule"),
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")

	// Delete per-service chains nothing uses any more: a chain line
	// flushes the chain, and -X (after all rules) removes it.
	var before []string
	if full && fault.Current() != fault.KernelStateForgotten {
		before = existing.serviceChains()
	} else {
		before = p.activeNAT.UnsortedList()
	}
	stale := sets.New(before...).Difference(active)
	for _, c := range sets.List(stale) {
		natChains.chain(c)
		deletes.add("-X", c)
	}
	stats.DeletedChains = stale.Len()

	var out bytes.Buffer
	out.Grow(filterChains.buf.Len() + filterRules.buf.Len() + natChains.buf.Len() + natRules.buf.Len() + 4096)
	out.WriteString("*filter\n")
	out.Write(filterChains.buf.Bytes())
	out.Write(filterJumps.buf.Bytes())
	out.Write(filterRules.buf.Bytes())
	out.WriteString("COMMIT\n*nat\n")
	out.Write(natChains.buf.Bytes())
	out.Write(natJumps.buf.Bytes())
	out.Write(natRules.buf.Bytes())
	out.Write(deletes.buf.Bytes())
	out.WriteString("COMMIT\n")

	stats.NATRules = natRules.lines
	stats.FilterRules = filterRules.lines
	stats.NATChains = active.Len()
	stats.BatchBytes = out.Len()
	return rendered{batch: out.Bytes(), activeNAT: active, stats: stats, skippedNATRules: skipped.lines}
}

// Cleanup implements core.Mode: it deletes our jump rules from built-in
// chains and every chain named PM-*, in both tables, in one batch.
func (p *Proxier) Cleanup() error {
	err := CleanupBackend(p.backend)
	p.needFull = true
	p.activeNAT = sets.New[string]()
	return err
}

// CleanupBackend removes everything with our prefix from the nat and filter
// tables behind b. It does nothing when nothing is there.
func CleanupBackend(b Interface) error {
	data, err := b.Save()
	if err != nil {
		return fmt.Errorf("iptables cleanup: reading rules: %w", err)
	}
	tables, err := ParseSave(data)
	if err != nil {
		return fmt.Errorf("iptables cleanup: parsing iptables-save output: %w", err)
	}
	var out bytes.Buffer
	work := false
	for _, name := range []string{tableFilter, tableNAT} {
		t := tables[name]
		if t == nil {
			continue
		}
		var chains, jumps, deletes lineBuffer
		for _, cname := range t.SortedChains() {
			c := t.Chains[cname]
			if c.Builtin {
				for _, r := range OwnedJumps(tables, name, cname, nil) {
					jumps.add("-D", cname, r.String())
				}
			} else if strings.HasPrefix(cname, ChainPrefix) {
				chains.chain(cname)
				deletes.add("-X", cname)
			}
		}
		if jumps.lines+deletes.lines == 0 {
			continue
		}
		work = true
		fmt.Fprintf(&out, "*%s\n", name)
		out.Write(chains.buf.Bytes())
		out.Write(jumps.buf.Bytes())
		out.Write(deletes.buf.Bytes())
		out.WriteString("COMMIT\n")
	}
	if !work {
		return nil
	}
	if err := b.Restore(out.Bytes()); err != nil {
		return fmt.Errorf("iptables cleanup: %w%s", err, failingLines(err, out.Bytes()))
	}
	return nil
}
