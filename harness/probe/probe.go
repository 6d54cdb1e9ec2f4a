// Package probe opens fresh connections to an address from inside a lab
// namespace and records which backend answered. Every connection is new (no
// keep-alive), because proxy modes choose a backend per connection.
package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/netlab"
)

// Proto is how a probe talks to the target.
type Proto string

const (
	TCP  Proto = "tcp"  // connect and read the backend's greeting line
	UDP  Proto = "udp"  // send a datagram and read the reply
	HTTP Proto = "http" // GET / with a new connection
	// Health GETs / and keeps the status and body whatever they are: a
	// health check port answers, not a backend.
	Health Proto = "health"
)

// Target is where to probe from and to.
type Target struct {
	// NS is the named network namespace to probe from (a pod's or a node's).
	NS    string
	Addr  netip.AddrPort
	Proto Proto
	// Source optionally pins the local address (for affinity checks).
	Source netip.Addr
	// Settling marks a probe that only asks whether the proxier has
	// programmed Addr yet; its connections take source ports from
	// SettlingPorts (see there for why).
	Settling bool `json:",omitempty"`
}

func (t Target) String() string {
	return fmt.Sprintf("%s://%s from %s", t.Proto, t.Addr, t.NS)
}

// Result is one connection's outcome.
type Result struct {
	Backend string // pod name that answered
	Client  string // client address the backend saw
	Err     error
	Latency time.Duration
	// Status and Body are a Health probe's answer.
	Status int
	Body   string
}

// Summary aggregates many results.
type Summary struct {
	Target  Target
	Results []Result
}

// Counts is how many connections each backend served.
func (s Summary) Counts() map[string]int {
	m := map[string]int{}
	for _, r := range s.Results {
		if r.Err == nil {
			m[r.Backend]++
		}
	}
	return m
}

// Errors returns the failed results.
func (s Summary) Errors() []error {
	var out []error
	for _, r := range s.Results {
		if r.Err != nil {
			out = append(out, r.Err)
		}
	}
	return out
}

// Sequence lists the backends in connection order ("" for failures).
func (s Summary) Sequence() []string {
	out := make([]string, len(s.Results))
	for i, r := range s.Results {
		out[i] = r.Backend
	}
	return out
}

func (s Summary) String() string {
	c := s.Counts()
	var names []string
	for n := range c {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d connections", s.Target, len(s.Results))
	for _, n := range names {
		fmt.Fprintf(&b, ", %s=%d", n, c[n])
	}
	if e := s.Errors(); len(e) > 0 {
		fmt.Fprintf(&b, ", %d errors (first: %v)", len(e), e[0])
	}
	return b.String()
}

// Run opens n connections one after another, each bounded by timeout, and
// stops early only if ctx ends.
func Run(ctx context.Context, t Target, n int, timeout time.Duration) Summary {
	s := Summary{Target: t}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		s.Results = append(s.Results, Once(ctx, t, timeout))
	}
	return s
}

// GreetingTimeout bounds the wait for a backend's answer on a TCP or HTTP
// connection that is already established. The probe's own timeout bounds
// what the proxy decides: the connection's setup (a SYN the proxier drops,
// rejects or sends to a dead endpoint) and a UDP reply. Once the handshake
// is done the proxy has chosen, and what is left is the backend process
// getting the CPU to write its line. On a loaded node that can take longer
// than a setup bound sized for a prompt failure: CI, 2026-12-07, kind under
// make test's three lanes, one of 14 concurrent affinity probes got no
// greeting within 2 s although its connection was established to the right
// backend (conntrack ASSURED, no retransmission); its RST shows the line
// arrived after the client had given up. A proxier that breaks an
// established connection still fails: the greeting never comes, or a
// reset ends it.
const GreetingTimeout = 10 * time.Second

// Once opens one connection. timeout bounds its setup (TCP, HTTP) or the
// whole exchange (UDP); GreetingTimeout bounds the answer on an
// established connection. Both end early if ctx does.
func Once(ctx context.Context, t Target, timeout time.Duration) Result {
	start := time.Now()
	var line string
	var err error
	switch t.Proto {
	case TCP:
		line, err = tcpOnce(ctx, t, timeout)
	case UDP:
		uctx, cancel := context.WithTimeout(ctx, timeout)
		line, err = udpOnce(uctx, t)
		cancel()
	case HTTP:
		line, err = httpOnce(ctx, t, timeout)
	case Health:
		r := Result{}
		r.Status, r.Body, r.Err = httpGet(ctx, t, timeout)
		r.Latency = time.Since(start)
		return r
	default:
		err = fmt.Errorf("unknown probe protocol %q (use tcp, udp, http or health)", t.Proto)
	}
	r := Result{Latency: time.Since(start), Err: err}
	if err == nil {
		r.Backend, r.Client, r.Err = backend.ParseReply(line)
	}
	return r
}

// Dial connects from inside the target's namespace. The socket keeps that
// namespace for its whole life, so only the dial itself runs there.
func Dial(ctx context.Context, t Target, network string) (net.Conn, error) {
	if t.Settling {
		return dialSettling(ctx, t, network)
	}
	return dialFrom(ctx, t, network, 0)
}

func dialFrom(ctx context.Context, t Target, network string, port int) (net.Conn, error) {
	d := net.Dialer{}
	if t.Source.IsValid() || port != 0 {
		var ip net.IP
		if t.Source.IsValid() {
			ip = t.Source.AsSlice()
		}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: ip, Port: port}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: ip, Port: port}
		}
	}
	return netlab.Dialer(t.NS, &d)(ctx, network, t.Addr.String())
}

func tcpOnce(ctx context.Context, t Target, timeout time.Duration) (string, error) {
	conn, err := dialWithin(ctx, t, "tcp", timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(deadline(ctx, GreetingTimeout))
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	return bufio.NewReader(conn).ReadString('\n')
}

func dialWithin(ctx context.Context, t Target, network string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return Dial(ctx, t, network)
}

// UDPSends is how often a UDP probe sends its datagram, evenly spread
// over its timeout, until a reply comes. A DNS client does the same: UDP
// may lose a datagram, and in the UML guests under make test's load one of
// about 3000 went unanswered (CI, 2026-12-04, kube-proxy ipvs: IPVS counted
// 86 datagrams in and 85 out). Every send uses the one socket, so one
// source port, one conntrack entry and one backend: what the probe
// reports (the backend and the source it saw) is the flow's either way.
// A refusal (ICMP) ends the probe at once.
const UDPSends = 3

func udpOnce(ctx context.Context, t Target) (string, error) {
	conn, err := Dial(ctx, t, "udp")
	if err != nil {
		return "", err
	}
	defer conn.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Minute)
	}
	every := time.Until(dl) / UDPSends
	buf := make([]byte, 512)
	for i := 1; ; i++ {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return "", err
		}
		wait := dl
		if i < UDPSends {
			wait = time.Now().Add(every)
		}
		conn.SetReadDeadline(wait)
		n, err := conn.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		var ne net.Error
		if i >= UDPSends || !errors.As(err, &ne) || !ne.Timeout() || !time.Now().Before(dl) {
			return "", err
		}
	}
}

func httpOnce(ctx context.Context, t Target, timeout time.Duration) (string, error) {
	status, body, err := httpGet(ctx, t, timeout)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("HTTP %d from %s", status, t.Addr)
	}
	return body, err
}

// httpGet GETs / on a new connection whose setup timeout bounds; the answer
// has GreetingTimeout more.
func httpGet(ctx context.Context, t Target, timeout time.Duration) (int, string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		Proxy:             nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialWithin(ctx, t, network, timeout)
		},
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout+GreetingTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.Addr.String()+"/", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return 0, "", err
	}
	return resp.StatusCode, string(body), nil
}
