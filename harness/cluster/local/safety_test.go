package local_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/leak"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// outside is a spread of addresses beyond 198.18.0.0/15, including its
// immediate neighbours. None of them is ever sent a packet: the kernel is
// only asked how it would route them.
var outside = []string{
	"1.1.1.1", "8.8.8.8", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1",
	"192.0.2.1", "198.17.255.255", "198.20.0.1", "203.0.113.7", "224.0.0.251", "255.255.255.255",
}

func TestLabHasNoRouteOut(t *testing.T) {
	l := lab(t)
	addPod(t, l, "route-a", "node-1", nil)
	addPod(t, l, "route-b", "node-2", nil)
	nss, err := netlab.ListNS(leak.Prefix(sharedName))
	if err != nil {
		t.Fatal(err)
	}
	// fabric + 2 nodes + 2 pods at least
	if len(nss) < 5 {
		t.Fatalf("found only %d lab namespaces: %v", len(nss), nss)
	}
	for _, ns := range nss {
		for _, a := range outside {
			if routes, err := netlab.RouteGet(ns, netip.MustParseAddr(a)); err == nil {
				t.Errorf("%s has a route to %s: %+v", ns, a, routes)
			}
		}
		routes, err := netlab.Routes(ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			// The local table holds loopback and each address's own entries.
			if r.Table == unix.RT_TABLE_LOCAL && (r.Dst == nil || r.Dst.IP.IsLoopback() || inLab(r.Dst.IP)) {
				continue
			}
			if r.Dst == nil {
				t.Errorf("%s has a default route: %+v", ns, r)
				continue
			}
			if !inLab(r.Dst.IP) || netip.MustParsePrefix(r.Dst.String()).Bits() < addrplan.Lab.Bits() {
				t.Errorf("%s routes %s, which is not inside %s", ns, r.Dst, addrplan.Lab)
			}
		}
	}
}

func inLab(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	return ok && addrplan.Lab.Contains(a.Unmap())
}

func TestKubernetesServiceEndpointIsServingLabAddress(t *testing.T) {
	l := lab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ep netip.AddrPort
	for ctx.Err() == nil && !ep.IsValid() {
		slices, err := l.Client().DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if len(s.Ports) > 0 && s.Ports[0].Port != nil && len(e.Addresses) > 0 {
					ep = netip.AddrPortFrom(netip.MustParseAddr(e.Addresses[0]), uint16(*s.Ports[0].Port))
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !ep.IsValid() {
		t.Fatal("no EndpointSlice for the kubernetes Service")
	}
	if !addrplan.Lab.Contains(ep.Addr()) {
		t.Fatalf("kubernetes Service endpoint %s is outside the lab range %s", ep, addrplan.Lab)
	}
	// It must really serve, from inside every node, with the lab's CA.
	rc := l.RESTConfig()
	tlsCfg, err := rest.TLSConfigFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Info().Nodes {
		readyz(t, ctx, n, ep, tlsCfg, rc.BearerToken)
	}
}

func readyz(t *testing.T, ctx context.Context, n cluster.Node, ep netip.AddrPort, tlsCfg *tls.Config, token string) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return probe.Dial(ctx, probe.Target{NS: n.NS, Addr: ep}, network)
		}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+net.JoinHostPort(ep.Addr().String(), strconv.Itoa(int(ep.Port())))+"/readyz", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("from %s: GET %s/readyz: %v", n.Name, ep, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("from %s: GET %s/readyz: %s", n.Name, ep, resp.Status)
	}
}

// TestServiceAddressIsNotAnsweredByAnotherNode: a pod's packets to a
// ClusterIP that its own node has not programmed must not be served by
// another node that has. kube-proxy's IPVS mode binds every VIP to a dummy
// device and, without strictARP, answers ARP for it on every interface; on
// a fabric where ClusterIPs were on-link, the other node took the traffic.
// Here node-1 holds a VIP on its loopback, answers ARP for it (the
// kernel's default arp_ignore=0) and listens on it; a pod on node-2 must
// not reach it.
func TestServiceAddressIsNotAnsweredByAnotherNode(t *testing.T) {
	l := lab(t)
	client := addPod(t, l, "vip-client", "node-2", nil)
	var node1 cluster.Node
	for _, n := range l.Info().Nodes {
		if n.Name == "node-1" {
			node1 = n
		}
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr("198.19.255.254"), 9999)
	// The host kernel has no dummy driver; any local address will do, as
	// the kernel answers ARP for all of them alike.
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vip.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}
	onLoopback := func(change func(*netlink.Handle, netlink.Link) error) error {
		return netlab.WithHandle(node1.NS, func(h *netlink.Handle) error {
			lo, err := h.LinkByName("lo")
			if err != nil {
				return err
			}
			return change(h, lo)
		})
	}
	if err := onLoopback(func(h *netlink.Handle, lo netlink.Link) error { return h.AddrAdd(lo, addr) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { onLoopback(func(h *netlink.Handle, lo netlink.Link) error { return h.AddrDel(lo, addr) }) })
	var ln net.Listener
	if err := netlab.Do(node1.NS, func() (err error) {
		ln, err = net.Listen("tcp", vip.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := func(ns string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return netlab.Dialer(ns, &net.Dialer{})(ctx, "tcp", vip.String())
	}
	// node-1 itself reaches it, so the listener works.
	c, err := dial(node1.NS)
	if err != nil {
		t.Fatalf("node-1 cannot reach its own %s: %v", vip, err)
	}
	c.Close()
	c, err = dial(client.NS)
	if err == nil {
		c.Close()
		t.Fatalf("a pod on node-2 reached %s, which only node-1 holds: another node served a ClusterIP that node-2 never programmed", vip)
	}
	t.Logf("as it should, the pod on node-2 could not reach node-1's %s: %v", vip, err)
}
