// Package conntrack clears conntrack entries that would keep UDP traffic
// flowing to backends that are gone (UDP has no connection end, so stale
// DNAT entries otherwise live until they time out). All modes share it.
package conntrack

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	v1 "k8s.io/api/core/v1"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// Cleaner removes stale entries after a successful sync.
type Cleaner interface {
	ClearStale(snap *core.Snapshot, changes core.ChangeSet) error
}

// Flow is the part of a UDP conntrack entry the cleaner looks at.
type Flow struct {
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
}

// Filter describes entries to delete: original destination IP (when set)
// and port (when non-zero), reply source (the backend, when set).
type Filter struct {
	OrigDst   netip.Addr
	OrigDport uint16
	ReplySrc  netip.Addr
}

// Match reports whether f selects the flow.
func (f Filter) Match(fl Flow) bool {
	return (!f.OrigDst.IsValid() || f.OrigDst == fl.OrigDst.Addr()) &&
		(f.OrigDport == 0 || f.OrigDport == fl.OrigDst.Port()) &&
		(!f.ReplySrc.IsValid() || f.ReplySrc == fl.ReplySrc.Addr())
}

// Deleter deletes the UDP entries match selects; Netlink is the real one.
type Deleter interface {
	Delete(match func(Flow) bool) (uint, error)
}

// Netlink deletes conntrack entries in the current network namespace.
type Netlink struct{}

// Delete implements Deleter: one dump of the table, then one delete per
// matching entry (netlink's filter API works that way too).
func (Netlink) Delete(match func(Flow) bool) (uint, error) {
	return netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, udpMatcher(match))
}

type udpMatcher func(Flow) bool

func (m udpMatcher) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	if f.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok1 := netip.AddrFromSlice(f.Forward.DstIP)
	src, ok2 := netip.AddrFromSlice(f.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	return m(Flow{
		OrigDst:  netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort),
		ReplySrc: netip.AddrPortFrom(src.Unmap(), f.Reverse.SrcPort),
	})
}

// UDPCleaner turns a snapshot and a ChangeSet into conntrack deletions.
type UDPCleaner struct {
	Deleter Deleter
}

// NewUDPCleaner returns a cleaner using netlink.
func NewUDPCleaner() *UDPCleaner { return &UDPCleaner{Deleter: Netlink{}} }

// Filters returns the deletions a ChangeSet asks for: entries from a
// service IP (or NodePort) to a removed backend, and all entries to a
// service IP that just got its first backend (those were never DNATed and
// would blackhole the flow).
func Filters(changes core.ChangeSet) []Filter {
	var out []Filter
	for _, s := range changes.StaleUDPEndpoints {
		out = append(out, Filter{OrigDst: s.ServiceIP, OrigDport: uint16(s.Port), ReplySrc: s.Endpoint})
		if s.NodePort != 0 {
			out = append(out, Filter{OrigDport: uint16(s.NodePort), ReplySrc: s.Endpoint})
		}
	}
	for _, ip := range changes.StaleUDPServiceIPs {
		out = append(out, Filter{OrigDst: ip})
	}
	return out
}

// Serving maps each UDP frontend of a snapshot that has serving endpoints
// to them. A flow to such a frontend whose replies come from anything
// else is stale, whatever caused it; kube-proxy reconciles the same way
// since v1.31.
type Serving struct {
	byIP       map[netip.AddrPort]map[netip.AddrPort]bool
	byNodePort map[uint16]map[netip.AddrPort]bool
}

// ServingOf builds Serving from a snapshot.
func ServingOf(snap *core.Snapshot) Serving {
	s := Serving{byIP: map[netip.AddrPort]map[netip.AddrPort]bool{}, byNodePort: map[uint16]map[netip.AddrPort]bool{}}
	if snap == nil {
		return s
	}
	for name, sp := range snap.Services {
		if sp.Protocol != v1.ProtocolUDP {
			continue
		}
		eps := map[netip.AddrPort]bool{}
		for _, ep := range snap.Endpoints[name] {
			if ep.Serving {
				eps[ep.AddrPort()] = true
			}
		}
		if len(eps) == 0 {
			continue
		}
		port := uint16(sp.Port)
		if sp.ClusterIP.IsValid() {
			s.byIP[netip.AddrPortFrom(sp.ClusterIP, port)] = eps
		}
		for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
			s.byIP[netip.AddrPortFrom(ip, port)] = eps
		}
		if sp.NodePort != 0 {
			s.byNodePort[uint16(sp.NodePort)] = eps
		}
	}
	return s
}

// Stale reports whether a flow goes to a frontend with serving endpoints
// but is answered by none of them.
func (s Serving) Stale(f Flow) bool {
	if eps, ok := s.byIP[f.OrigDst]; ok && !eps[f.ReplySrc] {
		return true
	}
	if eps, ok := s.byNodePort[f.OrigDst.Port()]; ok && !eps[f.ReplySrc] {
		return true
	}
	return false
}

// Empty reports whether no frontend has serving endpoints.
func (s Serving) Empty() bool { return len(s.byIP) == 0 && len(s.byNodePort) == 0 }

// ClearStale implements Cleaner. The change set's filters catch entries
// of backends that just went away; reconciling against the snapshot also
// catches entries that formed while the data plane changed (a datagram
// between an IPVS real server's deletion and this cleanup leaves one
// that nothing else would ever remove while the flow keeps sending).
func (c *UDPCleaner) ClearStale(snap *core.Snapshot, changes core.ChangeSet) error {
	filters := Filters(changes)
	serving := ServingOf(snap)
	if len(filters) == 0 && serving.Empty() {
		return nil
	}
	n, err := c.Deleter.Delete(func(f Flow) bool {
		for _, flt := range filters {
			if flt.Match(f) {
				return true
			}
		}
		return serving.Stale(f)
	})
	if err != nil {
		return fmt.Errorf("clearing stale UDP conntrack entries (%d change filters): %w", len(filters), err)
	}
	klog.V(2).InfoS("Cleared stale UDP conntrack entries", "changeFilters", len(filters), "deleted", n)
	return nil
}
