package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/netlab"
)

// greetAfter serves TCP on loopback and greets each connection after delay
// (never, if delay < 0).
func greetAfter(t *testing.T, delay time.Duration) Target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if delay < 0 {
					c.SetReadDeadline(time.Now().Add(time.Minute))
					c.Read(make([]byte, 1))
					return
				}
				time.Sleep(delay)
				c.Write([]byte(backend.Reply("pod-t", c.RemoteAddr())))
			}()
		}
	}()
	return Target{NS: netlab.HostNS, Addr: netip.MustParseAddrPort(ln.Addr().String()), Proto: TCP}
}

// The probe's timeout bounds the setup the proxy decides; a backend slow to
// greet on an established connection is waited for (GreetingTimeout).
func TestGreetingOutlastsSetupTimeout(t *testing.T) {
	r := Once(context.Background(), greetAfter(t, 1200*time.Millisecond), 300*time.Millisecond)
	if r.Err != nil || r.Backend != "pod-t" {
		t.Fatalf("a greeting 1.2 s after an established connection, setup timeout 300ms: %q, %v", r.Backend, r.Err)
	}
	if r.Latency < 1200*time.Millisecond {
		t.Errorf("latency %s, want at least the greeting's delay", r.Latency)
	}
}

// The caller's context still ends the wait for a greeting at once.
func TestGreetingWaitEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := Once(ctx, greetAfter(t, -1), 300*time.Millisecond)
	if r.Err == nil {
		t.Fatal("a backend that never greets: no error")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the probe outlived its context by %s", took-400*time.Millisecond)
	}
}

// A health probe reports the answer, whatever its status.
func TestHealthProbeKeepsStatusAndBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"localEndpoints": 0}`))
	}))
	defer srv.Close()
	target := Target{NS: netlab.HostNS, Addr: netip.MustParseAddrPort(srv.Listener.Addr().String()), Proto: Health}
	r := Once(context.Background(), target, time.Second)
	if r.Err != nil || r.Status != http.StatusServiceUnavailable || r.Body != `{"localEndpoints": 0}` {
		t.Fatalf("got status %d body %q err %v", r.Status, r.Body, r.Err)
	}
	// Through the wire form, as kind and existing clusters return it.
	back := DecodeResults(EncodeResults([]Result{r}))[0]
	if back.Status != r.Status || back.Body != r.Body {
		t.Errorf("the wire form lost the answer: %+v", back)
	}
	target.Proto = HTTP
	if r := Once(context.Background(), target, time.Second); r.Err == nil {
		t.Errorf("an HTTP probe answered 503: no error")
	}
}
