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

// UDPFlow is one UDP socket in a namespace that keeps its source port, so
// that a conntrack entry for it lives as long as the flow does.
type UDPFlow struct{ conn net.Conn }

// OpenUDPFlow opens a flow from namespace ns to dst (in this kernel).
func OpenUDPFlow(ctx context.Context, ns string, dst netip.AddrPort) (*UDPFlow, error) {
	conn, err := Dial(ctx, Target{NS: ns, Addr: dst, Proto: UDP}, "udp")
	if err != nil {
		return nil, err
	}
	return &UDPFlow{conn}, nil
}

// Exchange sends a datagram and returns the name of the backend that
// answered.
func (f *UDPFlow) Exchange(ctx context.Context, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	f.conn.SetDeadline(deadline)
	if _, err := f.conn.Write([]byte("probe\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := f.conn.Read(buf)
	if err != nil {
		return "", err
	}
	name, _, err := backend.ParseReply(string(buf[:n]))
	return name, err
}

func (f *UDPFlow) Close() error { return f.conn.Close() }

// String is the flow's local address.
func (f *UDPFlow) String() string { return f.conn.LocalAddr().String() }

// FlowRole holds one UDPFlow in the namespace it was started in, for
// providers that reach that namespace only through a command (kind runs it
// with `docker exec -i ... ip netns exec`). Its argument is the
// destination; it prints "ok <local address>", then answers each stdin
// line "<timeout>" (a Go duration) with a FlowReply in JSON, and closes
// the flow at end of input.
const FlowRole = "udpflow"

// FlowReply is one exchange's outcome.
type FlowReply struct {
	Backend string   `json:"backend,omitempty"`
	Err     *WireErr `json:"err,omitempty"`
}

func init() { agent.Register(FlowRole, flowMain) }

func flowMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "udpflow: want the destination ip:port")
		return 2
	}
	dst, err := netip.ParseAddrPort(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpflow:", err)
		return 2
	}
	f, err := OpenUDPFlow(context.Background(), "", dst)
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpflow:", err)
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
