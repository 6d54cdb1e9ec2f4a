package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// End is one side of a veth pair: the namespace it lives in, its name and
// an optional address (a prefix such as 198.18.0.11/24).
type End struct {
	NS   string
	Name string
	Addr netip.Prefix
	// MAC, if set, fixes the link's hardware address.
	MAC net.HardwareAddr
}

// Veth creates a veth pair between two namespaces, assigns the addresses
// and brings both ends up.
func Veth(a, b End) error {
	nsB, err := open(b.NS)
	if err != nil {
		return err
	}
	defer nsB.Close()
	err = WithHandle(a.NS, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Veth{
			LinkAttrs:        netlink.LinkAttrs{Name: a.Name, HardwareAddr: a.MAC},
			PeerName:         b.Name,
			PeerHardwareAddr: b.MAC,
			PeerNamespace:    netlink.NsFd(int(nsB)),
		})
	})
	if err != nil {
		return fmt.Errorf("veth %s/%s <-> %s/%s: %w", nsLabel(a.NS), a.Name, nsLabel(b.NS), b.Name, err)
	}
	for _, e := range []End{a, b} {
		if err := LinkUp(e.NS, e.Name, e.Addr); err != nil {
			return err
		}
	}
	return nil
}

// Bridge creates a bridge in the namespace, optionally with an address.
//
// The bridge gets a fixed MAC. Without one, Linux gives a bridge the lowest
// MAC of its ports, so adding or deleting a port (a pod) can change the
// gateway MAC under every other pod on the node; their neighbour entries
// keep the old one until they go stale (15-45 s), and meanwhile their
// packets are flooded instead of routed. That made connections from one
// pod time out for up to 46 s after other pods were replaced.
func Bridge(ns, name string, addr netip.Prefix) error {
	mac := macForName(ns + "/" + name)
	if addr.IsValid() {
		mac = MACFor(addr.Addr())
	}
	err := WithHandle(ns, func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}})
	})
	if err != nil {
		return fmt.Errorf("bridge %s/%s: %w", nsLabel(ns), name, err)
	}
	return LinkUp(ns, name, addr)
}

// Enslave attaches a link to a bridge in the same namespace.
func Enslave(ns, link, bridge string) error {
	return WithHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", nsLabel(ns), link, err)
		}
		br, err := h.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", nsLabel(ns), bridge, err)
		}
		return h.LinkSetMaster(l, br)
	})
}

// Hairpin lets a bridge port send frames back out the port they came in
// on, as kubelet and the CNI bridge plugin (hairpinMode) set up every pod's
// port. With br_netfilter loaded (Docker loads it, and a new namespace
// starts with bridge-nf-call-iptables=1), a pod's packet to its own
// Service is DNATed while it is still being bridged, so its reply to itself
// leaves by the port it came from; without hairpin mode the bridge drops it
// and a pod cannot reach itself through its Service.
func Hairpin(ns, link string) error {
	return WithHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", nsLabel(ns), link, err)
		}
		if err := h.LinkSetHairpin(l, true); err != nil {
			return fmt.Errorf("hairpin mode on %s/%s: %w", nsLabel(ns), link, err)
		}
		return nil
	})
}

// LinkUp assigns addr (if valid) and sets the link up.
func LinkUp(ns, name string, addr netip.Prefix) error {
	return WithHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s/%s: %w", nsLabel(ns), name, err)
		}
		if addr.IsValid() {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
				return fmt.Errorf("address %s on %s/%s: %w", addr, nsLabel(ns), name, err)
			}
		}
		return h.LinkSetUp(l)
	})
}

// MoveLink moves an existing link from one namespace into another, renames
// it there, assigns addr (if valid) and sets it up.
func MoveLink(from, name, to, newName string, addr netip.Prefix) error {
	dst, err := open(to)
	if err != nil {
		return err
	}
	defer dst.Close()
	err = WithHandle(from, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		// A link can be renamed only while it is down.
		if err := h.LinkSetDown(l); err != nil {
			return err
		}
		return h.LinkSetNsFd(l, int(dst))
	})
	if err != nil {
		return fmt.Errorf("move %s/%s to %s: %w", nsLabel(from), name, nsLabel(to), err)
	}
	if newName != name {
		err := WithHandle(to, func(h *netlink.Handle) error {
			l, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			return h.LinkSetName(l, newName)
		})
		if err != nil {
			return fmt.Errorf("rename %s/%s to %s: %w", nsLabel(to), name, newName, err)
		}
	}
	return LinkUp(to, newName, addr)
}

// DeleteLink removes a link; a missing one is not an error.
func DeleteLink(ns, name string) error {
	return WithHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return err
		}
		return h.LinkDel(l)
	})
}

// ListLinks returns the names of links in ns that start with prefix.
func ListLinks(ns, prefix string) ([]string, error) {
	var out []string
	err := WithHandle(ns, func(h *netlink.Handle) error {
		var links []netlink.Link
		err := redoInterrupted(func() (err error) {
			links, err = h.LinkList()
			return err
		})
		if err != nil {
			return err
		}
		for _, l := range links {
			if n := l.Attrs().Name; strings.HasPrefix(n, prefix) {
				out = append(out, n)
			}
		}
		return nil
	})
	return out, err
}

// Route adds dst via gw (gw may be invalid for a link-scope route on dev).
func Route(ns string, dst netip.Prefix, gw netip.Addr, dev string) error {
	return route(ns, dst, gw, dev, false)
}

// RouteReplace is Route, replacing the route ns had for dst. It refuses
// the host namespace, whose routes the lab never changes.
func RouteReplace(ns string, dst netip.Prefix, gw netip.Addr, dev string) error {
	if ns == HostNS {
		return fmt.Errorf("route %s via %v: refusing to change the host namespace's routes", dst, gw)
	}
	return route(ns, dst, gw, dev, true)
}

func route(ns string, dst netip.Prefix, gw netip.Addr, dev string, replace bool) error {
	return WithHandle(ns, func(h *netlink.Handle) error {
		r := &netlink.Route{Dst: ipNet(dst)}
		if gw.IsValid() {
			r.Gw = net.IP(gw.AsSlice())
		}
		if dev != "" {
			l, err := h.LinkByName(dev)
			if err != nil {
				return fmt.Errorf("%s/%s: %w", nsLabel(ns), dev, err)
			}
			r.LinkIndex = l.Attrs().Index
			if !gw.IsValid() {
				r.Scope = netlink.SCOPE_LINK
			}
		}
		add := h.RouteAdd
		if replace {
			add = h.RouteReplace
		}
		if err := add(r); err != nil {
			return fmt.Errorf("route %s via %v dev %s in %s: %w", dst, gw, dev, nsLabel(ns), err)
		}
		return nil
	})
}

// Sysctl writes a per-namespace sysctl such as net/ipv4/ip_forward. It
// refuses the host namespace: the lab never changes the host's settings.
func Sysctl(ns, key, value string) error {
	if ns == HostNS {
		return fmt.Errorf("refusing to set %s in the host namespace", key)
	}
	return Do(ns, func() error {
		// /proc/sys/net follows the network namespace of the opening thread.
		p := filepath.Join("/proc/sys", key)
		fd, err := unix.Open(p, unix.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, ns, err)
		}
		defer unix.Close(fd)
		if _, err := unix.Write(fd, []byte(value)); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, ns, err)
		}
		return nil
	})
}

// ReadSysctl reads a per-namespace sysctl.
func ReadSysctl(ns, key string) (string, error) {
	var out string
	err := Do(ns, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		out = strings.TrimSpace(string(b))
		return err
	})
	return out, err
}

// MACFor derives a locally administered MAC from an IPv4 address, so an
// address that is reused (a pod deleted and another created) keeps its MAC
// and neighbours' ARP caches stay right, as CNI plugins arrange it.
func MACFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x50, b[0], b[1], b[2], b[3]}
}

// macForName is a locally administered MAC for a link without an address,
// stable across runs. Its second octet differs from MACFor's, so the two
// never collide.
func macForName(name string) net.HardwareAddr {
	h := fnv.New32a()
	h.Write([]byte(name))
	b := binary.BigEndian.AppendUint32(nil, h.Sum32())
	return net.HardwareAddr{0x02, 0x51, b[0], b[1], b[2], b[3]}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func nsLabel(ns string) string {
	if ns == HostNS {
		return "host"
	}
	return ns
}

// RouteGet asks the kernel how ns would route a packet to dst, like `ip
// route get`. It sends nothing.
func RouteGet(ns string, dst netip.Addr) ([]netlink.Route, error) {
	var out []netlink.Route
	err := WithHandle(ns, func(h *netlink.Handle) error {
		var err error
		out, err = h.RouteGet(net.IP(dst.AsSlice()))
		return err
	})
	return out, err
}

// Routes lists every IPv4 route of every table in ns.
func Routes(ns string) ([]netlink.Route, error) {
	var out []netlink.Route
	err := WithHandle(ns, func(h *netlink.Handle) error {
		return redoInterrupted(func() (err error) {
			out, err = h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
			return err
		})
	})
	return out, err
}

// redoInterrupted repeats a netlink dump that the kernel marked
// interrupted (NLM_F_DUMP_INTR: the table changed while it was read, as
// when another test adds a veth to the host namespace meanwhile); the
// kernel's contract is to dump again.
func redoInterrupted(dump func() error) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return fmt.Errorf("netlink dump interrupted 10 times in a row: %w", err)
}
