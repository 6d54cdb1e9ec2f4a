package iptables

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// TestRealLoadBalancerSourceRanges sends TCP connections through the real
// kernel: in a scratch namespace standing for the node, with a pod and two
// clients in namespaces of their own behind veths, a client inside the load
// balancer's source ranges is served through the load balancer IP, one
// outside them gets no answer at all (dropped, not refused) but is served
// through the cluster IP, and is served through the load balancer IP once
// the ranges are gone.
func TestRealLoadBalancerSourceRanges(t *testing.T) {
	for _, v := range realVariants {
		t.Run(string(v), func(t *testing.T) {
			requireVariant(t, v)
			inScratchNetns(t, func(ex Exec) { lbTraffic(t, ex, v) })
		})
	}
}

var (
	trafficLB      = netip.MustParseAddr("198.19.201.1")
	trafficPod     = netip.MustParseAddr("198.18.64.40")
	trafficAllowed = netip.MustParseAddr("198.18.200.9") // in the Service's 198.18.192.0/20
	podGateway     = netip.MustParseAddr("198.18.64.1")
)

func lbTraffic(t *testing.T, ex Exec, v Variant) {
	node, err := netns.Get()
	if err != nil {
		t.Error(err)
		return
	}
	defer node.Close()
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Error(err)
		return
	}
	defer nl.Close()
	// Commands, unlike file writes, go through the guard that refuses the
	// host namespace.
	if _, err := ex.Run(context.Background(), "sysctl", []string{"-w", "net.ipv4.ip_forward=1"}, nil); err != nil {
		t.Error(err)
		return
	}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err == nil {
		// A VIP-like load balancer's IP is a local address of the node:
		// without the firewall, a denied client's SYN would be refused
		// by the node itself, not left unanswered.
		err = nl.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(trafficLB)})
	}
	if err != nil {
		t.Errorf("setting up the node namespace: %v", err)
		return
	}
	pod, err := addPeer(nl, node, "pod", trafficPod, podGateway)
	if err != nil {
		t.Errorf("creating the pod: %v", err)
		return
	}
	defer pod.Close()
	ln, err := listenIn(pod, node, netip.AddrPortFrom(trafficPod, 8080))
	if err != nil {
		t.Errorf("listening in the pod: %v", err)
		return
	}
	defer ln.Close()
	go serve(ln)
	allowed, err := addPeer(nl, node, "allowed", trafficAllowed, nodeIP)
	if err != nil {
		t.Errorf("creating the allowed client: %v", err)
		return
	}
	defer allowed.Close()
	denied, err := addPeer(nl, node, "denied", foreignClient, nodeIP)
	if err != nil {
		t.Errorf("creating the denied client: %v", err)
		return
	}
	defer denied.Close()

	be, err := NewBackend(ex, v)
	if err != nil {
		t.Error(err)
		return
	}
	p, err := New(Config{Backend: be, ClusterCIDR: testsnap.ClusterCIDR})
	if err != nil {
		t.Error(err)
		return
	}
	defer func() {
		if err := p.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}()
	b := testsnap.New()
	name := b.Add(testsnap.Port{Name: "lb", ClusterIP: "198.19.0.40", Port: 80, LoadBalancerIPs: []string{trafficLB.String()},
		SourceRanges: []string{"198.18.192.0/20"}, Endpoints: []string{netip.AddrPortFrom(trafficPod, 8080).String()}})
	if err := p.Sync(b.Snap, fullSync()); err != nil {
		t.Errorf("sync: %v", err)
		return
	}
	dump := func() string { saved, _ := be.Save(); return string(saved) }

	lbAddr, vipAddr := netip.AddrPortFrom(trafficLB, 80).String(), "198.19.0.40:80"
	if got, err := dialFrom(allowed, node, lbAddr, 3*time.Second); err != nil || got != "served" {
		t.Errorf("allowed client to the load balancer IP: %q, %v; want served\n%s", got, err, dump())
	}
	// The denied client's path works: the ranges do not guard the
	// cluster IP.
	if got, err := dialFrom(denied, node, vipAddr, 3*time.Second); err != nil || got != "served" {
		t.Errorf("denied client to the cluster IP: %q, %v; want served\n%s", got, err, dump())
	}
	got, err := dialFrom(denied, node, lbAddr, 1500*time.Millisecond)
	var nerr net.Error
	switch {
	case err == nil:
		t.Errorf("denied client to the load balancer IP was answered %q; want no answer\n%s", got, dump())
	case errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("denied client to the load balancer IP was refused; want it dropped, with no answer\n%s", dump())
	case !errors.As(err, &nerr) || !nerr.Timeout():
		t.Errorf("denied client to the load balancer IP: %v; want a timeout", err)
	}

	// Without ranges every source is allowed.
	sp := *b.Snap.Services[name]
	sp.LoadBalancerSourceRanges = nil
	b.Snap.Services[name] = &sp
	if err := p.Sync(b.Snap, partialSync("lb")); err != nil {
		t.Errorf("partial sync: %v", err)
		return
	}
	if got, err := dialFrom(denied, node, lbAddr, 3*time.Second); err != nil || got != "served" {
		t.Errorf("once the ranges are gone, the formerly denied client to the load balancer IP: %q, %v; want served\n%s", got, err, dump())
	}
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

// addPeer creates a namespace whose eth0 has ip and reaches the node (the
// calling thread's namespace) through a veth whose node side has gw. The
// thread is back in node on return.
func addPeer(nl *netlink.Handle, node netns.NsHandle, name string, ip, gw netip.Addr) (netns.NsHandle, error) {
	peer, err := netns.New() // moves the thread into the new namespace...
	if err != nil {
		return 0, err
	}
	if err := netns.Set(node); err != nil { // ...and back
		peer.Close()
		return 0, err
	}
	fail := func(err error) (netns.NsHandle, error) {
		peer.Close()
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = "pm-" + name
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(peer)}); err != nil {
		return fail(err)
	}
	h, err := nl.LinkByName(la.Name)
	if err == nil {
		err = nl.AddrAdd(h, &netlink.Addr{IPNet: hostNet(gw)})
	}
	if err == nil {
		err = nl.LinkSetUp(h)
	}
	if err == nil {
		err = nl.RouteAdd(&netlink.Route{LinkIndex: h.Attrs().Index, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK})
	}
	if err != nil {
		return fail(err)
	}
	ph, err := netlink.NewHandleAt(peer, unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	defer ph.Close()
	var eth0 netlink.Link
	for _, ifname := range []string{"lo", "eth0"} {
		l, err := ph.LinkByName(ifname)
		if err == nil {
			err = ph.LinkSetUp(l)
		}
		if err != nil {
			return fail(err)
		}
		eth0 = l
	}
	idx := eth0.Attrs().Index
	err = ph.AddrAdd(eth0, &netlink.Addr{IPNet: hostNet(ip)})
	if err == nil {
		err = ph.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostNet(gw), Scope: netlink.SCOPE_LINK})
	}
	if err == nil {
		err = ph.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: net.IP(gw.AsSlice())})
	}
	if err != nil {
		return fail(err)
	}
	return peer, nil
}

// listenIn opens a TCP listener in ns (a socket stays in the namespace it
// was created in) and returns the thread to node.
func listenIn(ns, node netns.NsHandle, at netip.AddrPort) (net.Listener, error) {
	if err := netns.Set(ns); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", at.String())
	if serr := netns.Set(node); serr != nil {
		return nil, serr
	}
	return ln, err
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintln(c, "served")
		c.Close()
	}
}

// dialFrom connects to addr from ns and returns the line it is answered.
func dialFrom(ns, node netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	if err := netns.Set(ns); err != nil {
		return "", err
	}
	c, err := net.DialTimeout("tcp", addr, timeout)
	if serr := netns.Set(node); serr != nil {
		return "", serr
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}
