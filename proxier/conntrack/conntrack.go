// Package conntrack clears conntrack entries that would keep UDP traffic
// flowing to backends that are gone (UDP has no connection end, so stale
// DNAT entries otherwise live until they time out). All modes share it.
package conntrack

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// Cleaner removes stale entries after a successful sync.
type Cleaner interface {
	ClearStale(changes core.ChangeSet) error
}

// Filter describes entries to delete: UDP, original destination IP (when
// set) and port (when non-zero), reply source (the backend, when set).
type Filter struct {
	OrigDst   netip.Addr
	OrigDport uint16
	ReplySrc  netip.Addr
}

// Deleter deletes entries matching filters; Netlink is the real one.
type Deleter interface {
	Delete(filters []Filter) (uint, error)
}

// Netlink deletes conntrack entries in the current network namespace.
type Netlink struct{}

// Delete implements Deleter.
func (Netlink) Delete(filters []Filter) (uint, error) {
	var nf []netlink.CustomConntrackFilter
	for _, f := range filters {
		cf := &netlink.ConntrackFilter{}
		if err := cf.AddProtocol(unix.IPPROTO_UDP); err != nil {
			return 0, err
		}
		if f.OrigDst.IsValid() {
			if err := cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice())); err != nil {
				return 0, err
			}
		}
		if f.OrigDport != 0 {
			if err := cf.AddPort(netlink.ConntrackOrigDstPort, f.OrigDport); err != nil {
				return 0, err
			}
		}
		if f.ReplySrc.IsValid() {
			if err := cf.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.ReplySrc.AsSlice())); err != nil {
				return 0, err
			}
		}
		nf = append(nf, cf)
	}
	if len(nf) == 0 {
		return 0, nil
	}
	return netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, nf...)
}

// UDPCleaner turns a ChangeSet into conntrack deletions.
type UDPCleaner struct {
	Deleter Deleter
}

// NewUDPCleaner returns a cleaner using netlink.
func NewUDPCleaner() *UDPCleaner { return &UDPCleaner{Deleter: Netlink{}} }

// Filters returns the deletions for a ChangeSet, as kube-proxy does:
// entries from a service IP (or NodePort) to a removed backend, and all
// entries to a service IP that just got its first backend (those were
// never DNATed and would blackhole the flow).
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

// ClearStale implements Cleaner.
func (c *UDPCleaner) ClearStale(changes core.ChangeSet) error {
	filters := Filters(changes)
	if len(filters) == 0 {
		return nil
	}
	n, err := c.Deleter.Delete(filters)
	if err != nil {
		return fmt.Errorf("clearing %d stale UDP conntrack filters: %w", len(filters), err)
	}
	klog.V(2).InfoS("Cleared stale UDP conntrack entries", "filters", len(filters), "deleted", n)
	return nil
}
