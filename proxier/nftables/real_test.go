package nftables

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/knftables"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// TestRealKernel applies the rules with the real nft in a scratch network
// namespace: the kernel must take a full sync, a partial one and a
// restart's full sync, list what the Fake says it should, leave a table
// that is not ours alone, and Cleanup must remove ours.
func TestRealKernel(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is not installed (Debian package nftables; make deps installs it): %v", err)
	}
	netnstest.Run(t, iptables.OSExec{}, func(*netnstest.Guarded) {
		ctx := context.Background()
		other, err := knftables.New(knftables.IPv4Family, "not-ours")
		if err != nil {
			t.Error(err)
			return
		}
		tx := other.NewTransaction()
		tx.Add(&knftables.Table{})
		tx.Add(&knftables.Chain{Name: "keep"})
		tx.Add(&knftables.Rule{Chain: "keep", Rule: "ip daddr 198.19.0.10 counter"})
		if err := other.Run(ctx, tx); err != nil {
			t.Error(err)
			return
		}

		// The proxier lists over netlink, as it does in the binary; the
		// checks below read the table through nft.
		nft, err := NewInterface()
		if err != nil {
			t.Error(err)
			return
		}
		check, err := knftables.New(knftables.IPv4Family, TableName)
		if err != nil {
			t.Error(err)
			return
		}
		p, err := New(Config{NFT: nft, ClusterCIDR: testsnap.ClusterCIDR})
		if err != nil {
			t.Error(err)
			return
		}
		b := webSnap()
		if err := p.Sync(b.Snap, fullSync()); err != nil {
			t.Errorf("full sync: %v", err)
			return
		}
		web := b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.10", Port: 80,
			Endpoints: []string{"198.18.64.10:8080", "198.18.67.10:8080"}})
		// externalTrafficPolicy Local, with and without an endpoint here:
		// the kernel must take the external chain's fib rules in chains
		// both nat-prerouting and nat-output reach.
		b.Add(testsnap.Port{Name: "etp-local", ClusterIP: "198.19.0.70", Port: 80, NodePort: 30070, ExternalIPs: []string{"198.19.200.70"},
			ExternalLocal: true, Affinity: true, Endpoints: []string{"198.18.64.70:8080"}, Remote: []string{"198.18.65.70:8080"}})
		b.Add(testsnap.Port{Name: "etp-elsewhere", ClusterIP: "198.19.0.71", Port: 80, NodePort: 30071, ExternalIPs: []string{"198.19.200.71"},
			ExternalLocal: true, InternalLocal: true, Remote: []string{"198.18.65.71:8080"}})
		// Load balancer IPs with source ranges that overlap and hold the
		// node's address (so the anonymous set also holds a load balancer
		// IP inside a range): nft must merge them, with and without
		// endpoints, and the pre-DNAT filter chains must take their
		// priority.
		b.Snap.Node = &core.NodeInfo{Name: testsnap.Node, Addresses: []netip.Addr{nodeIP}}
		for name, p := range lbSnap().Snap.Services {
			b.Snap.Services[name] = p
		}
		b.Add(testsnap.Port{Name: "lb-overlap", ClusterIP: "198.19.0.85", Port: 80, LoadBalancerIPs: []string{"198.18.0.200"},
			SourceRanges: []string{"198.18.0.0/16", "198.18.0.0/24", "198.18.0.200/32"}, ExternalLocal: true,
			Endpoints: []string{"198.18.64.85:8080"}})
		if err := p.Sync(b.Snap, changed(b.Snap)); err != nil {
			t.Errorf("partial sync after %s changed: %v\n%s", web, err, p.LastTransaction())
			return
		}
		p2, _ := New(Config{NFT: nft, ClusterCIDR: testsnap.ClusterCIDR})
		small := testsnap.Synthetic(3, 2)
		if err := p2.Sync(small, changed()); err != nil {
			t.Errorf("a restarted proxier's full sync: %v\n%s", err, p2.LastTransaction())
			return
		}
		// What the kernel holds is what the Fake holds after the same
		// full sync.
		fake := knftables.NewFake(knftables.IPv4Family, TableName)
		pf, _ := New(Config{NFT: fake, ClusterCIDR: testsnap.ClusterCIDR})
		if err := pf.Sync(small, fullSync()); err != nil {
			t.Error(err)
			return
		}
		want, _ := fake.ListAll(ctx)
		got, err := check.ListAll(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		for _, kind := range []string{"chain", "set", "map"} {
			if g, w := strings.Join(sorted(got[kind]), " "), strings.Join(sorted(want[kind]), " "); g != w {
				t.Errorf("the kernel's %ss:\n  %s\nwant:\n  %s", kind, g, w)
			}
		}
		for _, m := range []string{serviceIPsMap, noEndpointServices} {
			ge, _ := check.ListElements(ctx, "map", m)
			we, _ := fake.ListElements(ctx, "map", m)
			if len(ge) != len(we) {
				t.Errorf("map %s holds %d elements in the kernel, want %d", m, len(ge), len(we))
			}
		}

		if err := p2.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := check.ListAll(ctx); !knftables.IsNotFound(err) {
			t.Errorf("after cleanup, listing our table: %v (want not found)", err)
		}
		if rules, err := other.ListRules(ctx, "keep"); err != nil || len(rules) != 1 {
			t.Errorf("the table that is not ours: %d rules, %v; want its 1 rule untouched", len(rules), err)
		}
	})
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestRealLoadBalancerSourceRanges sends TCP connections through the
// real kernel: a node namespace holding the table, a pod namespace with
// the endpoint, and two client namespaces outside the cluster, one in
// the load balancer's source range and one not. The allowed client is
// served at the load balancer IP, the denied one's connection times out
// (dropped, not refused) while the cluster IP still serves it; a partial
// sync that widens the ranges lets it in, one that removes them too.
func TestRealLoadBalancerSourceRanges(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is not installed (Debian package nftables; make deps installs it): %v", err)
	}
	netnstest.Run(t, iptables.OSExec{}, func(*netnstest.Guarded) {
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
		lo, err := nl.LinkByName("lo")
		if err == nil {
			err = nl.LinkSetUp(lo)
		}
		if err == nil {
			// /proc/sys/net is the namespace of the thread that opens it.
			err = os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
		}
		if err != nil {
			t.Errorf("setting up the node namespace: %v", err)
			return
		}

		var (
			podIP   = netip.MustParseAddr("198.18.64.10")
			podGW   = netip.MustParseAddr("198.18.64.1")
			gw      = netip.MustParseAddr("198.18.0.1") // the node, to clients
			inIP    = netip.MustParseAddr("203.0.113.10")
			outIP   = netip.MustParseAddr("192.0.2.10")
			lbIP    = netip.MustParseAddr("198.19.250.2")
			lb      = netip.AddrPortFrom(lbIP, 80)
			cluster = netip.MustParseAddrPort("198.19.0.81:80")
		)
		pod, err := netnstest.AddPeer(nl, node, "pod", podIP, podGW)
		if err != nil {
			t.Error(err)
			return
		}
		defer pod.Close()
		if err := pod.Serve(node, "pod", netip.AddrPortFrom(podIP, 8080)); err != nil {
			t.Errorf("pod server: %v", err)
			return
		}
		allowed, err := netnstest.AddPeer(nl, node, "in", inIP, gw)
		if err != nil {
			t.Error(err)
			return
		}
		defer allowed.Close()
		denied, err := netnstest.AddPeer(nl, node, "out", outIP, gw)
		if err != nil {
			t.Error(err)
			return
		}
		defer denied.Close()

		nft, err := NewInterface()
		if err != nil {
			t.Error(err)
			return
		}
		p, err := New(Config{NFT: nft, ClusterCIDR: testsnap.ClusterCIDR})
		if err != nil {
			t.Error(err)
			return
		}
		defer p.Cleanup()
		b := testsnap.New()
		port := testsnap.Port{Name: "lb", ClusterIP: cluster.Addr().String(), Port: 80, LoadBalancerIPs: []string{lbIP.String()},
			SourceRanges: []string{"203.0.113.0/24"}, Endpoints: []string{netip.AddrPortFrom(podIP, 8080).String()}}
		n := b.Add(port)
		if err := p.Sync(b.Snap, fullSync()); err != nil {
			t.Errorf("sync: %v\n%s", err, p.LastTransaction())
			return
		}
		ruleset := func() string {
			out, _ := exec.Command("nft", "list", "table", "ip", TableName).CombinedOutput()
			return string(out)
		}
		// The Cluster policy masquerades: the pod sees its gateway.
		served := func(who string, c *netnstest.Peer, addr netip.AddrPort) {
			t.Helper()
			if got, err := c.Dial(node, addr, 3*time.Second); err != nil || got != "pod "+podGW.String() {
				t.Errorf("%s to %s: answered %q (%v), want the pod seeing %s\n%s", who, addr, got, err, podGW, ruleset())
			}
		}
		timesOut := func(who string, c *netnstest.Peer, addr netip.AddrPort) {
			t.Helper()
			got, err := c.Dial(node, addr, 2*time.Second)
			var ne net.Error
			if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("%s to %s: answered %q (%v), want a timeout (dropped)\n%s", who, addr, got, err, ruleset())
			}
		}

		served("the client in the source range", allowed, lb)
		timesOut("the client outside the source range", denied, lb)
		served("the client outside the source range, at the cluster IP", denied, cluster)

		port.SourceRanges = []string{"203.0.113.0/24", "192.0.2.0/28"}
		b.Add(port)
		if err := p.Sync(b.Snap, core.ChangeSet{Services: sets.New(n.NamespacedName)}); err != nil {
			t.Errorf("partial sync: %v\n%s", err, p.LastTransaction())
			return
		}
		served("the client in the widened source range", denied, lb)

		port.SourceRanges = []string{"198.51.100.0/24"}
		b.Add(port)
		if err := p.Sync(b.Snap, core.ChangeSet{Services: sets.New(n.NamespacedName)}); err != nil {
			t.Errorf("partial sync: %v\n%s", err, p.LastTransaction())
			return
		}
		timesOut("the client outside the moved source range", allowed, lb)

		port.SourceRanges = nil
		b.Add(port)
		if err := p.Sync(b.Snap, core.ChangeSet{Services: sets.New(n.NamespacedName)}); err != nil {
			t.Errorf("partial sync: %v\n%s", err, p.LastTransaction())
			return
		}
		served("without source ranges, one client", allowed, lb)
		served("without source ranges, the other", denied, lb)
	})
}
