package iptables

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
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
		err = nl.AddrAdd(lo, &netlink.Addr{IPNet: netnstest.HostNet(trafficLB)})
	}
	if err != nil {
		t.Errorf("setting up the node namespace: %v", err)
		return
	}
	pod, err := netnstest.AddPeer(nl, node, "pod", trafficPod, podGateway)
	if err != nil {
		t.Errorf("creating the pod: %v", err)
		return
	}
	defer pod.Close()
	if err := pod.Serve(node, "served", netip.AddrPortFrom(trafficPod, 8080)); err != nil {
		t.Errorf("listening in the pod: %v", err)
		return
	}
	allowed, err := netnstest.AddPeer(nl, node, "allowed", trafficAllowed, nodeIP)
	if err != nil {
		t.Errorf("creating the allowed client: %v", err)
		return
	}
	defer allowed.Close()
	denied, err := netnstest.AddPeer(nl, node, "denied", foreignClient, nodeIP)
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

	lbAddr, vipAddr := netip.AddrPortFrom(trafficLB, 80), netip.MustParseAddrPort("198.19.0.40:80")
	// The pod answers "served <the source it saw>".
	served := func(got string) bool { return strings.HasPrefix(got, "served ") }
	if got, err := allowed.Dial(node, lbAddr, 3*time.Second); err != nil || !served(got) {
		t.Errorf("allowed client to the load balancer IP: %q, %v; want served\n%s", got, err, dump())
	}
	// The denied client's path works: the ranges do not guard the
	// cluster IP.
	if got, err := denied.Dial(node, vipAddr, 3*time.Second); err != nil || !served(got) {
		t.Errorf("denied client to the cluster IP: %q, %v; want served\n%s", got, err, dump())
	}
	got, err := denied.Dial(node, lbAddr, 1500*time.Millisecond)
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
	if got, err := denied.Dial(node, lbAddr, 3*time.Second); err != nil || !served(got) {
		t.Errorf("once the ranges are gone, the formerly denied client to the load balancer IP: %q, %v; want served\n%s", got, err, dump())
	}
}
