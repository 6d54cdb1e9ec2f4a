package userspace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
)

// DialTimeouts are the dial timeouts of the successive attempts to reach a
// backend for one client connection, as in kube-proxy's userspace mode:
// each failed attempt moves on to the next endpoint with a longer timeout.
var DialTimeouts = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}

// DialFunc opens a connection to a backend within timeout. network is
// "tcp" or "udp".
type DialFunc func(ctx context.Context, network string, ep netip.AddrPort, timeout time.Duration) (net.Conn, error)

// Dial is the real DialFunc.
func Dial(ctx context.Context, network string, ep netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, network, ep.String())
}

// connect asks the balancer for an endpoint and dials it, moving on to the
// next endpoint with the next of DialTimeouts when a dial fails. After a
// failure the client's affinity is reset, so its next pick (and the
// affinity recorded for it) is the next round-robin endpoint.
func connect(ctx context.Context, lb *Balancer, dial DialFunc, name core.ServicePortName, network string, client netip.Addr) (net.Conn, netip.AddrPort, error) {
	resetAffinity := false
	var errs []error
	tried := map[netip.AddrPort]bool{}
	for _, timeout := range DialTimeouts {
		ep, err := lb.Next(name, client, resetAffinity)
		// Concurrent connections share the round-robin position, so "next"
		// can be an endpoint this connection already failed on; skip those
		// while untried ones remain, or one dead backend could use up all
		// attempts while others work.
		n := len(lb.Endpoints(name))
		for skips := 0; err == nil && tried[ep] && len(tried) < n && skips < n; skips++ {
			ep, err = lb.Next(name, client, true)
		}
		if err != nil {
			return nil, netip.AddrPort{}, fmt.Errorf("%s: %w", name, err)
		}
		tried[ep] = true
		conn, err := dial(ctx, network, ep, timeout)
		if err == nil {
			return conn, ep, nil
		}
		klog.V(3).InfoS("Dialling endpoint failed; trying the next one", "service", name, "endpoint", ep, "timeout", timeout, "err", err)
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
		resetAffinity = true
		if fault.Current() == fault.RetryDisabled {
			break
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("%s: no endpoint answered after %d attempts: %w", name, len(errs), errors.Join(errs...))
}
