package userspace

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// These tests drive the proxy sockets over loopback with a recording
// rules backend: no iptables runs, so they are safe anywhere. Clients
// connect straight to the proxy port, as the REDIRECT rules would make
// them do.

// recorder is an iptables.Interface that records batches; Save returns an
// empty nat table.
type recorder struct {
	mu       sync.Mutex
	restores []string
	fail     error
}

func (r *recorder) Restore(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restores = append(r.restores, string(b))
	return r.fail
}

func (r *recorder) Save() ([]byte, error) {
	return []byte("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"), nil
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.restores) == 0 {
		return ""
	}
	return r.restores[len(r.restores)-1]
}

var _ iptables.Interface = (*recorder)(nil)

// echoBackend is a TCP server that greets with its name, then echoes until
// the client half-closes, then closes. It counts open connections.
type echoBackend struct {
	name string
	ln   net.Listener
	mu   sync.Mutex
	open int
}

func startEcho(t *testing.T, name string) *echoBackend {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &echoBackend{name: name, ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.open++
			b.mu.Unlock()
			go func() {
				defer func() {
					b.mu.Lock()
					b.open--
					b.mu.Unlock()
				}()
				defer c.Close()
				io.WriteString(c, b.name+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return b
}

func (b *echoBackend) addr() netip.AddrPort { return netip.MustParseAddrPort(b.ln.Addr().String()) }

// refusedAddr returns a loopback address where nothing listens.
func refusedAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

func snapshotWith(svc *core.ServicePort, eps ...netip.AddrPort) *core.Snapshot {
	s := core.NewSnapshot()
	s.Services[svc.Name] = svc
	var list []core.Endpoint
	for _, ep := range eps {
		list = append(list, core.Endpoint{IP: ep.Addr(), Port: int32(ep.Port()), Ready: true, Serving: true})
	}
	core.SortEndpoints(list)
	if len(list) > 0 {
		s.Endpoints[svc.Name] = list
	}
	return s
}

func tcpService(name core.ServicePortName) *core.ServicePort {
	return &core.ServicePort{Name: name, ClusterIP: netip.MustParseAddr("198.19.0.10"), Port: 80, Protocol: v1.ProtocolTCP}
}

var fullSync = core.ChangeSet{Full: true, Services: sets.New[types.NamespacedName]()}

func newTestProxier(t *testing.T, rec *recorder) *Proxier {
	t.Helper()
	p, err := New(Config{Backend: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Cleanup() })
	return p
}

func syncOK(t *testing.T, p *Proxier, snap *core.Snapshot) {
	t.Helper()
	if err := p.Sync(snap, fullSync); err != nil {
		t.Fatal(err)
	}
}

func dialProxy(t *testing.T, p *Proxier, name core.ServicePortName) *net.TCPConn {
	t.Helper()
	port, ok := p.ProxyPort(name)
	if !ok {
		t.Fatalf("no proxy socket for %s", name)
	}
	c, err := net.DialTimeout("tcp4", net.JoinHostPort("127.0.0.1", itoa(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn)
}

func greeting(t *testing.T, c net.Conn) string {
	t.Helper()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading greeting: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestTCPRoundRobinThroughProxySocket(t *testing.T) {
	bs := []*echoBackend{startEcho(t, "a"), startEcho(t, "b"), startEcho(t, "c")}
	p := newTestProxier(t, &recorder{})
	syncOK(t, p, snapshotWith(tcpService(svcA), bs[0].addr(), bs[1].addr(), bs[2].addr()))
	order := map[netip.AddrPort]string{}
	for _, b := range bs {
		order[b.addr()] = b.name
	}
	var want []string
	for _, ep := range p.Balancer().Endpoints(svcA) {
		want = append(want, order[ep])
	}
	var got []string
	for i := 0; i < 6; i++ {
		c := dialProxy(t, p, svcA)
		got = append(got, greeting(t, c))
		c.Close()
	}
	if strings.Join(got, ",") != strings.Join(append(want, want...), ",") {
		t.Errorf("backends in connection order %v, want %v twice", got, want)
	}
}

func TestTCPRetryHidesRefusingEndpoint(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	p := newTestProxier(t, &recorder{})
	syncOK(t, p, snapshotWith(tcpService(svcA), a.addr(), refusedAddr(t), b.addr()))
	for i := 0; i < 9; i++ {
		c := dialProxy(t, p, svcA)
		if g := greeting(t, c); g != "a" && g != "b" {
			t.Errorf("connection %d: greeting %q", i, g)
		}
		c.Close()
	}
}

func TestTCPHalfCloseAndBulkData(t *testing.T) {
	a := startEcho(t, "a")
	p := newTestProxier(t, &recorder{})
	syncOK(t, p, snapshotWith(tcpService(svcA), a.addr()))
	c := dialProxy(t, p, svcA)
	defer c.Close()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() {
		c.Write(payload)
		// The backend only closes after it sees our FIN: the proxy must
		// pass the half-close on, and keep the other direction open.
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	want := append([]byte("a\n"), payload...)
	if !bytes.Equal(got, want) {
		t.Errorf("echo returned %d bytes, want %d (greeting + payload)", len(got), len(want))
	}
}

func TestConnectionsToRemovedEndpointAreClosed(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	p := newTestProxier(t, &recorder{})
	syncOK(t, p, snapshotWith(tcpService(svcA), a.addr(), b.addr()))
	conns := map[string]*net.TCPConn{}
	for i := 0; i < 2; i++ {
		c := dialProxy(t, p, svcA)
		conns[greeting(t, c)] = c
		defer c.Close()
	}
	// b goes away; a's connection must survive, b's must be cut.
	syncOK(t, p, snapshotWith(tcpService(svcA), a.addr()))
	conns["b"].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns["b"].Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection to the removed endpoint still open (read: %v)", err)
	}
	if _, err := conns["a"].Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conns["a"]).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Errorf("connection to the remaining endpoint: %q, %v", line, err)
	}
}

func TestDeletedServiceClosesListenerAndRules(t *testing.T) {
	a := startEcho(t, "a")
	rec := &recorder{}
	p := newTestProxier(t, rec)
	syncOK(t, p, snapshotWith(tcpService(svcA), a.addr()))
	port, _ := p.ProxyPort(svcA)
	if !strings.Contains(rec.last(), "198.19.0.10/32") {
		t.Fatalf("no portal rule for the VIP in\n%s", rec.last())
	}
	held := dialProxy(t, p, svcA)
	defer held.Close()
	greeting(t, held)

	syncOK(t, p, core.NewSnapshot())
	if _, ok := p.ProxyPort(svcA); ok {
		t.Error("proxy socket still known after the service was deleted")
	}
	if strings.Contains(rec.last(), "198.19.0.10") {
		t.Errorf("rules still mention the VIP:\n%s", rec.last())
	}
	if c, err := net.DialTimeout("tcp4", net.JoinHostPort("127.0.0.1", itoa(port)), time.Second); err == nil {
		c.Close()
		t.Errorf("proxy port %d still accepts connections", port)
	}
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection of the deleted service still open (read: %v)", err)
	}
}

func TestUDPAssociationsAndReplySource(t *testing.T) {
	// Two UDP echo backends that prefix their name.
	var eps []netip.AddrPort
	for _, name := range []string{"a", "b"} {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		eps = append(eps, netip.MustParseAddrPort(pc.LocalAddr().String()))
		go func(name string) {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte(name+" "), buf[:n]...), from)
			}
		}(name)
	}
	svc := &core.ServicePort{Name: svcB, ClusterIP: netip.MustParseAddr("198.19.0.11"), Port: 53, Protocol: v1.ProtocolUDP}
	svc.Name.Protocol = v1.ProtocolUDP
	rec := &recorder{}
	p, err := New(Config{Backend: rec, UDPIdleTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup()
	syncOK(t, p, snapshotWith(svc, eps...))
	port, _ := p.ProxyPort(svc.Name)

	// A connected client only accepts replies from the address it sent
	// to: this fails unless the reply leaves from the delivery address.
	ask := func(c net.Conn, msg string) string {
		t.Helper()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no reply to %q: %v", msg, err)
		}
		return string(buf[:n])
	}
	c1, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	first := ask(c1, "x")
	// Same client: same association, same backend.
	for i := 0; i < 3; i++ {
		if got := ask(c1, "x"); got != first {
			t.Errorf("same client got %q then %q: association not kept", first, got)
		}
	}
	// A new client gets the next backend.
	c2, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := ask(c2, "x"); got == first {
		t.Errorf("second client got the same backend (%q): no round-robin", got)
	}
	// Idle associations end.
	time.Sleep(600 * time.Millisecond)
	p.mu.Lock()
	us := p.sockets[svc.Name].sock.(*udpSocket)
	p.mu.Unlock()
	us.mu.Lock()
	left := len(us.assocs)
	us.mu.Unlock()
	if left != 0 {
		t.Errorf("%d associations left after the idle timeout", left)
	}
	// And a client coming back after that is still served.
	if got := ask(c1, "y"); !strings.HasSuffix(got, " y") {
		t.Errorf("after idle expiry: %q", got)
	}
}

func TestRulesBatch(t *testing.T) {
	rec := &recorder{}
	p := newTestProxier(t, rec)
	svc := tcpService(svcA)
	svc.NodePort = 30080
	svc.ExternalIPs = []netip.Addr{netip.MustParseAddr("198.18.0.200")}
	svc.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.18.16.1")}
	svc.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}
	ep := netip.MustParseAddrPort("198.18.64.2:9000")
	syncOK(t, p, snapshotWith(svc, ep))
	port, _ := p.ProxyPort(svcA)
	got := rec.last()
	want := `*nat
:PM-PORTALS-CONTAINER - [0:0]
:PM-PORTALS-HOST - [0:0]
:PM-NODEPORT-CONTAINER - [0:0]
:PM-NODEPORT-HOST - [0:0]
-I PREROUTING 1 -m comment --comment "proxymodes userspace portals" -j PM-PORTALS-CONTAINER
-I PREROUTING 2 -m addrtype --dst-type LOCAL -m comment --comment "proxymodes userspace nodeports" -j PM-NODEPORT-CONTAINER
-I OUTPUT 1 -m comment --comment "proxymodes userspace portals" -j PM-PORTALS-HOST
-I OUTPUT 2 -m addrtype --dst-type LOCAL -m comment --comment "proxymodes userspace nodeports" -j PM-NODEPORT-HOST
-A PM-PORTALS-CONTAINER -m comment --comment "ns/a:p cluster IP" -p tcp -m tcp -d 198.19.0.10/32 --dport 80 -j REDIRECT --to-ports {PORT}
-A PM-PORTALS-HOST -m comment --comment "ns/a:p cluster IP" -p tcp -m tcp -d 198.19.0.10/32 --dport 80 -j REDIRECT --to-ports {PORT}
-A PM-PORTALS-CONTAINER -m comment --comment "ns/a:p external IP" -p tcp -m tcp -d 198.18.0.200/32 --dport 80 -j REDIRECT --to-ports {PORT}
-A PM-PORTALS-HOST -m comment --comment "ns/a:p external IP" -p tcp -m tcp -d 198.18.0.200/32 --dport 80 -j REDIRECT --to-ports {PORT}
-A PM-PORTALS-CONTAINER -m comment --comment "ns/a:p load balancer IP" -p tcp -m tcp -d 198.18.16.1/32 --dport 80 -j REDIRECT --to-ports {PORT}
-A PM-PORTALS-HOST -m comment --comment "ns/a:p load balancer IP" -p tcp -m tcp -d 198.18.16.1/32 --dport 80 -j REDIRECT --to-ports {PORT}
-A PM-NODEPORT-CONTAINER -m comment --comment "ns/a:p node port" -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports {PORT}
-A PM-NODEPORT-HOST -m comment --comment "ns/a:p node port" -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports {PORT}
COMMIT
*filter
:PM-PORTALS-REJECT - [0:0]
-I FORWARD 1 -m conntrack --ctstate NEW -m comment --comment "proxymodes userspace services without endpoints" -j PM-PORTALS-REJECT
-I OUTPUT 1 -m conntrack --ctstate NEW -m comment --comment "proxymodes userspace services without endpoints" -j PM-PORTALS-REJECT
COMMIT
`
	want = strings.ReplaceAll(want, "{PORT}", itoa(port))
	if got != want {
		t.Errorf("batch:\n%s\nwant:\n%s", got, want)
	}
	// Without endpoints the service port is rejected, not redirected.
	if err := p.Sync(snapshotWith(svc), core.ChangeSet{Services: sets.New(svcA.NamespacedName)}); err != nil {
		t.Fatal(err)
	}
	noEps := rec.last()
	if strings.Contains(noEps, "REDIRECT") || !strings.Contains(noEps, "-A PM-PORTALS-REJECT -m comment --comment \"ns/a:p cluster IP\" -p tcp -m tcp -d 198.19.0.10/32 --dport 80 -j REJECT") {
		t.Errorf("a service port without endpoints should be rejected and not redirected:\n%s", noEps)
	}
	// A partial sync does not touch the jumps.
	if err := p.Sync(snapshotWith(svc), core.ChangeSet{Services: sets.New(svcA.NamespacedName)}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rec.last(), "-I ") {
		t.Errorf("partial sync rewrote jumps:\n%s", rec.last())
	}
	// A failed restore makes the next sync full again.
	rec.fail = io.ErrUnexpectedEOF
	if err := p.Sync(snapshotWith(svc), core.ChangeSet{Services: sets.New(svcA.NamespacedName)}); err == nil {
		t.Fatal("sync with a failing restore succeeded")
	}
	rec.fail = nil
	if err := p.Sync(snapshotWith(svc), core.ChangeSet{Services: sets.New(svcA.NamespacedName)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rec.last(), "-I PREROUTING 1") {
		t.Errorf("sync after a failure did not re-check jumps:\n%s", rec.last())
	}
}

func TestCleanupRules(t *testing.T) {
	saved := `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PM-NODEPORT-CONTAINER - [0:0]
:PM-PORTALS-CONTAINER - [0:0]
:OTHER - [0:0]
-A PREROUTING -m comment --comment "proxymodes userspace portals" -j PM-PORTALS-CONTAINER
-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "proxymodes userspace nodeports" -j PM-NODEPORT-CONTAINER
-A PREROUTING -j OTHER
-A PM-PORTALS-CONTAINER -d 198.19.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000
COMMIT
`
	tables, err := iptables.ParseSave([]byte(saved))
	if err != nil {
		t.Fatal(err)
	}
	got := string(renderCleanup(tables))
	want := `*nat
:PM-PORTALS-CONTAINER - [0:0]
:PM-NODEPORT-CONTAINER - [0:0]
-D PREROUTING -m comment --comment "proxymodes userspace portals" -j PM-PORTALS-CONTAINER
-D PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "proxymodes userspace nodeports" -j PM-NODEPORT-CONTAINER
-X PM-PORTALS-CONTAINER
-X PM-NODEPORT-CONTAINER
COMMIT
`
	if got != want {
		t.Errorf("cleanup batch:\n%s\nwant:\n%s", got, want)
	}
	empty, _ := iptables.ParseSave([]byte("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"))
	if b := renderCleanup(empty); b != nil {
		t.Errorf("cleanup with nothing to remove wrote:\n%s", b)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func itoa(i int) string { return strconv.Itoa(i) }
