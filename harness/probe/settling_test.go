package probe

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/netlab"
)

// A settling probe's source port lies in SettlingPorts, outside the
// kernel's ephemeral range, and a taken port is passed over, not fatal.
func TestSettlingPorts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
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
	target := Target{NS: netlab.HostNS, Addr: netip.MustParseAddrPort(ln.Addr().String()), Proto: TCP, Settling: true}

	// The next port is taken by a listener: the probe must use the one after.
	var taken net.Listener
	var want int
	for i := 0; i < 100 && taken == nil; i++ {
		p := nextSettlingPort()
		if p+2 > SettlingPorts[1] {
			continue
		}
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			taken, want = l, p+2
		}
	}
	if taken == nil {
		t.Fatal("found no free port in the settling range to occupy")
	}
	defer taken.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 50; i++ {
		c, err := Dial(ctx, target, "tcp")
		if err != nil {
			t.Fatalf("settling dial: %v", err)
		}
		port := c.LocalAddr().(*net.TCPAddr).Port
		c.Close()
		if port < SettlingPorts[0] || port > SettlingPorts[1] {
			t.Fatalf("settling probe used source port %d, outside %v", port, SettlingPorts)
		}
		if i == 0 && port != want {
			t.Fatalf("first settling probe used port %d, want %d (the port before it is taken)", port, want)
		}
	}
	c, err := Dial(ctx, Target{NS: netlab.HostNS, Addr: target.Addr, Proto: TCP}, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.LocalAddr().(*net.TCPAddr).Port; p >= SettlingPorts[0] && p <= SettlingPorts[1] {
		t.Errorf("a measured connection got source port %d, inside the settling range %v: the kernel's ephemeral range overlaps it", p, SettlingPorts)
	}
}
