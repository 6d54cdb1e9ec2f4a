package userspace

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"

	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// proxySocket is the node socket of one service port.
type proxySocket interface {
	// Port is the local port the portal rules redirect to.
	Port() int
	// CloseEndpoints closes the client connections (or UDP associations)
	// whose backend is not in keep.
	CloseEndpoints(keep func(netip.AddrPort) bool) int
	// Close stops accepting and closes every connection.
	Close()
}

// tcpSocket accepts clients on a listener and splices each to a backend.
type tcpSocket struct {
	name   core.ServicePortName
	ln     *net.TCPListener
	lb     *Balancer
	dial   DialFunc
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	sessions map[*tcpSession]struct{}
	wg       sync.WaitGroup
}

// tcpSession is one proxied client connection.
type tcpSession struct {
	client, backend *net.TCPConn
	endpoint        netip.AddrPort
	once            sync.Once
}

// close tears both sides down at once (also unblocking the copies).
func (s *tcpSession) close() {
	s.once.Do(func() {
		s.client.Close()
		s.backend.Close()
	})
}

func newTCPSocket(name core.ServicePortName, listen netip.Addr, lb *Balancer, dial DialFunc) (*tcpSocket, error) {
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(listen, 0)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &tcpSocket{name: name, ln: ln, lb: lb, dial: dial, ctx: ctx, cancel: cancel, sessions: map[*tcpSession]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *tcpSocket) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *tcpSocket) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				klog.ErrorS(err, "Accept failed; closing the proxy socket", "service", s.name)
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(c)
		}()
	}
}

// serve connects one client to a backend (with retries) and copies both
// ways until both sides are done.
func (s *tcpSocket) serve(client *net.TCPConn) {
	src := client.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	conn, ep, err := connect(s.ctx, s.lb, s.dial, s.name, "tcp", src)
	if err != nil {
		klog.V(2).InfoS("Closing client connection: no backend", "service", s.name, "client", client.RemoteAddr(), "err", err)
		// A reset tells the client at once that nothing serves it.
		client.SetLinger(0)
		client.Close()
		return
	}
	backend, ok := conn.(*net.TCPConn)
	if !ok {
		// Only test dialers return something else; copy generically.
		defer conn.Close()
		defer client.Close()
		go io.Copy(conn, client)
		io.Copy(client, conn)
		return
	}
	sess := &tcpSession{client: client, backend: backend, endpoint: ep}
	if !s.track(sess) {
		sess.close()
		return
	}
	defer s.untrack(sess)
	defer sess.close()
	klog.V(4).InfoS("Proxying", "service", s.name, "client", client.RemoteAddr(), "endpoint", ep)
	done := make(chan struct{})
	go func() {
		copyHalf(sess, backend, client)
		close(done)
	}()
	copyHalf(sess, client, backend)
	<-done
}

// copyHalf copies src to dst. io.Copy between two *net.TCPConn uses
// splice(2), so the data never enters user space. At EOF it passes the
// half-close on (FIN to dst) and lets the other direction go on; on an
// error it tears the whole session down.
func copyHalf(sess *tcpSession, dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		sess.close()
		return
	}
	dst.CloseWrite()
	src.CloseRead()
}

func (s *tcpSocket) track(sess *tcpSession) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.sessions[sess] = struct{}{}
	return true
}

func (s *tcpSocket) untrack(sess *tcpSession) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

func (s *tcpSocket) CloseEndpoints(keep func(netip.AddrPort) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for sess := range s.sessions {
		if !keep(sess.endpoint) {
			sess.close()
			n++
		}
	}
	return n
}

func (s *tcpSocket) Close() {
	s.mu.Lock()
	s.closed = true
	s.ln.Close()
	s.cancel()
	for sess := range s.sessions {
		sess.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
