package probe

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/backend"
)

// Flow is one connection that lives across exchanges: a UDP socket that
// keeps its source port, so that its conntrack entry lives as long as the
// flow does, or an established TCP connection, whose backend echoes what
// it is sent. Both ask whether state the proxier set up for a flow
// outlives a change (a removed endpoint, a restarted proxier).
type Flow struct {
	conn  net.Conn
	proto Proto
	// TCP: the backend that greeted the connection, and its reader.
	backend string
	in      *bufio.Reader
}

// flowPayload is what each exchange sends; a TCP backend echoes it.
const flowPayload = "probe\n"

// OpenFlow opens a flow from namespace ns to dst (in this kernel). A TCP
// flow reads the backend's greeting, within timeout.
func OpenFlow(ctx context.Context, ns string, proto Proto, dst netip.AddrPort, timeout time.Duration) (*Flow, error) {
	if proto != TCP && proto != UDP {
		return nil, fmt.Errorf("a flow is TCP or UDP, not %q", proto)
	}
	conn, err := Dial(ctx, Target{NS: ns, Addr: dst, Proto: proto}, string(proto))
	if err != nil {
		return nil, err
	}
	f := &Flow{conn: conn, proto: proto}
	if proto == UDP {
		return f, nil
	}
	f.in = bufio.NewReader(conn)
	conn.SetDeadline(deadline(ctx, timeout))
	line, err := f.in.ReadString('\n')
	if err == nil {
		f.backend, _, err = backend.ParseReply(line)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("TCP flow %s -> %s: no greeting: %w", conn.LocalAddr(), dst, err)
	}
	return f, nil
}

func deadline(ctx context.Context, timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

// Exchange sends a datagram (UDP) or a line (TCP) and returns the name of
// the backend that answered: for TCP the one that greeted the connection,
// once it has echoed the line.
func (f *Flow) Exchange(ctx context.Context, timeout time.Duration) (string, error) {
	f.conn.SetDeadline(deadline(ctx, timeout))
	if _, err := f.conn.Write([]byte(flowPayload)); err != nil {
		return "", err
	}
	if f.proto == TCP {
		line, err := f.in.ReadString('\n')
		if err != nil {
			return "", err
		}
		if line != flowPayload {
			return "", fmt.Errorf("TCP flow %s: sent %q, the backend echoed %q", f, flowPayload, line)
		}
		return f.backend, nil
	}
	buf := make([]byte, 512)
	n, err := f.conn.Read(buf)
	if err != nil {
		return "", err
	}
	name, _, err := backend.ParseReply(string(buf[:n]))
	return name, err
}

func (f *Flow) Close() error { return f.conn.Close() }

// String is the flow's local address.
func (f *Flow) String() string { return f.conn.LocalAddr().String() }

// FlowRole holds one Flow in the namespace it was started in, for
// providers that reach that namespace only through a command (kind runs it
// with `docker exec -i ... ip netns exec`). Its arguments are the protocol
// and the destination; it prints "ok <local address>", then answers each
// stdin line "<timeout>" (a Go duration) with a FlowReply in JSON, and
// closes the flow at end of input.
const FlowRole = "flow"

// FlowOpenTimeout bounds a TCP flow's wait for its greeting.
const FlowOpenTimeout = 5 * time.Second

// FlowReply is one exchange's outcome.
type FlowReply struct {
	Backend string   `json:"backend,omitempty"`
	Err     *WireErr `json:"err,omitempty"`
}

func init() { agent.Register(FlowRole, flowMain) }

func flowMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "flow: want the protocol (tcp or udp) and the destination ip:port")
		return 2
	}
	dst, err := netip.ParseAddrPort(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "flow:", err)
		return 2
	}
	f, err := OpenFlow(context.Background(), "", Proto(args[0]), dst, FlowOpenTimeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flow:", err)
		return 1
	}
	defer f.Close()
	fmt.Println("ok", f)
	in := bufio.NewScanner(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for in.Scan() {
		timeout, err := time.ParseDuration(strings.TrimSpace(in.Text()))
		if err != nil {
			enc.Encode(FlowReply{Err: ToWire(err)})
			continue
		}
		name, err := f.Exchange(context.Background(), timeout)
		enc.Encode(FlowReply{Backend: name, Err: ToWire(err)})
	}
	return 0
}
