package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Links manages the dummy device that holds the VIPs, and lists local
// addresses. Netlink is the real one; FakeLinks models it in memory.
type Links interface {
	// EnsureDummy creates the dummy device if it is missing. The device is
	// left down, as kube-proxy leaves kube-ipvs0: its addresses still get
	// local routes, and a down device never answers ARP.
	EnsureDummy(name string) error
	// DeleteDummy deletes the device and with it its addresses. A missing
	// device is not an error.
	DeleteDummy(name string) error
	// Addrs lists the IPv4 addresses on dev; none when dev is missing.
	Addrs(dev string) ([]netip.Addr, error)
	AddAddr(dev string, a netip.Addr) error
	DelAddr(dev string, a netip.Addr) error
	// LocalAddrs lists the IPv4 addresses on every device except lo and
	// except, when set, the named one: the node addresses NodePorts
	// listen on when the Node object is not known.
	LocalAddrs(exclude string) ([]netip.Addr, error)
}

// Netlink implements Links with rtnetlink in the network namespace it was
// created in.
type Netlink struct {
	h *netlink.Handle
}

var _ Links = (*Netlink)(nil)

// NewNetlink opens an rtnetlink handle in the calling thread's network
// namespace.
func NewNetlink() (*Netlink, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink: %w", err)
	}
	return &Netlink{h: h}, nil
}

// Close releases the netlink sockets.
func (n *Netlink) Close() { n.h.Close() }

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// EnsureDummy implements Links.
func (n *Netlink) EnsureDummy(name string) error {
	l, err := n.h.LinkByName(name)
	if err == nil {
		if l.Type() != "dummy" {
			return fmt.Errorf("device %s exists but is a %s device, not dummy: delete it or pick another name", name, l.Type())
		}
		return nil
	}
	if !isNotFound(err) {
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	d := &netlink.Dummy{LinkAttrs: netlink.NewLinkAttrs()}
	d.Name = name
	if err := n.h.LinkAdd(d); err != nil {
		return fmt.Errorf("creating dummy device %s: %w (does the kernel have CONFIG_DUMMY?)", name, err)
	}
	return nil
}

// DeleteDummy implements Links.
func (n *Netlink) DeleteDummy(name string) error {
	l, err := n.h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	if err := n.h.LinkDel(l); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

// Addrs implements Links.
func (n *Netlink) Addrs(dev string) ([]netip.Addr, error) {
	l, err := n.h.LinkByName(dev)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up %s: %w", dev, err)
	}
	addrs, err := n.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", dev, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)},
		// Scope host: the kernel never picks a VIP as the source address
		// of traffic leaving the node.
		Scope: unix.RT_SCOPE_HOST,
	}
}

// AddAddr implements Links.
func (n *Netlink) AddAddr(dev string, a netip.Addr) error {
	l, err := n.h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", dev, err)
	}
	if err := n.h.AddrAdd(l, hostAddr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("binding %s to %s: %w", a, dev, err)
	}
	return nil
}

// DelAddr implements Links.
func (n *Netlink) DelAddr(dev string, a netip.Addr) error {
	l, err := n.h.LinkByName(dev)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up %s: %w", dev, err)
	}
	if err := n.h.AddrDel(l, hostAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("unbinding %s from %s: %w", a, dev, err)
	}
	return nil
}

// LocalAddrs implements Links.
func (n *Netlink) LocalAddrs(exclude string) ([]netip.Addr, error) {
	links, err := n.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	var out []netip.Addr
	for _, l := range links {
		attrs := l.Attrs()
		if attrs.Name == exclude || attrs.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := n.h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("listing addresses of %s: %w", attrs.Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().IsLoopback() {
				out = append(out, ip.Unmap())
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// FakeLinks models devices and their addresses in memory.
type FakeLinks struct {
	mu sync.Mutex
	// Dummies maps each dummy device to its addresses, sorted.
	Dummies map[string][]netip.Addr
	// Local holds the addresses LocalAddrs reports (other devices).
	Local []netip.Addr
	// Ops lists every change, e.g. "add-addr kube-ipvs0 198.19.0.10".
	Ops []string
}

var _ Links = (*FakeLinks)(nil)

// NewFakeLinks returns a FakeLinks with no devices and the given local
// (node) addresses.
func NewFakeLinks(local ...netip.Addr) *FakeLinks {
	return &FakeLinks{Dummies: map[string][]netip.Addr{}, Local: local}
}

// EnsureDummy implements Links.
func (f *FakeLinks) EnsureDummy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.Dummies[name]; !ok {
		f.Dummies[name] = nil
		f.Ops = append(f.Ops, "add-dummy "+name)
	}
	return nil
}

// DeleteDummy implements Links.
func (f *FakeLinks) DeleteDummy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.Dummies[name]; ok {
		delete(f.Dummies, name)
		f.Ops = append(f.Ops, "delete-dummy "+name)
	}
	return nil
}

// Addrs implements Links (sorted).
func (f *FakeLinks) Addrs(dev string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.Dummies[dev])
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddAddr implements Links.
func (f *FakeLinks) AddAddr(dev string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	addrs, ok := f.Dummies[dev]
	if !ok {
		return fmt.Errorf("fake links: no device %s", dev)
	}
	// Kept sorted, so adding stays cheap with thousands of VIPs.
	i, found := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare)
	if !found {
		f.Dummies[dev] = slices.Insert(addrs, i, a)
		f.Ops = append(f.Ops, fmt.Sprintf("add-addr %s %s", dev, a))
	}
	return nil
}

// DelAddr implements Links.
func (f *FakeLinks) DelAddr(dev string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	addrs := f.Dummies[dev]
	if i, found := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare); found {
		f.Dummies[dev] = slices.Delete(addrs, i, i+1)
		f.Ops = append(f.Ops, fmt.Sprintf("delete-addr %s %s", dev, a))
	}
	return nil
}

// LocalAddrs implements Links.
func (f *FakeLinks) LocalAddrs(string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.Local), nil
}
