package probe

import (
	"context"
	"net"
	"net/netip"
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
