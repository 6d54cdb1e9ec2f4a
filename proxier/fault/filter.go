package fault

import (
	"github.com/proxymodes/proxymodes/proxier/core"
)

// Filter rewrites each snapshot the way a proxier with the fault would see
// the cluster. It remembers the snapshot it last returned, for faults that
// keep what is gone or ignore what is new.
type Filter struct {
	prev *core.Snapshot
	// APIDown says the API server does not answer now; APILost that it
	// has not at some point. The proxier sets them for the faults that
	// WatchesAPI.
	APIDown, APILost bool
}

// Apply returns the snapshot to program. snap is not modified: a mode may
// keep references to it.
func (f *Filter) Apply(which Fault, snap *core.Snapshot) *core.Snapshot {
	switch {
	case which == APILossFlushes && f.APIDown:
		out := core.NewSnapshot()
		out.Node, out.NodeName = snap.Node, snap.NodeName
		return out
	case which == APIChangesMissed && f.APILost && f.prev != nil:
		return f.prev
	}
	out := core.NewSnapshot()
	out.Node, out.NodeName = snap.Node, snap.NodeName
	for n, sp := range snap.Services {
		c := *sp
		out.Services[n] = &c
	}
	for n, eps := range snap.Endpoints {
		out.Endpoints[n] = eps
	}
	prev := f.prev
	if prev == nil {
		prev = core.NewSnapshot()
	}
	for n, sp := range out.Services {
		switch which {
		case AffinityIgnored:
			sp.ClientIPAffinity, sp.StickyTimeoutSeconds = false, 0
		case AffinityEarlyExpiry:
			if sp.ClientIPAffinity {
				sp.StickyTimeoutSeconds = max(1, sp.StickyTimeoutSeconds/4)
			}
		case AffinityNeverExpires:
			if sp.ClientIPAffinity {
				sp.StickyTimeoutSeconds = core.DefaultStickyTimeoutSeconds
			}
		case NodePortIgnored:
			sp.NodePort = 0
		case InternalPolicyIgnored:
			sp.InternalLocal = false
		case ExternalPolicyIgnored:
			sp.ExternalLocal = false
		case HealthCheckIgnored:
			sp.HealthCheckNodePort = 0
		case ExternalIPsIgnored:
			sp.ExternalIPs = nil
		case LoadBalancerIgnored:
			sp.LoadBalancerIPs, sp.LoadBalancerSourceRanges = nil, nil
		case SourceRangesIgnored:
			sp.LoadBalancerSourceRanges = nil
		case RemovedEndpointKept:
			out.Endpoints[n] = union(out.Endpoints[n], prev.Endpoints[n])
		case EndpointAddIgnored:
			if old := prev.Endpoints[n]; len(old) > 0 {
				out.Endpoints[n] = only(out.Endpoints[n], old)
			}
		case TerminatingAsReady, TerminatingDropped:
			var eps []core.Endpoint
			for _, e := range out.Endpoints[n] {
				switch {
				case e.Ready:
				case which == TerminatingDropped:
					continue
				case e.Serving && e.Terminating:
					e.Ready = true
				}
				eps = append(eps, e)
			}
			out.Endpoints[n] = eps
		}
	}
	if which == ServiceDeleteIgnored {
		for n, sp := range prev.Services {
			if _, ok := out.Services[n]; !ok {
				out.Services[n] = sp
				out.Endpoints[n] = prev.Endpoints[n]
			}
		}
	}
	for n, eps := range out.Endpoints {
		if len(eps) == 0 {
			delete(out.Endpoints, n)
		}
	}
	f.prev = out
	return out
}

// union is eps with every endpoint that was ready in old kept ready: an
// endpoint going away first turns not ready (its pod is terminating), then
// leaves the slice, and the fault must survive both.
func union(eps, old []core.Endpoint) []core.Endpoint {
	keep := map[string]core.Endpoint{}
	for _, e := range old {
		if e.Ready {
			keep[e.String()] = e
		}
	}
	var out []core.Endpoint
	for _, e := range eps {
		if k, ok := keep[e.String()]; ok && !e.Ready {
			e = k
		}
		delete(keep, e.String())
		out = append(out, e)
	}
	for _, e := range keep {
		out = append(out, e)
	}
	core.SortEndpoints(out)
	return out
}

// only is eps without those old lacks.
func only(eps, old []core.Endpoint) []core.Endpoint {
	had := map[string]bool{}
	for _, e := range old {
		had[e.String()] = true
	}
	var out []core.Endpoint
	for _, e := range eps {
		if had[e.String()] {
			out = append(out, e)
		}
	}
	return out
}
