package userspace

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// udpSocket relays datagrams: each client address gets an association, a
// connected socket to one backend, that lives until it has been idle for
// the idle timeout.
//
// Replies must leave from the address the client's datagram was delivered
// to after NAT (the REDIRECT target): only then does conntrack recognise
// them as the reply direction of the client's flow and rewrite the source
// back to the service VIP, which is what a connected client socket
// expects. A socket bound to 0.0.0.0 would otherwise pick its source by
// route, which differs for node-local clients (REDIRECT sends those to
// 127.0.0.1, the route back to the client says the node IP). So the
// socket reads each datagram's destination with IP_PKTINFO and replies
// with the same address as source.
type udpSocket struct {
	name   core.ServicePortName
	conn   *net.UDPConn
	lb     *Balancer
	dial   DialFunc
	idle   time.Duration
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	assocs map[netip.AddrPort]*udpAssoc
	wg     sync.WaitGroup
}

type udpAssoc struct {
	client   netip.AddrPort
	local    netip.Addr // where the client's datagrams arrived (reply source)
	backend  net.Conn
	endpoint netip.AddrPort
	lastSeen atomic.Int64 // unix nanos of the last datagram either way
	once     sync.Once
}

func (a *udpAssoc) touch() { a.lastSeen.Store(time.Now().UnixNano()) }

func (a *udpAssoc) close() { a.once.Do(func() { a.backend.Close() }) }

const maxDatagram = 64 << 10

func newUDPSocket(name core.ServicePortName, listen netip.Addr, lb *Balancer, dial DialFunc, idle time.Duration) (*udpSocket, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen, 0)))
	if err != nil {
		return nil, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	}); err != nil || serr != nil {
		conn.Close()
		return nil, os.NewSyscallError("setsockopt IP_PKTINFO", errors.Join(err, serr))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &udpSocket{name: name, conn: conn, lb: lb, dial: dial, idle: idle, ctx: ctx, cancel: cancel,
		assocs: map[netip.AddrPort]*udpAssoc{}}
	s.wg.Add(1)
	go s.readClients()
	return s, nil
}

func (s *udpSocket) Port() int { return s.conn.LocalAddr().(*net.UDPAddr).Port }

// readClients forwards client datagrams to their association's backend.
func (s *udpSocket) readClients() {
	defer s.wg.Done()
	buf := make([]byte, maxDatagram)
	oob := make([]byte, 128)
	for {
		n, oobn, _, from, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			klog.V(2).InfoS("UDP read failed", "service", s.name, "err", err)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		a := s.association(from, pktinfoDst(oob[:oobn]))
		if a == nil {
			continue
		}
		a.touch()
		if _, err := a.backend.Write(buf[:n]); err != nil {
			klog.V(3).InfoS("UDP write to endpoint failed", "service", s.name, "endpoint", a.endpoint, "err", err)
		}
	}
}

// association returns the client's association, creating it (and picking
// a backend) for a new client. nil means the datagram is dropped.
func (s *udpSocket) association(client netip.AddrPort, local netip.Addr) *udpAssoc {
	s.mu.Lock()
	a := s.assocs[client]
	s.mu.Unlock()
	if a != nil {
		return a
	}
	conn, ep, err := connect(s.ctx, s.lb, s.dial, s.name, "udp", client.Addr())
	if err != nil {
		klog.V(2).InfoS("Dropping UDP datagram: no backend", "service", s.name, "client", client, "err", err)
		return nil
	}
	a = &udpAssoc{client: client, local: local, backend: conn, endpoint: ep}
	a.touch()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		conn.Close()
		return nil
	}
	s.assocs[client] = a
	s.wg.Add(1)
	go s.readBackend(a)
	return a
}

// readBackend relays the backend's replies to the client until the
// association is idle, fails or is closed.
func (s *udpSocket) readBackend(a *udpAssoc) {
	defer s.wg.Done()
	defer s.forget(a)
	defer a.close()
	buf := make([]byte, maxDatagram)
	var oob []byte
	if a.local.IsValid() {
		oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: a.local.As4()})
	}
	for {
		a.backend.SetReadDeadline(time.Unix(0, a.lastSeen.Load()).Add(s.idle))
		n, err := a.backend.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && time.Since(time.Unix(0, a.lastSeen.Load())) < s.idle {
				continue // the client spoke since the deadline was set
			}
			if !errors.Is(err, net.ErrClosed) && !(ne != nil && ne.Timeout()) {
				klog.V(3).InfoS("UDP association ends", "service", s.name, "client", a.client, "endpoint", a.endpoint, "err", err)
			}
			return
		}
		a.touch()
		if _, _, err := s.conn.WriteMsgUDPAddrPort(buf[:n], oob, a.client); err != nil {
			klog.V(3).InfoS("UDP reply to client failed", "service", s.name, "client", a.client, "err", err)
		}
	}
}

func (s *udpSocket) forget(a *udpAssoc) {
	s.mu.Lock()
	if s.assocs[a.client] == a {
		delete(s.assocs, a.client)
	}
	s.mu.Unlock()
}

func (s *udpSocket) CloseEndpoints(keep func(netip.AddrPort) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c, a := range s.assocs {
		if !keep(a.endpoint) {
			a.close()
			delete(s.assocs, c)
			n++
		}
	}
	return n
}

func (s *udpSocket) Close() {
	s.mu.Lock()
	s.closed = true
	s.conn.Close()
	s.cancel()
	for c, a := range s.assocs {
		a.close()
		delete(s.assocs, c)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// pktinfoDst returns the destination address of a received datagram (after
// NAT) from its IP_PKTINFO control message.
func pktinfoDst(oob []byte) netip.Addr {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}
	}
	for _, m := range msgs {
		// struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12 {
			return netip.AddrFrom4([4]byte(m.Data[8:12]))
		}
	}
	return netip.Addr{}
}
