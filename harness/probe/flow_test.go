package probe

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/netlab"
)

// A TCP flow keeps its connection: every exchange is echoed by the backend
// that greeted it, and once that connection is gone an exchange fails
// instead of silently opening a new one.
func TestTCPFlowKeepsItsConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
			go func() {
				c.Write([]byte(backend.Reply("pod-a", c.RemoteAddr())))
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := OpenFlow(ctx, netlab.HostNS, TCP, netip.MustParseAddrPort(ln.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := 0; i < 3; i++ {
		if name, err := f.Exchange(ctx, time.Second); name != "pod-a" || err != nil {
			t.Fatalf("exchange %d: %q, %v; want pod-a", i, name, err)
		}
	}
	(<-conns).Close()
	if name, err := f.Exchange(ctx, time.Second); err == nil {
		t.Fatalf("an exchange on a closed connection answered %q", name)
	}
	if len(conns) != 0 {
		t.Fatal("the flow opened a second connection")
	}
}

func TestFlowIsTCPOrUDP(t *testing.T) {
	if _, err := OpenFlow(context.Background(), netlab.HostNS, HTTP, netip.MustParseAddrPort("127.0.0.1:1"), time.Second); err == nil {
		t.Fatal("an HTTP flow opened")
	}
}

// A UDP probe sends its datagram again on the same socket while no reply
// comes, up to UDPSends times within its timeout: one lost datagram does
// not fail it, and every send comes from the one source port.
func TestUDPProbeResendsOnOneSocket(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	type got struct {
		from string
	}
	seen := make(chan got, 16)
	var answerAt atomic.Int32 // answer only this datagram (1-based) of all
	answerAt.Store(2)
	go func() {
		buf := make([]byte, 512)
		n := 0
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			n++
			seen <- got{from.String()}
			if int32(n) == answerAt.Load() {
				pc.WriteTo([]byte(backend.Reply("pod-u", from)), from)
			}
		}
	}()
	target := Target{NS: netlab.HostNS, Addr: netip.MustParseAddrPort(pc.LocalAddr().String()), Proto: UDP}
	r := Once(context.Background(), target, 1500*time.Millisecond)
	if r.Err != nil || r.Backend != "pod-u" {
		t.Fatalf("a probe whose first datagram was lost: %q, %v", r.Backend, r.Err)
	}
	a, b := <-seen, <-seen
	if a.from != b.from {
		t.Errorf("the resend came from %s, the first datagram from %s", b.from, a.from)
	}
	// Nobody answers: it fails within its timeout, after UDPSends sends.
	answerAt.Store(-1)
	start := time.Now()
	r = Once(context.Background(), target, 900*time.Millisecond)
	if r.Err == nil || time.Since(start) > 1500*time.Millisecond {
		t.Fatalf("an unanswered probe: %v after %s", r.Err, time.Since(start))
	}
	time.Sleep(50 * time.Millisecond)
	if len(seen) != UDPSends {
		t.Errorf("an unanswered probe sent %d datagrams, want %d", len(seen), UDPSends)
	}
}
