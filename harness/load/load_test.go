package load

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
)

func TestMain(m *testing.M) {
	agent.Init()
	os.Exit(m.Run())
}

// hostExec runs the command in this namespace, as the lab would in one of
// its own.
type hostExec struct{}

func (hostExec) Exec(ctx context.Context, _ string, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	return string(out), err
}

func TestRunMeasuresEveryRequest(t *testing.T) {
	const delay = 2 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		w.Write([]byte("ok"))
	}))
	defer srv.Close()
	r, err := Run(context.Background(), hostExec{}, "", Options{URLs: []string{srv.URL}, Requests: 200, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 200 || r.Errors != 0 {
		t.Errorf("requests %d errors %d, want 200 and 0", r.Requests, r.Errors)
	}
	// Every request waits for the handler, so no percentile can be
	// below its delay; a result in hey's 100µs steps would still pass
	// this, so resolution is checked below with the recorder directly.
	if r.P50 < delay || r.P90 < r.P50 || r.P99 < r.P90 {
		t.Errorf("percentiles p50 %v p90 %v p99 %v: want delay %v <= p50 <= p90 <= p99", r.P50, r.P90, r.P99, delay)
	}
	if r.RPS <= 0 || r.RPS > 4/delay.Seconds() {
		t.Errorf("rate %.0f/s: 4 workers waiting %v each cannot exceed %.0f/s", r.RPS, delay, 4/delay.Seconds())
	}
}

func TestRunCountsRequestsWithoutResponse(t *testing.T) {
	// A port nobody listens on: every connection is refused.
	l := httptest.NewServer(http.NotFoundHandler())
	url := l.URL
	l.Close()
	_, err := Run(context.Background(), hostExec{}, "", Options{URLs: []string{url}, Requests: 20, Concurrency: 2, Timeout: time.Second})
	if err == nil {
		t.Fatal("load against a closed port succeeded")
	}
}

// A run that loses requests says why: hey keeps its errors only in its
// report, which Run reads.
func TestRunNamesWhyRequestsFailed(t *testing.T) {
	live := httptest.NewServer(http.NotFoundHandler())
	defer live.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	r, err := Run(context.Background(), hostExec{}, "", Options{URLs: []string{live.URL, deadURL}, Requests: 20, Concurrency: 2, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for msg, n := range r.ErrorKinds {
		if strings.Contains(msg, "connection refused") {
			refused += n
		}
	}
	if r.Errors != 10 || refused != 10 || r.Targets[1].Errors != 10 {
		t.Errorf("errors %d, by kind %v, per target %+v: want the dead target's 10 requests, each refused", r.Errors, r.ErrorKinds, r.Targets)
	}
}

func TestRecorderKeepsMicroseconds(t *testing.T) {
	rec := newRecorder([]string{"u"})
	rec.started[0] = 4
	rec.lats[0] = []time.Duration{210 * time.Microsecond, 230 * time.Microsecond, 250 * time.Microsecond}
	r, err := rec.result(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.P50 != 230*time.Microsecond || r.P99 != 250*time.Microsecond || r.Errors != 1 || r.RPS != 3 {
		t.Errorf("got %+v, want p50 230µs, p99 250µs, 1 error, 3 req/s", r)
	}
}

func TestBadOptions(t *testing.T) {
	if _, err := generate(Options{URLs: []string{"http://198.18.0.1/"}, Requests: 2, Concurrency: 3}); err == nil {
		t.Error("concurrency above requests was accepted")
	}
}

func TestQuantileIsNearestRank(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 3}, {0.99, 5}, {0.2, 1}, {0.21, 2}} {
		if got := Quantile(ds, tc.q); got != tc.want {
			t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if Quantile(nil, 0.5) != 0 {
		t.Error("Quantile of nothing is not 0")
	}
}

// Requests take the targets in turn, and each target's share is reported
// on its own: a slower target shows in its p50, not only in the pooled one.
func TestRunSpreadsOverTargets(t *testing.T) {
	server := func(delay time.Duration) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(delay)
			w.Write([]byte("ok"))
		}))
	}
	fast, slow := server(time.Millisecond), server(8*time.Millisecond)
	defer fast.Close()
	defer slow.Close()
	r, err := Run(context.Background(), hostExec{}, "", Options{URLs: []string{fast.URL, slow.URL}, Requests: 100, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Targets) != 2 || r.Targets[0].URL != fast.URL || r.Targets[1].URL != slow.URL {
		t.Fatalf("targets %+v", r.Targets)
	}
	for _, tg := range r.Targets {
		if tg.Requests != 50 || tg.Errors != 0 {
			t.Errorf("%s: %d requests, %d errors; want 50 and 0 (taken in turn)", tg.URL, tg.Requests, tg.Errors)
		}
	}
	if r.Targets[1].P50 < 8*time.Millisecond || r.Targets[0].P50 >= r.Targets[1].P50 {
		t.Errorf("p50 fast %v, slow %v: want the slow target's own p50 >= 8ms and above the fast one's", r.Targets[0].P50, r.Targets[1].P50)
	}
	if r.Requests != 100 {
		t.Errorf("requests %d, want 100", r.Requests)
	}
	if _, err := Run(context.Background(), hostExec{}, "", Options{Requests: 10}); err == nil {
		t.Error("a run without targets was accepted")
	}
	if _, err := generate(Options{URLs: []string{"a", "b", "c"}, Requests: 2, Concurrency: 1}); err == nil {
		t.Error("more targets than requests was accepted")
	}
}
