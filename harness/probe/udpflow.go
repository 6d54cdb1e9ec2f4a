package probe

import (
	"context"
	"net"
	"net/netip"
	"time"

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
