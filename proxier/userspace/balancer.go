package userspace

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
)

// ErrNoEndpoints is returned by Balancer.Next for a service port without
// usable endpoints.
var ErrNoEndpoints = errors.New("service has no usable endpoints")

// Balancer picks a backend per new connection: round-robin over each
// service port's endpoints in the order Update gave them, and, with
// ClientIP affinity, the endpoint a client used last while it has not been
// idle for longer than the timeout. It is safe for concurrent use.
type Balancer struct {
	clock clock.PassiveClock

	mu    sync.Mutex
	ports map[core.ServicePortName]*balancerState
}

type balancerState struct {
	endpoints []netip.AddrPort
	next      int // index of the endpoint the next round-robin pick returns
	affinity  bool
	ttl       time.Duration
	clients   map[netip.Addr]*stickyClient
}

type stickyClient struct {
	endpoint netip.AddrPort
	lastUsed time.Time
}

// NewBalancer returns an empty Balancer; clk is the time source of affinity
// expiry (nil means the real clock).
func NewBalancer(clk clock.PassiveClock) *Balancer {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Balancer{clock: clk, ports: map[core.ServicePortName]*balancerState{}}
}

// Update sets the endpoints of a service port (in the order round-robin
// walks them) and its affinity. When the endpoint list is unchanged the
// round-robin position and the affinity table are kept; when it changed,
// round-robin restarts at the first endpoint and clients stuck to an
// endpoint that is gone are forgotten. ttl is the affinity timeout.
func (b *Balancer) Update(name core.ServicePortName, endpoints []netip.AddrPort, affinity bool, ttl time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.ports[name]
	if st == nil {
		st = &balancerState{clients: map[netip.Addr]*stickyClient{}}
		b.ports[name] = st
	}
	if !slices.Equal(st.endpoints, endpoints) {
		st.endpoints = slices.Clone(endpoints)
		st.next = 0
		for ip, c := range st.clients {
			if !slices.Contains(st.endpoints, c.endpoint) {
				delete(st.clients, ip)
			}
		}
	}
	if !affinity || st.ttl != ttl {
		clear(st.clients)
	}
	st.affinity, st.ttl = affinity, ttl
	// Expired entries are otherwise only dropped when their client comes
	// back; sweeping here (once per sync) bounds the table.
	now := b.clock.Now()
	for ip, c := range st.clients {
		if now.Sub(c.lastUsed) > st.ttl {
			delete(st.clients, ip)
		}
	}
}

// Delete forgets a service port.
func (b *Balancer) Delete(name core.ServicePortName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.ports, name)
}

// Next returns the endpoint for a new connection from client. With
// resetAffinity (the client's endpoint just failed) the affinity entry is
// ignored and replaced by the round-robin pick.
func (b *Balancer) Next(name core.ServicePortName, client netip.Addr, resetAffinity bool) (netip.AddrPort, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.ports[name]
	if st == nil || len(st.endpoints) == 0 {
		return netip.AddrPort{}, ErrNoEndpoints
	}
	now := b.clock.Now()
	if st.affinity && !resetAffinity {
		if c := st.clients[client]; c != nil {
			if now.Sub(c.lastUsed) <= st.ttl {
				c.lastUsed = now
				return c.endpoint, nil
			}
			delete(st.clients, client)
		}
	}
	ep := st.endpoints[st.next%len(st.endpoints)]
	st.next = (st.next + 1) % len(st.endpoints)
	if fault.Current() == fault.RoundRobinBroken {
		ep = st.endpoints[rand.IntN(len(st.endpoints))]
	}
	if st.affinity {
		st.clients[client] = &stickyClient{endpoint: ep, lastUsed: now}
	}
	return ep, nil
}

// Endpoints returns the endpoints of a service port in round-robin order.
func (b *Balancer) Endpoints(name core.ServicePortName) []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st := b.ports[name]; st != nil {
		return slices.Clone(st.endpoints)
	}
	return nil
}
