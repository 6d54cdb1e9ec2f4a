// Package userspace is the userspace proxy mode, as kube-proxy had it
// before 1.26: the proxier itself carries the traffic. Each service port
// gets a socket on the node (a TCP listener or a UDP socket on 0.0.0.0 and
// a random port), and nat rules REDIRECT the service's VIP:port, external
// IPs and NodePort to it (see rules.go). For each new connection the
// proxier picks an endpoint round-robin, honouring ClientIP affinity, and
// when dialling it fails it tries the next one with growing timeouts
// (DialTimeouts), so clients see no failure while any endpoint works.
package userspace

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// DefaultUDPIdleTimeout is how long a UDP association lives without
// traffic; kube-proxy's --udp-timeout defaulted to the same 250ms.
const DefaultUDPIdleTimeout = 250 * time.Millisecond

// Config configures the userspace mode.
type Config struct {
	// Backend applies and reads the nat rules: an *iptables.Backend, or a
	// test double.
	Backend iptables.Interface
	// UDPIdleTimeout ends idle UDP associations (default DefaultUDPIdleTimeout).
	UDPIdleTimeout time.Duration
	// Clock times ClientIP affinity (default the real clock).
	Clock clock.PassiveClock
	// Dial opens backend connections (default Dial); tests inject one.
	Dial DialFunc
}

// Proxier is the userspace Mode. Sync and Cleanup must not run
// concurrently (the sync runner serialises them); the proxy sockets run on
// their own goroutines.
type Proxier struct {
	backend iptables.Interface
	udpIdle time.Duration
	dial    DialFunc
	lb      *Balancer

	mu      sync.Mutex // guards sockets (Sync vs. the accessors below)
	sockets map[core.ServicePortName]*serviceSocket

	needFull  bool
	lastBatch []byte
}

type serviceSocket struct {
	protocol v1.Protocol
	sock     proxySocket
}

var _ core.Mode = (*Proxier)(nil)

// listenAddr is where proxy sockets listen. It must be 0.0.0.0: REDIRECT
// delivers to the incoming interface's address or to 127.0.0.1.
var listenAddr = netip.IPv4Unspecified()

// New returns a userspace mode.
func New(cfg Config) (*Proxier, error) {
	if cfg.Backend == nil {
		return nil, errors.New("userspace: Config.Backend is required")
	}
	if cfg.UDPIdleTimeout == 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.UDPIdleTimeout < 0 {
		return nil, fmt.Errorf("userspace: UDP idle timeout %v must be positive", cfg.UDPIdleTimeout)
	}
	if cfg.Dial == nil {
		cfg.Dial = Dial
	}
	return &Proxier{
		backend:  cfg.Backend,
		udpIdle:  cfg.UDPIdleTimeout,
		dial:     cfg.Dial,
		lb:       NewBalancer(cfg.Clock),
		sockets:  map[core.ServicePortName]*serviceSocket{},
		needFull: true,
	}, nil
}

// Name implements core.Mode.
func (p *Proxier) Name() string { return "userspace" }

// Balancer returns the load balancer the proxy sockets use.
func (p *Proxier) Balancer() *Balancer { return p.lb }

// ProxyPort returns the local port of a service port's proxy socket.
func (p *Proxier) ProxyPort(name core.ServicePortName) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.sockets[name]; s != nil {
		return s.sock.Port(), true
	}
	return 0, false
}

// LastBatch returns the iptables-restore input of the last sync.
func (p *Proxier) LastBatch() []byte { return p.lastBatch }

// handled reports whether this mode can serve a service port, and why not.
func handled(svc *core.ServicePort) (bool, string) {
	if svc.Protocol != v1.ProtocolTCP && svc.Protocol != v1.ProtocolUDP {
		return false, "the userspace mode proxies TCP and UDP only"
	}
	if !svc.ClusterIP.Is4() {
		return false, "the userspace mode handles IPv4 only"
	}
	return true, ""
}

// Sync implements core.Mode. Every sync brings the sockets and the
// balancer in line with snap and rewrites all portal rules in one
// iptables-restore batch (a few rules per service port, so rewriting them
// all is cheap next to the sockets themselves).
func (p *Proxier) Sync(snap *core.Snapshot, changes core.ChangeSet) error {
	full := changes.Full || p.needFull
	p.needFull = true // cleared only on success
	var errs []error

	var existing map[string]*iptables.Table
	if full {
		data, err := p.backend.Save()
		if err != nil {
			return fmt.Errorf("userspace: reading current rules: %w", err)
		}
		if existing, err = iptables.ParseSave(data); err != nil {
			return fmt.Errorf("userspace: parsing iptables-save output: %w", err)
		}
	}

	var portals []portal
	active := map[core.ServicePortName]bool{}
	for _, name := range snap.SortedServicePorts() {
		svc := snap.Services[name]
		if ok, why := handled(svc); !ok {
			klog.V(2).InfoS("Skipping service port", "service", name, "reason", why)
			continue
		}
		s, err := p.ensureSocket(name, svc.Protocol)
		if err != nil {
			errs = append(errs, fmt.Errorf("userspace: opening the proxy socket of %s: %w", name, err))
			continue
		}
		active[name] = true
		all := snap.Endpoints[name]
		usable := core.UsableEndpoints(all)
		eps := make([]netip.AddrPort, len(usable))
		for i, ep := range usable {
			eps[i] = ep.AddrPort()
		}
		ttl := time.Duration(svc.StickyTimeoutSeconds) * time.Second
		p.lb.Update(name, eps, svc.ClientIPAffinity, ttl)
		// Connections to an endpoint that is gone from the slices are
		// cut; endpoints that are merely not ready (e.g. terminating)
		// keep theirs and only stop getting new ones.
		present := make(map[netip.AddrPort]bool, len(all))
		for _, ep := range all {
			present[ep.AddrPort()] = true
		}
		if n := s.sock.CloseEndpoints(func(ep netip.AddrPort) bool { return present[ep] }); n > 0 {
			klog.V(2).InfoS("Closed connections to removed endpoints", "service", name, "connections", n)
		}
		portals = append(portals, portal{svc: svc, proxyPort: s.sock.Port(), reject: len(usable) == 0})
	}

	batch := renderRules(portals, existing)
	p.lastBatch = batch
	if err := p.backend.Restore(batch); err != nil {
		errs = append(errs, fmt.Errorf("userspace: applying portal rules: %w", err))
	}

	// Sockets of removed services close after their rules are gone, so
	// a client never gets redirected to a port nobody listens on.
	p.mu.Lock()
	var stale []*serviceSocket
	for name, s := range p.sockets {
		if !active[name] {
			stale = append(stale, s)
			delete(p.sockets, name)
			p.lb.Delete(name)
			klog.V(1).InfoS("Closed proxy socket", "service", name, "port", s.sock.Port())
		}
	}
	p.mu.Unlock()
	for _, s := range stale {
		s.sock.Close()
	}

	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	p.needFull = false
	klog.V(2).InfoS("userspace sync done", "full", full, "servicePorts", len(portals), "closed", len(stale), "bytes", len(batch))
	return nil
}

// ensureSocket returns the service port's socket, opening one if needed (or
// replacing one of the wrong protocol).
func (p *Proxier) ensureSocket(name core.ServicePortName, proto v1.Protocol) (*serviceSocket, error) {
	p.mu.Lock()
	s := p.sockets[name]
	p.mu.Unlock()
	if s != nil && s.protocol == proto {
		return s, nil
	}
	if s != nil {
		s.sock.Close()
	}
	var sock proxySocket
	var err error
	switch proto {
	case v1.ProtocolTCP:
		sock, err = newTCPSocket(name, listenAddr, p.lb, p.dial)
	case v1.ProtocolUDP:
		sock, err = newUDPSocket(name, listenAddr, p.lb, p.dial, p.udpIdle)
	default:
		err = fmt.Errorf("unsupported protocol %s", proto)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		delete(p.sockets, name)
		return nil, err
	}
	s = &serviceSocket{protocol: proto, sock: sock}
	p.sockets[name] = s
	klog.V(1).InfoS("Opened proxy socket", "service", name, "protocol", proto, "port", sock.Port())
	return s, nil
}

// Cleanup implements core.Mode: it removes the portal rules and chains
// and closes every proxy socket and the connections they carry.
func (p *Proxier) Cleanup() error {
	p.needFull = true
	p.mu.Lock()
	socks := p.sockets
	p.sockets = map[core.ServicePortName]*serviceSocket{}
	p.mu.Unlock()
	for name, s := range socks {
		p.lb.Delete(name)
		s.sock.Close()
	}
	return CleanupRules(p.backend)
}

// CleanupRules removes the userspace mode's jumps and chains from the nat
// table behind b; it does nothing when there are none.
func CleanupRules(b iptables.Interface) error {
	data, err := b.Save()
	if err != nil {
		return fmt.Errorf("userspace cleanup: reading rules: %w", err)
	}
	tables, err := iptables.ParseSave(data)
	if err != nil {
		return fmt.Errorf("userspace cleanup: parsing iptables-save output: %w", err)
	}
	batch := renderCleanup(tables)
	if batch == nil {
		return nil
	}
	if err := b.Restore(batch); err != nil {
		return fmt.Errorf("userspace cleanup: %w", err)
	}
	return nil
}
