package netnstest

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Peer is a namespace behind a veth from the node: a pod or a client
// somewhere outside.
type Peer struct {
	ns netns.NsHandle
	ln net.Listener
}

// Close closes its listener and namespace handle.
func (p *Peer) Close() {
	if p.ln != nil {
		p.ln.Close()
	}
	p.ns.Close()
}

// AddPeer creates a namespace at ip linked to the node (the calling
// locked thread's namespace, node) by the veth pm-<name>, whose node end
// holds gw, the peer's default route. It leaves the thread in node.
func AddPeer(nl *netlink.Handle, node netns.NsHandle, name string, ip, gw netip.Addr) (*Peer, error) {
	ns, err := netns.New() // moves the thread into the peer...
	if err != nil {
		return nil, err
	}
	p := &Peer{ns: ns}
	if err := netns.Set(node); err != nil { // ...and back
		p.Close()
		return nil, err
	}
	fail := func(err error) (*Peer, error) {
		p.Close()
		return nil, fmt.Errorf("peer %s: %w", name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = "pm-" + name
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}); err != nil {
		return fail(err)
	}
	h, err := nl.LinkByName(la.Name)
	if err != nil {
		return fail(err)
	}
	gwAddr, _ := netlink.ParseAddr(gw.String() + "/32")
	if err := nl.AddrAdd(h, gwAddr); err != nil {
		return fail(err)
	}
	if err := nl.LinkSetUp(h); err != nil {
		return fail(err)
	}
	if err := nl.RouteAdd(&netlink.Route{LinkIndex: h.Attrs().Index, Dst: HostNet(ip), Scope: netlink.SCOPE_LINK}); err != nil {
		return fail(err)
	}
	ph, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	defer ph.Close()
	for _, ifname := range []string{"lo", "eth0"} {
		l, err := ph.LinkByName(ifname)
		if err != nil {
			return fail(err)
		}
		if err := ph.LinkSetUp(l); err != nil {
			return fail(err)
		}
	}
	eth0, _ := ph.LinkByName("eth0")
	a, _ := netlink.ParseAddr(ip.String() + "/32")
	if err := ph.AddrAdd(eth0, a); err != nil {
		return fail(err)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: HostNet(gw), Scope: netlink.SCOPE_LINK}); err != nil {
		return fail(err)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
		return fail(err)
	}
	return p, nil
}

// HostNet is a as a /32.
func HostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

// In runs fn on the calling locked thread moved into p's namespace, and
// brings it back to node; sockets fn creates stay in p's.
func (p *Peer) In(node netns.NsHandle, fn func() error) error {
	if err := netns.Set(p.ns); err != nil {
		return err
	}
	ferr := fn()
	if err := netns.Set(node); err != nil {
		// The thread is stuck elsewhere: nothing more may run on it.
		panic(fmt.Sprintf("returning to the node namespace: %v", err))
	}
	return ferr
}

// Serve makes p answer each connection to addr with "hello from <name>
// to <client address>".
func (p *Peer) Serve(node netns.NsHandle, name string, addr netip.AddrPort) error {
	return p.In(node, func() error {
		var err error
		p.ln, err = net.Listen("tcp", addr.String())
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := p.ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
				c.Close()
			}
		}()
		return nil
	})
}

// Dial connects from p to addr and returns the first line answered.
func (p *Peer) Dial(node netns.NsHandle, addr netip.AddrPort, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := p.In(node, func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}
