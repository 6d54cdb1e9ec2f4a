package userspace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxymodes/proxymodes/proxier/core"
)

var (
	svcA = core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "a"}, Port: "p", Protocol: v1.ProtocolTCP}
	svcB = core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "b"}, Port: "p", Protocol: v1.ProtocolTCP}

	ep1 = netip.MustParseAddrPort("198.18.64.11:9000")
	ep2 = netip.MustParseAddrPort("198.18.64.12:9000")
	ep3 = netip.MustParseAddrPort("198.18.65.13:9000")

	client1 = netip.MustParseAddr("198.18.64.101")
	client2 = netip.MustParseAddr("198.18.64.102")
)

func picks(t *testing.T, lb *Balancer, name core.ServicePortName, client netip.Addr, n int) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	for i := 0; i < n; i++ {
		ep, err := lb.Next(name, client, false)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ep)
	}
	return out
}

func TestRoundRobinOrder(t *testing.T) {
	lb := NewBalancer(nil)
	lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, false, 0)
	lb.Update(svcB, []netip.AddrPort{ep3, ep1}, false, 0)

	// Two clients share one rotation: round-robin is per service port,
	// not per client.
	got := append(picks(t, lb, svcA, client1, 4), picks(t, lb, svcA, client2, 3)...)
	want := []netip.AddrPort{ep1, ep2, ep3, ep1, ep2, ep3, ep1}
	if !slices.Equal(got, want) {
		t.Errorf("svc a picks = %v, want %v", got, want)
	}
	// Another service port has its own rotation.
	if got, want := picks(t, lb, svcB, client1, 3), []netip.AddrPort{ep3, ep1, ep3}; !slices.Equal(got, want) {
		t.Errorf("svc b picks = %v, want %v", got, want)
	}

	// An unchanged endpoint list keeps the position (syncs happen all
	// the time and must not skew the rotation).
	lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, false, 0)
	if got, want := picks(t, lb, svcA, client1, 2), []netip.AddrPort{ep2, ep3}; !slices.Equal(got, want) {
		t.Errorf("after a no-op update picks = %v, want %v", got, want)
	}
	// A changed list restarts at its first endpoint.
	lb.Update(svcA, []netip.AddrPort{ep2, ep3}, false, 0)
	if got, want := picks(t, lb, svcA, client1, 3), []netip.AddrPort{ep2, ep3, ep2}; !slices.Equal(got, want) {
		t.Errorf("after removing %v picks = %v, want %v", ep1, got, want)
	}

	lb.Update(svcA, nil, false, 0)
	if _, err := lb.Next(svcA, client1, false); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("no endpoints: err = %v, want ErrNoEndpoints", err)
	}
	lb.Delete(svcB)
	if _, err := lb.Next(svcB, client1, false); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("deleted service: err = %v, want ErrNoEndpoints", err)
	}
}

func TestClientIPAffinityAndExpiry(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1_000_000, 0))
	lb := NewBalancer(clk)
	const ttl = 30 * time.Second
	lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, true, ttl)

	first := picks(t, lb, svcA, client1, 1)[0]
	second := picks(t, lb, svcA, client2, 1)[0]
	if first == second {
		t.Fatalf("two new clients got the same endpoint %v; the second should get the next one", first)
	}
	// Sticky while used more often than the timeout, even across many
	// timeouts in total.
	for i := 0; i < 10; i++ {
		clk.SetTime(clk.Now().Add(ttl - time.Second))
		if got := picks(t, lb, svcA, client1, 1)[0]; got != first {
			t.Fatalf("pick %d after %v idle: %v, want sticky %v", i, ttl-time.Second, got, first)
		}
	}
	// A sync with the same endpoints keeps affinity.
	lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, true, ttl)
	if got := picks(t, lb, svcA, client1, 1)[0]; got != first {
		t.Errorf("after a no-op update: %v, want sticky %v", got, first)
	}
	// Idle longer than the timeout: the client gets the next round-robin
	// endpoint, and sticks to that one.
	clk.SetTime(clk.Now().Add(ttl + time.Second))
	next := picks(t, lb, svcA, client1, 1)[0]
	if next == first {
		t.Errorf("after %v idle the client still sticks to %v", ttl+time.Second, first)
	}
	if got := picks(t, lb, svcA, client1, 1)[0]; got != next {
		t.Errorf("after expiry the new affinity did not hold: %v, want %v", got, next)
	}
	// resetAffinity (the endpoint failed) moves the client on.
	moved, _ := lb.Next(svcA, client1, true)
	if moved == next {
		t.Errorf("reset affinity returned the failed endpoint %v again", next)
	}
	if got := picks(t, lb, svcA, client1, 1)[0]; got != moved {
		t.Errorf("after reset the client sticks to %v, want %v", got, moved)
	}
	// Removing the endpoint a client sticks to forgets that client.
	var rest []netip.AddrPort
	for _, ep := range []netip.AddrPort{ep1, ep2, ep3} {
		if ep != moved {
			rest = append(rest, ep)
		}
	}
	lb.Update(svcA, rest, true, ttl)
	if got := picks(t, lb, svcA, client1, 1)[0]; got == moved {
		t.Errorf("client still sent to removed endpoint %v", moved)
	}
	// Turning affinity off goes back to plain round-robin.
	lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, false, 0)
	if got, want := picks(t, lb, svcA, client1, 3), []netip.AddrPort{ep1, ep2, ep3}; !slices.Equal(got, want) {
		t.Errorf("without affinity picks = %v, want %v", got, want)
	}
}

// dialRecord is one attempt seen by a fake dialer.
type dialRecord struct {
	ep      netip.AddrPort
	timeout time.Duration
}

func (d dialRecord) String() string { return fmt.Sprintf("%v/%v", d.ep, d.timeout) }

// fakeDialer fails for the endpoints in fail and records every attempt.
type fakeDialer struct {
	fail  map[netip.AddrPort]bool
	calls []dialRecord
	// during, if set, runs inside every dial: other connections using the
	// balancer meanwhile.
	during func()
}

func (f *fakeDialer) dial(_ context.Context, _ string, ep netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	f.calls = append(f.calls, dialRecord{ep, timeout})
	if f.during != nil {
		f.during()
	}
	if f.fail[ep] {
		return nil, fmt.Errorf("dial %v: i/o timeout", ep)
	}
	c1, c2 := net.Pipe()
	c2.Close()
	return c1, nil
}

// TestRetrySkipsFailedEndpointUnderConcurrency: while one connection waits
// on a dead endpoint, two others take the next round-robin slots, so the
// shared position points at the dead endpoint again. The retry must go to
// an endpoint this connection has not tried.
func TestRetrySkipsFailedEndpointUnderConcurrency(t *testing.T) {
	lb := NewBalancer(nil)
	lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, false, time.Hour)
	d := &fakeDialer{fail: map[netip.AddrPort]bool{ep1: true}}
	d.during = func() {
		for i := 0; i < 2; i++ {
			if _, err := lb.Next(svcA, client1, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	conn, ep, err := connect(context.Background(), lb, d.dial, svcA, "tcp", client1)
	if err != nil {
		t.Fatalf("connect failed although two endpoints work: %v (attempts %v)", err, d.calls)
	}
	conn.Close()
	if ep == ep1 || len(d.calls) != 2 || d.calls[1].ep == ep1 {
		t.Errorf("attempts %v ended on %v; want one failed attempt on %v, then a different endpoint", d.calls, ep, ep1)
	}
}

func TestRetrySequence(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		fail     []netip.AddrPort
		affinity bool
		want     []dialRecord
		wantEP   netip.AddrPort
		wantErr  bool
	}{
		{name: "first works", want: []dialRecord{{ep1, 250 * ms}}, wantEP: ep1},
		{name: "one fails", fail: []netip.AddrPort{ep1},
			want: []dialRecord{{ep1, 250 * ms}, {ep2, 500 * ms}}, wantEP: ep2},
		{name: "two fail", fail: []netip.AddrPort{ep1, ep2},
			want: []dialRecord{{ep1, 250 * ms}, {ep2, 500 * ms}, {ep3, time.Second}}, wantEP: ep3},
		{name: "all fail", fail: []netip.AddrPort{ep1, ep2, ep3}, wantErr: true,
			want: []dialRecord{{ep1, 250 * ms}, {ep2, 500 * ms}, {ep3, time.Second}, {ep1, 2 * time.Second}}},
		{name: "affinity endpoint fails", fail: []netip.AddrPort{ep1}, affinity: true,
			want: []dialRecord{{ep1, 250 * ms}, {ep2, 500 * ms}}, wantEP: ep2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lb := NewBalancer(nil)
			lb.Update(svcA, []netip.AddrPort{ep1, ep2, ep3}, tc.affinity, time.Hour)
			d := &fakeDialer{fail: map[netip.AddrPort]bool{}}
			for _, ep := range tc.fail {
				d.fail[ep] = true
			}
			conn, ep, err := connect(context.Background(), lb, d.dial, svcA, "tcp", client1)
			if conn != nil {
				conn.Close()
			}
			if fmt.Sprint(d.calls) != fmt.Sprint(tc.want) {
				t.Errorf("dial attempts %v, want %v", d.calls, tc.want)
			}
			if tc.wantErr {
				if err == nil {
					t.Errorf("all endpoints fail but connect succeeded with %v", ep)
				}
				return
			}
			if err != nil || ep != tc.wantEP {
				t.Fatalf("connect = %v, %v; want %v", ep, err, tc.wantEP)
			}
			if tc.affinity {
				// The failed endpoint's affinity was replaced by the
				// one that worked.
				d.calls = nil
				conn, ep, err := connect(context.Background(), lb, d.dial, svcA, "tcp", client1)
				if conn != nil {
					conn.Close()
				}
				if err != nil || ep != tc.wantEP || len(d.calls) != 1 {
					t.Errorf("next connection from the client: %v, %v after %v; want %v at once", ep, err, d.calls, tc.wantEP)
				}
			}
		})
	}
}

func TestRetryStopsWithoutEndpoints(t *testing.T) {
	lb := NewBalancer(nil)
	d := &fakeDialer{}
	if _, _, err := connect(context.Background(), lb, d.dial, svcA, "tcp", client1); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("err = %v, want ErrNoEndpoints", err)
	}
	if len(d.calls) != 0 {
		t.Errorf("dialled %v without endpoints", d.calls)
	}
}
