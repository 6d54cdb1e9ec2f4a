package userspace

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	v1 "k8s.io/api/core/v1"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// TestRealRulesNodeLocalTraffic applies the portal rules with the real
// iptables-restore (nft and legacy) in a scratch network namespace and
// sends TCP and UDP to the VIP from that namespace itself: the OUTPUT
// path, where REDIRECT delivers to 127.0.0.1 and the UDP reply must leave
// from 127.0.0.1 to be un-NATed back to the VIP. Then a second full sync
// must not duplicate jumps, and Cleanup must leave nothing.
func TestRealRulesNodeLocalTraffic(t *testing.T) {
	for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			if _, err := (iptables.OSExec{}).LookPath(fmt.Sprintf("iptables-%s-restore", v)); err != nil {
				t.Skipf("iptables-%s-restore not installed", v)
			}
			netnstest.Run(t, iptables.OSExec{}, func(ex *netnstest.Guarded) { realRulesIn(t, ex, v) })
		})
	}
}

func realRulesIn(t *testing.T, ex *netnstest.Guarded, v iptables.Variant) {
	ctx := context.Background()
	for _, cmd := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "usp0", "type", "veth", "peer", "name", "usp1"},
		{"addr", "add", "198.18.0.11/24", "dev", "usp0"},
		{"link", "set", "usp0", "up"},
		{"link", "set", "usp1", "up"},
		{"route", "add", "198.19.0.0/16", "dev", "usp0"},
	} {
		if out, err := ex.Run(ctx, "ip", cmd, nil); err != nil {
			t.Errorf("ip %v: %v %s", cmd, err, out)
			return
		}
	}
	here, err := netns.Get()
	if err != nil {
		t.Error(err)
		return
	}
	defer here.Close()
	// The proxy dials from its own goroutines; make those dials happen in
	// the scratch namespace too.
	dial := func(ctx context.Context, network string, ep netip.AddrPort, timeout time.Duration) (net.Conn, error) {
		var c net.Conn
		err := inNS(here, func() error {
			var err error
			c, err = Dial(ctx, network, ep, timeout)
			return err
		})
		return c, err
	}

	// Backends on 198.18.0.11 (the namespace's own address).
	tcpLn, err := net.Listen("tcp4", "198.18.0.11:0")
	if err != nil {
		t.Error(err)
		return
	}
	defer tcpLn.Close()
	go func() {
		for {
			c, err := tcpLn.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "tcp-backend %s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	udpPC, err := net.ListenPacket("udp4", "198.18.0.11:0")
	if err != nil {
		t.Error(err)
		return
	}
	defer udpPC.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := udpPC.ReadFrom(buf)
			if err != nil {
				return
			}
			udpPC.WriteTo(append([]byte("udp-backend "), buf[:n]...), from)
		}
	}()

	be, err := iptables.NewBackend(ex, v)
	if err != nil {
		t.Error(err)
		return
	}
	p, err := New(Config{Backend: be, Dial: dial})
	if err != nil {
		t.Error(err)
		return
	}
	vip := netip.MustParseAddr("198.19.0.10")
	tcpName := svcA
	udpName := svcB
	udpName.Protocol = v1.ProtocolUDP
	snap := core.NewSnapshot()
	for _, sp := range []struct {
		name core.ServicePortName
		port int32
		ep   string
	}{{tcpName, 80, tcpLn.Addr().String()}, {udpName, 53, udpPC.LocalAddr().String()}} {
		snap.Services[sp.name] = &core.ServicePort{Name: sp.name, ClusterIP: vip, Port: sp.port, Protocol: sp.name.Protocol, NodePort: 30000 + sp.port}
		ep := netip.MustParseAddrPort(sp.ep)
		snap.Endpoints[sp.name] = []core.Endpoint{{IP: ep.Addr(), Port: int32(ep.Port()), Ready: true, Serving: true}}
	}
	if err := p.Sync(snap, core.ChangeSet{Full: true}); err != nil {
		t.Errorf("sync: %v", err)
		return
	}

	// TCP to the VIP and to the NodePort, from this namespace.
	for _, addr := range []string{"198.19.0.10:80", "198.18.0.11:30080", "127.0.0.1:30080"} {
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		if err != nil {
			t.Errorf("tcp %s: %v", addr, err)
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || !strings.HasPrefix(string(buf[:n]), "tcp-backend") {
			t.Errorf("tcp %s: %q, %v", addr, buf[:n], err)
		}
	}
	// UDP: a connected socket accepts the reply only if it comes from
	// the VIP.
	for _, addr := range []string{"198.19.0.10:53", "198.18.0.11:30053"} {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			t.Errorf("udp %s: %v", addr, err)
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("hello"))
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || string(buf[:n]) != "udp-backend hello" {
			t.Errorf("udp %s: reply %q, %v (a reply from the wrong source is dropped by the connected socket)", addr, buf[:n], err)
		}
	}

	if err := p.Sync(snap, core.ChangeSet{Full: true}); err != nil {
		t.Errorf("second full sync: %v", err)
	}
	if strings.Contains(string(p.LastBatch()), "-I ") {
		t.Errorf("second full sync re-inserted jumps:\n%s", p.LastBatch())
	}
	saved, _ := be.Save()
	if n := strings.Count(string(saved), "-j PM-PORTALS-HOST"); n != 1 {
		t.Errorf("%d jumps to PM-PORTALS-HOST, want 1:\n%s", n, saved)
	}

	if err := p.Cleanup(); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	saved, _ = be.Save()
	if strings.Contains(string(saved), "PM-") || strings.Contains(string(saved), "198.19.0.10") {
		t.Errorf("cleanup left rules behind:\n%s", saved)
	}
	if c, err := net.DialTimeout("tcp4", "198.19.0.10:80", 500*time.Millisecond); err == nil {
		c.Close()
		t.Error("VIP still answers after cleanup")
	}
}

// inNS runs fn on a thread that is in ns for the duration.
func inNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with its goroutine instead of
		// serving others from the wrong namespace.
		return err
	}
	runtime.UnlockOSThread()
	return ferr
}
