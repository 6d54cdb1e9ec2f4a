package server

import (
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// loopbackPorts binds each health check port to a free loopback port and
// remembers where, so tests need no fixed ports.
type loopbackPorts struct {
	mu    sync.Mutex
	addrs map[int32]string
}

func (l *loopbackPorts) listen(port int32) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.addrs[port] = ln.Addr().String()
	l.mu.Unlock()
	return ln, nil
}

func (l *loopbackPorts) get(t *testing.T, port int32) (int, ServiceHealthReply, error) {
	t.Helper()
	l.mu.Lock()
	addr := l.addrs[port]
	l.mu.Unlock()
	var r ServiceHealthReply
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/")
	if err != nil {
		return 0, r, err
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	err = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r, err
}

// lbSnapshot has one LoadBalancer Service port (health check port 31000)
// with the given endpoints on this node and one on the other.
func lbSnapshot(local ...string) *core.Snapshot {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "lb", PortName: "http", ClusterIP: "198.19.0.10", Port: 80, NodePort: 30080,
		ExternalLocal: true, HealthCheckNodePort: 31000, Endpoints: local, Remote: []string{"198.18.65.9:8080"}})
	return b.Snap
}

func TestServiceHealthCountsThisNodesReadyEndpoints(t *testing.T) {
	ports := &loopbackPorts{addrs: map[int32]string{}}
	clk := clocktesting.NewFakePassiveClock(time.Now())
	proxy := NewHealth(clk, time.Minute)
	proxy.Updated(clk.Now())
	s := NewServiceHealth(proxy, ports.listen)
	defer s.Close()

	// Two ports of one endpoint count once; a terminating one not at all.
	snap := lbSnapshot("198.18.64.1:8080", "198.18.64.2:8080")
	b := &testsnap.Builder{Snap: snap}
	b.Add(testsnap.Port{Name: "lb", PortName: "alt", ClusterIP: "198.19.0.10", Port: 81, NodePort: 30081,
		ExternalLocal: true, HealthCheckNodePort: 31000, Endpoints: []string{"198.18.64.1:8081", "198.18.64.3:8081"}})
	for n, eps := range snap.Endpoints {
		for i := range eps {
			if eps[i].IP.String() == "198.18.64.3" {
				eps[i].Ready, eps[i].Terminating = false, true
			}
		}
		snap.Endpoints[n] = eps
	}
	if err := s.Sync(snap); err != nil {
		t.Fatal(err)
	}
	code, r, err := ports.get(t, 31000)
	if err != nil || code != http.StatusOK || r.LocalEndpoints != 2 || !r.ServiceProxyHealthy ||
		r.Service.Namespace != "ns" || r.Service.Name != "lb" {
		t.Fatalf("two ready local endpoints: HTTP %d %+v (err %v), want 200 with localEndpoints 2 for ns/lb", code, r, err)
	}

	// Its endpoints leave this node: 503, count 0.
	if err := s.Sync(lbSnapshot()); err != nil {
		t.Fatal(err)
	}
	if code, r, err := ports.get(t, 31000); err != nil || code != http.StatusServiceUnavailable || r.LocalEndpoints != 0 {
		t.Fatalf("no local endpoint: HTTP %d %+v (err %v), want 503 with localEndpoints 0", code, r, err)
	}

	// One comes back, but the proxier has stopped syncing: still 503.
	if err := s.Sync(lbSnapshot("198.18.64.1:8080")); err != nil {
		t.Fatal(err)
	}
	clk.SetTime(clk.Now().Add(2 * time.Minute))
	if code, r, err := ports.get(t, 31000); err != nil || code != http.StatusServiceUnavailable || r.LocalEndpoints != 1 || r.ServiceProxyHealthy {
		t.Fatalf("an unhealthy proxier: HTTP %d %+v (err %v), want 503, localEndpoints 1, serviceProxyHealthy false", code, r, err)
	}
	proxy.Updated(clk.Now())
	if code, _, err := ports.get(t, 31000); err != nil || code != http.StatusOK {
		t.Fatalf("healthy again: HTTP %d (err %v), want 200", code, err)
	}

	// The Service goes: its port closes.
	if err := s.Sync(testsnap.New().Snap); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ports.get(t, 31000); err == nil {
		t.Fatal("the port of a deleted Service still answers")
	}
}

// A port taken by something else is an error naming it, and is retried.
func TestServiceHealthRetriesATakenPort(t *testing.T) {
	ports := &loopbackPorts{addrs: map[int32]string{}}
	taken := true
	s := NewServiceHealth(nil, func(port int32) (net.Listener, error) {
		if taken {
			return nil, &net.OpError{Op: "listen", Err: errAddrInUse}
		}
		return ports.listen(port)
	})
	defer s.Close()
	if err := s.Sync(lbSnapshot("198.18.64.1:8080")); err == nil {
		t.Fatal("a taken port: no error")
	}
	taken = false
	if err := s.Sync(lbSnapshot("198.18.64.1:8080")); err != nil {
		t.Fatal(err)
	}
	if code, _, err := ports.get(t, 31000); err != nil || code != http.StatusOK {
		t.Fatalf("after the retry: HTTP %d (err %v), want 200", code, err)
	}
}

var errAddrInUse = &net.AddrError{Err: "address already in use", Addr: ":31000"}
