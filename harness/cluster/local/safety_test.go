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
