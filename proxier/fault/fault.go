// Package fault breaks one promise of the reference proxier on purpose, so
// that the self-test (make selftest) can show that the conformance suite
// fails a proxy that does not keep it. A fault is chosen with the
// --selftest-fault flag, which exists only in binaries built with the
// pm_selftest tag: in every other build Current is the constant "" and the
// proxier has no such flag.
package fault

import (
	"fmt"
	"sort"
	"strings"
)

// Fault names one broken promise.
type Fault string

// The faults. Each breaks exactly one behaviour; what the suite must then
// fail is declared in suites/selftest.
const (
	// AffinityIgnored programs ClientIP Services as if they had none.
	AffinityIgnored Fault = "affinity-ignored"
	// AffinityEarlyExpiry programs a quarter of the Service's timeoutSeconds.
	AffinityEarlyExpiry Fault = "affinity-early-expiry"
	// AffinityNeverExpires programs the 3-hour default whatever the Service says.
	AffinityNeverExpires Fault = "affinity-never-expires"
	// StaleConntrackKept never deletes conntrack entries.
	StaleConntrackKept Fault = "stale-conntrack-kept"
	// EndpointAddIgnored ignores endpoints added to a Service port that
	// already has some.
	EndpointAddIgnored Fault = "endpoint-add-ignored"
	// RemovedEndpointKept keeps sending to endpoints that were removed.
	RemovedEndpointKept Fault = "removed-endpoint-kept"
	// ServiceDeleteIgnored keeps a deleted Service's rules.
	ServiceDeleteIgnored Fault = "service-delete-ignored"
	// IPVSStateKept (ipvs) never deletes a virtual server or unbinds a
	// VIP, while the iptables rules and ipsets follow the Services: it
	// breaks only what the IPVS cleanup assessment looks at.
	IPVSStateKept Fault = "ipvs-state-kept"
	// NodePortIgnored programs no NodePorts.
	NodePortIgnored Fault = "nodeport-ignored"
	// InternalPolicyIgnored treats internalTrafficPolicy Local as Cluster.
	InternalPolicyIgnored Fault = "internal-policy-ignored"
	// ExternalPolicyIgnored treats externalTrafficPolicy Local as Cluster.
	ExternalPolicyIgnored Fault = "external-policy-ignored"
	// HealthCheckIgnored serves no healthCheckNodePort.
	HealthCheckIgnored Fault = "health-check-ignored"
	// ExternalIPsIgnored programs no Service's externalIPs.
	ExternalIPsIgnored Fault = "external-ips-ignored"
	// LoadBalancerIgnored programs no load balancer ingress IP.
	LoadBalancerIgnored Fault = "load-balancer-ignored"
	// SourceRangesIgnored lets every source reach a load balancer IP,
	// whatever its loadBalancerSourceRanges say.
	SourceRangesIgnored Fault = "source-ranges-ignored"
	// TerminatingAsReady sends new connections to serving terminating
	// endpoints as if they were ready.
	TerminatingAsReady Fault = "terminating-as-ready"
	// TerminatingDropped never falls back to serving terminating
	// endpoints: an endpoint that is not ready is gone.
	TerminatingDropped Fault = "terminating-dropped"
	// RandomSkewed gives every iptables endpoint rule probability 1/n
	// instead of 1/(n-i) (with 3 endpoints they get 1/3, 2/9 and 4/9), and
	// the last nftables endpoint two of n+1 numgen picks (1/4, 1/4, 1/2).
	RandomSkewed Fault = "random-skewed"
	// RoundRobinBroken picks at random (userspace) or by source hash
	// (ipvs: the sh scheduler) instead of in turn.
	RoundRobinBroken Fault = "round-robin-broken"
	// RetryDisabled (userspace) gives up after the first failed dial.
	RetryDisabled Fault = "retry-disabled"
	// NoEndpointsDropped drops packets to a Service without endpoints
	// instead of rejecting them.
	NoEndpointsDropped Fault = "no-endpoints-dropped"
	// HairpinNotMasqueraded leaves out the SNAT of a pod's connection to
	// itself through its Service (iptables, nftables, ipvs).
	HairpinNotMasqueraded Fault = "hairpin-not-masqueraded"
	// PodSourceMasqueraded masquerades all traffic to cluster IPs, as
	// --masquerade-all does, so backends see a node instead of the client
	// pod.
	PodSourceMasqueraded Fault = "pod-source-masqueraded"
	// KernelStateForgotten makes a full sync delete only the Service
	// chains this process created, not those it finds in the kernel, so
	// a Service deleted while the proxier was down keeps its chains
	// (iptables, nftables).
	KernelStateForgotten Fault = "kernel-state-forgotten"
	// APILossFlushes programs no Service while the API server does not
	// answer, as a proxier that takes a failed watch for an empty cluster.
	APILossFlushes Fault = "api-loss-flushes"
	// APIChangesMissed keeps the state from before the API server first
	// stopped answering: what changes meanwhile or afterwards never
	// reaches the data plane, as a proxier whose watch never resumes.
	APIChangesMissed Fault = "api-changes-missed"
)

// WatchesAPI says whether the fault needs to know when the API server
// answers (Filter.APIDown, Filter.APILost).
func WatchesAPI(f Fault) bool { return f == APILossFlushes || f == APIChangesMissed }

// Descriptions says what each fault breaks, for help texts and reports.
var Descriptions = map[Fault]string{
	AffinityIgnored:       "sessionAffinity: ClientIP is ignored",
	AffinityEarlyExpiry:   "affinity expires after a quarter of timeoutSeconds",
	AffinityNeverExpires:  "affinity ignores timeoutSeconds and lasts 3 hours",
	StaleConntrackKept:    "conntrack entries to removed UDP endpoints are never deleted",
	EndpointAddIgnored:    "endpoints added to a Service port that has some are ignored",
	RemovedEndpointKept:   "removed endpoints keep getting traffic",
	ServiceDeleteIgnored:  "a deleted Service keeps its rules",
	IPVSStateKept:         "a deleted Service's IPVS virtual servers and VIPs are kept",
	NodePortIgnored:       "NodePorts are not programmed",
	InternalPolicyIgnored: "internalTrafficPolicy Local is treated as Cluster",
	ExternalPolicyIgnored: "externalTrafficPolicy Local is treated as Cluster",
	HealthCheckIgnored:    "no healthCheckNodePort is served",
	ExternalIPsIgnored:    "a Service's externalIPs are not programmed",
	LoadBalancerIgnored:   "load balancer ingress IPs are not programmed",
	SourceRangesIgnored:   "loadBalancerSourceRanges are ignored: every source reaches a load balancer IP",
	TerminatingAsReady:    "serving terminating endpoints get new connections as if ready",
	TerminatingDropped:    "serving terminating endpoints are never used, even when no endpoint is ready",
	RandomSkewed:          "random choice is skewed (iptables 1/3, 2/9, 4/9; nftables 1/4, 1/4, 1/2)",
	RoundRobinBroken:      "round-robin is replaced by a random or hashed choice",
	RetryDisabled:         "a failed dial is not retried on another endpoint",
	NoEndpointsDropped:    "a Service without endpoints drops packets instead of rejecting",
	HairpinNotMasqueraded: "a pod's connection to itself through its Service is not SNATed",
	PodSourceMasqueraded:  "traffic from pods to cluster IPs is masqueraded (backends lose the client's address)",
	KernelStateForgotten:  "after a restart the proxier removes only the chains it created itself: a Service deleted while it was down keeps its chains",
	APILossFlushes:        "while the API server does not answer, every Service's rules are removed",
	APIChangesMissed:      "once the API server has stopped answering, no change reaches the data plane again",
}

// Hairpin says whether the kernel modes SNAT a pod's connection to itself.
func Hairpin() bool { return Current() != HairpinNotMasqueraded }

// MasqueradeAll is the proxier's --masquerade-all, forced on by
// PodSourceMasqueraded.
func MasqueradeAll(flag bool) bool { return flag || Current() == PodSourceMasqueraded }

// RejectTarget is the iptables target for traffic to a Service without
// endpoints: REJECT, or DROP for NoEndpointsDropped.
func RejectTarget() string {
	if Current() == NoEndpointsDropped {
		return "DROP"
	}
	return "REJECT"
}

// Parse checks a fault name.
func Parse(s string) (Fault, error) {
	f := Fault(s)
	if _, ok := Descriptions[f]; !ok {
		return "", fmt.Errorf("unknown fault %q: use one of %s", s, joinNames())
	}
	return f, nil
}

// Names lists every fault, sorted.
func Names() []string {
	var out []string
	for f := range Descriptions {
		out = append(out, string(f))
	}
	sort.Strings(out)
	return out
}

func joinNames() string { return strings.Join(Names(), ", ") }
