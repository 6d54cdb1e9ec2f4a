// Package core holds the types shared by the change trackers and every
// proxy mode: the desired-state Snapshot, the ChangeSet since the last sync,
// and the Mode interface a proxy mode implements.
//
// Modes never talk to the API server; they only turn a Snapshot into
// dataplane state.
package core

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// DefaultStickyTimeoutSeconds is the ClientIP affinity timeout used when a
// Service does not set one (the API default, 3 hours).
const DefaultStickyTimeoutSeconds = 10800

// ServicePortName identifies one port of one Service.
type ServicePortName struct {
	types.NamespacedName
	Port     string // the port's name, may be empty
	Protocol v1.Protocol
}

// String renders "ns/name:port" (or "ns/name" for an unnamed port), the form
// kube-proxy uses in rule comments.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return fmt.Sprintf("%s:%s", n.NamespacedName.String(), n.Port)
}

// ServicePort is the part of a Service port a proxy needs.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      int32
	Protocol  v1.Protocol
	// NodePort is 0 when the Service has none.
	NodePort int32
	// ExternalIPs are extra destination addresses handled like NodePort traffic.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the Service's load balancer ingress IPs
	// (status.loadBalancer.ingress, VIP mode only, as kube-proxy): a load
	// balancer delivers packets to some node with these as destination,
	// so they are handled like ExternalIPs, behind
	// LoadBalancerSourceRanges.
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges, when not empty, are the only sources whose
	// traffic to LoadBalancerIPs is forwarded; any other is dropped. As in
	// kube-proxy it never restricts the ClusterIP, NodePorts or
	// ExternalIPs, and a zero-length prefix among them means "allow all",
	// so the tracker leaves the list empty then.
	LoadBalancerSourceRanges []netip.Prefix
	// ClientIPAffinity is true for sessionAffinity: ClientIP.
	ClientIPAffinity bool
	// StickyTimeoutSeconds is the affinity timeout (meaningful only with ClientIPAffinity).
	StickyTimeoutSeconds int32
	// InternalLocal is internalTrafficPolicy: Local: traffic to the
	// ClusterIP goes only to endpoints on this node (see InternalEndpoints).
	InternalLocal bool
	// ExternalLocal is externalTrafficPolicy: Local on a Service reachable
	// from outside (a NodePort or external IPs): that traffic goes only to
	// endpoints on this node, keeping the client's address (see
	// ExternalEndpoints).
	ExternalLocal bool
	// HealthCheckNodePort is the Service's healthCheckNodePort (0: none),
	// where the proxier tells load balancers whether this node has a
	// ready endpoint of it.
	HealthCheckNodePort int32
}

// Equal reports whether two ServicePorts would produce the same rules.
func (s *ServicePort) Equal(o *ServicePort) bool {
	if s == nil || o == nil {
		return s == o
	}
	if s.Name != o.Name || s.ClusterIP != o.ClusterIP || s.Port != o.Port || s.Protocol != o.Protocol ||
		s.NodePort != o.NodePort || s.ClientIPAffinity != o.ClientIPAffinity ||
		s.StickyTimeoutSeconds != o.StickyTimeoutSeconds || s.InternalLocal != o.InternalLocal ||
		s.ExternalLocal != o.ExternalLocal || s.HealthCheckNodePort != o.HealthCheckNodePort {
		return false
	}
	return slices.Equal(s.ExternalIPs, o.ExternalIPs) && slices.Equal(s.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(s.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges)
}

// ExternallyAccessible says whether traffic from outside the cluster can
// reach the port: through a NodePort, an external IP or a load balancer
// IP. Only then does externalTrafficPolicy apply.
func (s *ServicePort) ExternallyAccessible() bool {
	return s.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
}

// SourceRangesAdmitNode reports whether a loadBalancerSourceRange holds
// one of the node's addresses: kube-proxy's allowFromNode. A load
// balancer IP is often also bound to the node, so the node's own request
// to it loops back with that IP as its source, never passing the load
// balancer; every mode then admits the load balancer IPs as sources too.
func (s *ServicePort) SourceRangesAdmitNode(nodeAddrs []netip.Addr) bool {
	return slices.ContainsFunc(s.LoadBalancerSourceRanges, func(r netip.Prefix) bool {
		return slices.ContainsFunc(nodeAddrs, r.Contains)
	})
}

// Endpoint is one backend of one ServicePort.
type Endpoint struct {
	IP          netip.Addr
	Port        int32
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
}

// AddrPort renders "ip:port".
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, uint16(e.Port)) }

// String renders "ip:port".
func (e Endpoint) String() string { return e.AddrPort().String() }

// SortEndpoints orders endpoints by address then port, so rules are stable.
func SortEndpoints(eps []Endpoint) {
	sort.Slice(eps, func(i, j int) bool {
		if c := eps[i].IP.Compare(eps[j].IP); c != 0 {
			return c < 0
		}
		return eps[i].Port < eps[j].Port
	})
}

// UsableEndpoints returns the endpoints traffic should go to: the ready ones,
// or, when none is ready, the ones that are serving while terminating (as
// kube-proxy does since ProxyTerminatingEndpoints went GA). The result keeps
// the input order.
func UsableEndpoints(eps []Endpoint) []Endpoint {
	var ready, terminating []Endpoint
	for _, ep := range eps {
		switch {
		case ep.Ready:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// InternalEndpoints returns the endpoints for traffic to sp's ClusterIP,
// as kube-proxy categorizes them (without topology hints): under
// internalTrafficPolicy Local LocalEndpoints, otherwise UsableEndpoints.
// noLocal is true when the policy leaves none although the Service has
// usable endpoints on other nodes: that traffic is dropped, not rejected as
// for a Service without endpoints.
func InternalEndpoints(sp *ServicePort, eps []Endpoint, node string) (out []Endpoint, noLocal bool) {
	return policyEndpoints(sp.InternalLocal, eps, node)
}

// ExternalEndpoints is InternalEndpoints for traffic from outside the
// cluster to a NodePort or an external IP, under externalTrafficPolicy.
// Traffic from a pod or from the node itself is not external: with the
// Local policy it still takes UsableEndpoints (kube-proxy's short circuit
// in the iptables and nftables modes).
func ExternalEndpoints(sp *ServicePort, eps []Endpoint, node string) (out []Endpoint, noLocal bool) {
	return policyEndpoints(sp.ExternalLocal, eps, node)
}

func policyEndpoints(local bool, eps []Endpoint, node string) ([]Endpoint, bool) {
	usable := UsableEndpoints(eps)
	if !local {
		return usable, false
	}
	out := LocalEndpoints(eps, node)
	return out, len(out) == 0 && len(usable) > 0
}

// LocalEndpoints returns the endpoints on node that a Local traffic policy
// uses: the ready ones or, when none of them is ready, the serving
// terminating ones.
func LocalEndpoints(eps []Endpoint, node string) []Endpoint {
	var local []Endpoint
	for _, ep := range eps {
		if ep.NodeName == node {
			local = append(local, ep)
		}
	}
	return UsableEndpoints(local)
}

// ReachableEndpoints returns every endpoint some traffic to sp may reach:
// UsableEndpoints, and this node's terminating ones that a Local policy
// falls back to.
func ReachableEndpoints(sp *ServicePort, eps []Endpoint, node string) []Endpoint {
	out := UsableEndpoints(eps)
	if sp.InternalLocal || sp.ExternalLocal {
		out = UnionEndpoints(out, LocalEndpoints(eps, node))
	}
	return out
}

// UnionEndpoints returns a followed by the endpoints of b that a lacks; a
// and b are not modified.
func UnionEndpoints(a, b []Endpoint) []Endpoint {
	out := slices.Clone(a)
	for _, ep := range b {
		if !slices.Contains(out, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// NodeInfo is what the proxier knows about the node it runs on.
type NodeInfo struct {
	Name      string
	Labels    map[string]string
	Addresses []netip.Addr // InternalIP and ExternalIP addresses
}

// Snapshot is the complete desired state at one point in time. It is
// immutable once handed to a Mode: modes may keep references to it.
type Snapshot struct {
	// Services holds every service port the proxy must handle.
	Services map[ServicePortName]*ServicePort
	// Endpoints holds all known endpoints (usable or not) per service port,
	// sorted with SortEndpoints. A missing entry means no endpoints.
	Endpoints map[ServicePortName][]Endpoint
	// Node is this node, when the Node object was seen.
	Node *NodeInfo
	// NodeName is this node's name (set even before its Node object is
	// seen): endpoints whose NodeName equals it are local.
	NodeName string
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot {
	return &Snapshot{
		Services:  map[ServicePortName]*ServicePort{},
		Endpoints: map[ServicePortName][]Endpoint{},
	}
}

// SortedServicePorts returns the service port names in a stable order, so
// that rendered rules do not depend on map iteration.
func (s *Snapshot) SortedServicePorts() []ServicePortName {
	names := make([]ServicePortName, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := names[i], names[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Protocol < b.Protocol
	})
	return names
}

// EndpointCount returns the total number of endpoints in the snapshot.
func (s *Snapshot) EndpointCount() int {
	n := 0
	for _, eps := range s.Endpoints {
		n += len(eps)
	}
	return n
}

// StaleUDPEndpoint is a UDP backend that stopped being usable for a
// service port; conntrack entries that DNAT the service to it must go.
type StaleUDPEndpoint struct {
	ServiceIP netip.Addr
	Port      int32
	NodePort  int32
	Endpoint  netip.Addr
}

// ChangeSet says what changed since the previous successful Sync.
type ChangeSet struct {
	// Full asks the mode to rewrite all of its state, not just the changed
	// services (first sync, after a failure, and periodically).
	Full bool
	// Services holds the Services whose ports or endpoints changed.
	Services sets.Set[types.NamespacedName]
	// StaleUDPEndpoints lists UDP backends that went away.
	StaleUDPEndpoints []StaleUDPEndpoint
	// StaleUDPServiceIPs lists UDP service IPs that got their first usable
	// endpoint: conntrack may hold entries that were never DNATed.
	StaleUDPServiceIPs []netip.Addr
}

// Changed reports whether the given Service must be rewritten.
func (c ChangeSet) Changed(n types.NamespacedName) bool {
	return c.Full || c.Services.Has(n)
}

// Mode is one way of programming Services into the dataplane.
type Mode interface {
	// Name is the --proxy-mode value, e.g. "iptables".
	Name() string
	// Sync makes the dataplane match snap. When changes.Full is false only
	// the Services in changes.Services need rewriting. An error means the
	// dataplane may be partially updated; the caller retries with Full set.
	Sync(snap *Snapshot, changes ChangeSet) error
	// Cleanup removes everything the mode may have created.
	Cleanup() error
}
