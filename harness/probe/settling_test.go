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
// kernel's ephemeral range, and a block of taken ports is passed over, not
// fatal.
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

	// A block of ports after the next one is taken, as an earlier probe
	// process's walk leaves it in TIME_WAIT: the probe must get out of it
	// rather than step through it until its tries run out.
	const block = 2 * settlingTries
	var taken []net.Listener
	defer func() {
		for _, l := range taken {
			l.Close()
		}
	}()
	var first int
	for i := 0; i < 100 && taken == nil; i++ {
		p := nextSettlingPort()
		if p+block+1 > SettlingPorts[1] {
			continue
		}
		for q := p + 1; q <= p+block; q++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
			if err != nil {
				break
			}
			taken = append(taken, l)
		}
		if len(taken) < block {
			for _, l := range taken {
				l.Close()
			}
			taken = nil
			continue
		}
		first = p + 1
	}
	if taken == nil {
		t.Fatal("found no free block of ports in the settling range to occupy")
	}

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
		if port >= first && port < first+block {
			t.Fatalf("settling probe used port %d, inside the taken block %d-%d", port, first, first+block-1)
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
