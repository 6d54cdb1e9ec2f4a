// Package promise is the single table of what each proxy mode promises
// (../shared/DESIGN.md, "What each mode promises"). The conformance features
// read their expectations from it and nowhere else, so a new mode plugs in
// by adding a row.
package promise

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Selection is how a mode picks a backend for a new connection.
type Selection string

const (
	// RoundRobin: backends in a fixed cyclic order, one per connection.
	RoundRobin Selection = "round-robin"
	// Random: each connection picks a backend uniformly and independently.
	Random Selection = "random"
)

// Inspection names a place where a mode keeps per-Service state that must
// be gone after the Service is deleted.
type Inspection string

const (
	IPTables  Inspection = "iptables"  // iptables-save of every node
	NFTables  Inspection = "nftables"  // nft list ruleset of every node
	IPVS      Inspection = "ipvs"      // virtual servers of every node
	BoundVIPs Inspection = "vips"      // VIPs bound to the dummy device
	Listeners Inspection = "listeners" // proxy sockets on the node
)

// Promise is one mode's row.
type Promise struct {
	Mode      string
	Selection Selection
	// ClientIPAffinity: sessionAffinity: ClientIP is honoured, with
	// timeoutSeconds.
	ClientIPAffinity bool
	// Retry: when the chosen backend fails, the proxy tries another one, so
	// clients see no failure while one backend works.
	Retry bool
	// PodSourceKept: a backend reached through a ClusterIP from a pod sees
	// that pod's address. The kernel modes DNAT and keep the source; the
	// userspace proxy opens its own connection from the node. Hairpin and
	// NodePort traffic is SNATed to the node in every mode (a pod cannot
	// answer itself, and another node's backend must answer through the
	// node that took the connection), so that is no column.
	PodSourceKept bool
	// FlowsOutliveProxier: connections established through a Service
	// keep working while the proxier is down and after it restarts. The
	// kernel modes leave their rules, conntrack and IPVS entries to the
	// kernel; the userspace proxy carries every connection in its own
	// process, so they end with it.
	FlowsOutliveProxier bool
	// InternalTrafficLocal: internalTrafficPolicy Local is honoured: a
	// client reaches only endpoints on its own node, and none from a node
	// without one. Upstream's userspace mode never implemented it (the
	// mode was removed in 1.26, the policy went GA in 1.26).
	InternalTrafficLocal bool
	// ExternalTrafficLocal: externalTrafficPolicy Local is honoured: a
	// client from outside reaches a NodePort's node-local endpoints only,
	// keeping its address, nothing where there are none, and the
	// healthCheckNodePort says which nodes have one. Upstream's userspace
	// mode never implemented it (its proxy opens every connection from the
	// node, so no client address survives).
	ExternalTrafficLocal bool
	// SourceRanges: loadBalancerSourceRanges are honoured: a load
	// balancer IP forwards only traffic from the listed sources and drops
	// the rest. Upstream's userspace mode opened a portal on each ingress
	// IP but never implemented the ranges.
	SourceRanges bool
	// AffinityExpirySlack is how long past timeoutSeconds (counted from a
	// client's last connection) the affinity may still hold.
	AffinityExpirySlack time.Duration
	// CleanupChecks lists where the mode keeps per-Service state.
	CleanupChecks []Inspection
	// Basis says where the row comes from.
	Basis string
}

// Table is what each mode promises.
var Table = []Promise{
	{
		Mode: "userspace", Selection: RoundRobin, ClientIPAffinity: true, Retry: true, PodSourceKept: false, FlowsOutliveProxier: false,
		InternalTrafficLocal: false, ExternalTrafficLocal: false, SourceRanges: false,
		AffinityExpirySlack: 2 * time.Second,
		CleanupChecks:       []Inspection{IPTables, Listeners},
		Basis: "kube-proxy userspace (removed in 1.26): the node proxy accepts, picks round-robin, " +
			"honours ClientIP affinity and retries the next endpoint with growing dial timeouts (250ms, 500ms, 1s, 2s); " +
			"backends see the node's address, never the client pod's",
	},
	{
		Mode: "iptables", Selection: Random, ClientIPAffinity: true, Retry: false, PodSourceKept: true, FlowsOutliveProxier: true,
		InternalTrafficLocal: true, ExternalTrafficLocal: true, SourceRanges: true,
		AffinityExpirySlack: 2 * time.Second,
		CleanupChecks:       []Inspection{IPTables},
		Basis: "statistic --mode random --probability 1/(n-i) chains; ClientIP affinity with the recent module; " +
			"no retry: a connection whose DNAT target does not answer fails",
	},
	{
		Mode: "ipvs", Selection: RoundRobin, ClientIPAffinity: true, Retry: false, PodSourceKept: true, FlowsOutliveProxier: true,
		InternalTrafficLocal: true, ExternalTrafficLocal: true, SourceRanges: true,
		// An IPVS persistence template cannot expire while connections it
		// controls are still in IPVS's table: when its timer (the
		// timeout) finds one, the kernel re-arms it for 60 s, not for the
		// timeout (ip_vs_conn_expire). A closed TCP connection stays in
		// the table for 2 min (TIME_WAIT, net.ipv4.vs timeouts), and up to
		// 60 s more when it is still referenced as its own timer fires.
		// So the template goes at timeout + 60 s x k, the first check
		// after its last connection left: by timeout + 4 min at most.
		// 3 min (5 s + 3 min, exactly the third re-arm) passed 10 of 10
		// soak runs on 2026-12-03 and failed 2 of 7 on 2026-12-07 with
		// every template of the check still there at 00:00 to go.
		AffinityExpirySlack: 4 * time.Minute,
		CleanupChecks:       []Inspection{IPTables, IPVS, BoundVIPs},
		Basis: "IPVS rr scheduler (exact cyclic order); ClientIP affinity is IPVS persistence with the timeout; " +
			"no retry; VIPs bound to a dummy device",
	},
	{
		Mode: "nftables", Selection: Random, ClientIPAffinity: true, Retry: false, PodSourceKept: true, FlowsOutliveProxier: true,
		InternalTrafficLocal: true, ExternalTrafficLocal: true, SourceRanges: true,
		AffinityExpirySlack: 2 * time.Second,
		CleanupChecks:       []Inspection{IPTables, NFTables},
		Basis: "kube-proxy nftables (KEP-3866): a verdict map dispatches every Service, numgen random mod n picks an endpoint; " +
			"ClientIP affinity is a set with the Service's timeout; no retry; Services without endpoints are rejected",
	},
}

// Modes lists the modes the table knows.
func Modes() []string {
	var out []string
	for _, p := range Table {
		out = append(out, p.Mode)
	}
	return out
}

// For returns a mode's row.
func For(mode string) (Promise, error) {
	for _, p := range Table {
		if p.Mode == mode {
			return p, nil
		}
	}
	return Promise{}, fmt.Errorf("unknown proxy mode %q: use one of %s", mode, strings.Join(Modes(), ", "))
}

// Claim overrides parts of a row, to check that the suite fails a proxy
// that does not keep a promise (for example, claiming round-robin for
// iptables must fail). spec is comma-separated key=value pairs:
// selection=round-robin|random, affinity=true|false, retry=true|false.
func Claim(p Promise, spec string) (Promise, error) {
	if strings.TrimSpace(spec) == "" {
		return p, nil
	}
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return p, fmt.Errorf("claim %q: want key=value (selection=round-robin|random, affinity=true|false, retry=true|false)", kv)
		}
		switch k {
		case "selection":
			switch Selection(v) {
			case RoundRobin, Random:
				p.Selection = Selection(v)
			default:
				return p, fmt.Errorf("claim selection=%q: use round-robin or random", v)
			}
		case "affinity", "retry":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return p, fmt.Errorf("claim %s=%q: use true or false", k, v)
			}
			if k == "affinity" {
				p.ClientIPAffinity = b
			} else {
				p.Retry = b
			}
		default:
			return p, fmt.Errorf("claim %q: unknown key %q (selection, affinity, retry)", kv, k)
		}
	}
	p.Basis = "OVERRIDDEN by claim " + spec + "; table: " + p.Basis
	return p, nil
}

// Summary renders a row in one line.
func (p Promise) Summary() string {
	var cc []string
	for _, c := range p.CleanupChecks {
		cc = append(cc, string(c))
	}
	sort.Strings(cc)
	return fmt.Sprintf("selection=%s affinity=%t retry=%t pod-source-kept=%t flows-outlive-proxier=%t internal-traffic-local=%t external-traffic-local=%t source-ranges=%t cleanup=%s",
		p.Selection, p.ClientIPAffinity, p.Retry, p.PodSourceKept, p.FlowsOutliveProxier, p.InternalTrafficLocal, p.ExternalTrafficLocal, p.SourceRanges, strings.Join(cc, "+"))
}

// Has reports whether the mode keeps state of kind i.
func (p Promise) Has(i Inspection) bool {
	for _, c := range p.CleanupChecks {
		if c == i {
			return true
		}
	}
	return false
}
