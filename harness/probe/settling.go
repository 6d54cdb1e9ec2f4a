package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"syscall"
)

// SettlingPorts is the source-port range of settling probes. A connection
// sent before the proxier has programmed a Service is not NATed, and the
// node's conntrack keeps its un-NATed entry (SYN_SENT: 120 s; UDP: 30 s).
// A later connection that the kernel happens to give the same source port
// matches that entry, so it is neither NATed nor counted as new: it fails
// with "no route to host" although every rule is in place (CI, 2026-12-03,
// iptables/kube-proxy, 1 of 300 retry connections; the entry was 3 s older
// than its neighbours). Measured connections take the kernel's ephemeral
// ports (32768-60999 by default), so a range below it keeps the two apart.
// It also stays below the NodePort range (30000-32767), which a proxier
// may hold open on a node.
var SettlingPorts = [2]int{10000, 29999}

// settlingNext walks SettlingPorts from a random start, so that probe
// processes started one after another (one per call on kube clusters) do
// not all begin at the same port, and one process does not reuse a port
// (and its stale conntrack entry) until it has walked the whole range.
var settlingNext atomic.Uint32

func init() { jumpSettling() }

// jumpSettling moves the walk to a random port. A taken port means the walk
// has run into a block that an earlier walk left in TIME_WAIT (a kind run
// starts one probe process per call, each walking from its own start), and
// stepping on through that block one port at a time can use up every try
// (CI, 2026-12-03, kind: 32 taken ports in a row). A random port is taken
// only with the fraction of the range in use, so all tries fail with that
// fraction to the power settlingTries.
func jumpSettling() {
	settlingNext.Store(uint32(rand.IntN(SettlingPorts[1] - SettlingPorts[0] + 1)))
}

func nextSettlingPort() int {
	n := SettlingPorts[1] - SettlingPorts[0] + 1
	return SettlingPorts[0] + int(settlingNext.Add(1)%uint32(n))
}

// settlingTries bounds the walk past ports that are taken: a listener, a
// socket in TIME_WAIT, or an earlier settling probe to the same address.
const settlingTries = 32

func dialSettling(ctx context.Context, t Target, network string) (net.Conn, error) {
	var err error
	for i := 0; i < settlingTries; i++ {
		var c net.Conn
		c, err = dialFrom(ctx, t, network, nextSettlingPort())
		if err == nil || !portTaken(err) || ctx.Err() != nil {
			return c, err
		}
		jumpSettling()
	}
	return nil, fmt.Errorf("no free source port in %d-%d after %d tries: %w", SettlingPorts[0], SettlingPorts[1], settlingTries, err)
}

func portTaken(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL)
}
