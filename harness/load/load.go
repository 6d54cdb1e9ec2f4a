// Package load sends HTTP load with hey's requester from inside a lab
// namespace and returns its latency percentiles and rate. The requester has
// no dialer hook, so it runs in a helper process started in the namespace
// (the "load" agent role); that works the same for namespaces in the host
// kernel and in a user-mode Linux guest, through the lab's Exec.
package load

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rakyll/hey/requester"

	"github.com/proxymodes/proxymodes/harness/agent"
)

// Role is the agent role that runs the requester.
const Role = "load"

func init() { agent.Register(Role, main) }

// Options bound one load run in count and in time.
type Options struct {
	// URLs are the targets, taken in turn by successive requests: a load
	// over many Services measures the expected cost over their positions
	// in the proxy's rules, not the cost of one position.
	URLs        []string
	Requests    int // total requests (default 2000)
	Concurrency int // parallel workers (default 8)
	// Timeout bounds one request (default 20s, hey's own). A slow request
	// belongs in the latency tail, not among the failures: with 2 s, one
	// of 300 requests in a UML guest under make test's load went uncounted
	// and failed the point (bench smoke, 2026-12-07).
	Timeout time.Duration
	// MaxDuration stops the run early; requests not sent by then are not
	// counted (default 60s).
	MaxDuration time.Duration
	// KeepAlive reuses connections. Off by default: a proxy's cost is
	// mostly per connection (rule traversal, DNAT, a userspace accept), so
	// every request opens one.
	KeepAlive bool
}

func (o *Options) defaults() {
	if o.Requests == 0 {
		o.Requests = 2000
	}
	if o.Concurrency == 0 {
		o.Concurrency = 8
	}
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Second
	}
	if o.MaxDuration == 0 {
		o.MaxDuration = time.Minute
	}
}

// Target is one URL's share of a run.
type Target struct {
	URL      string        `json:"url"`
	Requests int           `json:"requests"`
	Errors   int           `json:"errors"`
	P50      time.Duration `json:"p50"`
}

// Result is one run's outcome. Latencies are over successful requests.
type Result struct {
	// Targets has one entry per URL, in the order given.
	Targets  []Target `json:"targets"`
	Requests int      `json:"requests"` // completed, with or without error
	Errors   int      `json:"errors"`   // requests that got no response
	// ErrorKinds counts the requester's errors by message (hey's "Error
	// distribution"), so that a lost request says why it was lost.
	ErrorKinds map[string]int `json:"errorKinds,omitempty"`
	Duration   time.Duration  `json:"duration"`
	RPS        float64        `json:"rps"` // successful requests per second
	P50        time.Duration  `json:"p50"`
	P90        time.Duration  `json:"p90"`
	P99        time.Duration  `json:"p99"`
}

// Execer runs a command in a lab namespace (local.Lab has it).
type Execer interface {
	Exec(ctx context.Context, ns string, argv ...string) (string, error)
}

const marker = "proxymodes-load-result: "

// Run sends the load from namespace ns. This binary must call agent.Init
// first thing in main (or TestMain) and link this package.
func Run(ctx context.Context, ex Execer, ns string, o Options) (Result, error) {
	o.defaults()
	self, err := os.Executable()
	if err != nil {
		return Result{}, err
	}
	argv := append([]string{"env"}, agent.Env("", Role)...)
	if len(o.URLs) == 0 {
		return Result{}, errors.New("load: no target URL")
	}
	argv = append(argv, self,
		"-url", strings.Join(o.URLs, ","), "-n", strconv.Itoa(o.Requests), "-c", strconv.Itoa(o.Concurrency),
		"-timeout", o.Timeout.String(), "-max", o.MaxDuration.String(), "-keepalive="+strconv.FormatBool(o.KeepAlive))
	ctx, cancel := context.WithTimeout(ctx, o.MaxDuration+30*time.Second)
	defer cancel()
	out, err := ex.Exec(ctx, ns, argv...)
	if err != nil {
		return Result{}, fmt.Errorf("load from %s to %s: %w", ns, targets(o.URLs), err)
	}
	i := strings.LastIndex(out, marker)
	if i < 0 {
		return Result{}, fmt.Errorf("load from %s to %s: no result in its output:\n%s", ns, targets(o.URLs), out)
	}
	var r Result
	line, _, _ := strings.Cut(out[i+len(marker):], "\n")
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return Result{}, fmt.Errorf("load result %q: %w", line, err)
	}
	return r, nil
}

// targets names a run's URLs in an error: the first and how many.
func targets(urls []string) string {
	if len(urls) == 1 {
		return urls[0]
	}
	return fmt.Sprintf("%s and %d more", urls[0], len(urls)-1)
}

func main(args []string) int {
	fs := flag.NewFlagSet(Role, flag.ContinueOnError)
	var o Options
	fs.Func("url", "target URLs, comma-separated, taken in turn", func(s string) error {
		o.URLs = strings.Split(s, ",")
		return nil
	})
	fs.IntVar(&o.Requests, "n", 2000, "requests")
	fs.IntVar(&o.Concurrency, "c", 8, "concurrency")
	fs.DurationVar(&o.Timeout, "timeout", 2*time.Second, "per-request timeout")
	fs.DurationVar(&o.MaxDuration, "max", time.Minute, "stop after this long")
	fs.BoolVar(&o.KeepAlive, "keepalive", false, "reuse connections")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	r, err := generate(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		return 1
	}
	b, _ := json.Marshal(r)
	fmt.Printf("%s%s\n", marker, b)
	return 0
}

// generate runs the requester here and now. hey's own report rounds
// latencies to 100µs, too coarse for a lab where a request takes 200µs, so
// each request carries a trace that records its latency at full
// resolution: from asking for a connection to the first response byte.
func generate(o Options) (Result, error) {
	if o.Requests < 1 || o.Concurrency < 1 || o.Concurrency > o.Requests {
		return Result{}, fmt.Errorf("need 1 <= concurrency (%d) <= requests (%d)", o.Concurrency, o.Requests)
	}
	if len(o.URLs) == 0 || len(o.URLs) > o.Requests {
		return Result{}, fmt.Errorf("need 1 <= targets (%d) <= requests (%d)", len(o.URLs), o.Requests)
	}
	var report strings.Builder
	template, err := http.NewRequest(http.MethodGet, o.URLs[0], nil)
	if err != nil {
		return Result{}, err
	}
	rec := newRecorder(o.URLs)
	w := &requester.Work{
		// The requester reads Request's host even when RequestFunc makes
		// the requests.
		Request:     template,
		RequestFunc: rec.next,
		N:           o.Requests, C: o.Concurrency,
		Timeout:           int((o.Timeout + time.Second - 1) / time.Second),
		DisableKeepAlives: !o.KeepAlive, DisableCompression: true, DisableRedirects: true,
		// Its report is read only for the error messages, which it
		// keeps nowhere else.
		Writer: &report,
	}
	w.Init()
	stop := time.AfterFunc(o.MaxDuration, w.Stop)
	start := time.Now()
	w.Run()
	elapsed := time.Since(start)
	stop.Stop()
	r, err := rec.result(elapsed)
	r.ErrorKinds = errorKinds(report.String())
	return r, err
}

// errorKinds reads the "Error distribution" of hey's summary: one
// "  [count]\tmessage" line per distinct error.
func errorKinds(report string) map[string]int {
	_, dist, ok := strings.Cut(report, "Error distribution:")
	if !ok {
		return nil
	}
	kinds := map[string]int{}
	for _, line := range strings.Split(dist, "\n") {
		count, msg, ok := strings.Cut(strings.TrimSpace(line), "]\t")
		n, err := strconv.Atoi(strings.TrimPrefix(count, "["))
		if !ok || err != nil {
			continue
		}
		kinds[msg] += n
	}
	return kinds
}

// recorder collects per-request latencies from the requester's workers,
// per target.
type recorder struct {
	urls []string

	mu      sync.Mutex
	turn    int
	started []int
	lats    [][]time.Duration
}

func newRecorder(urls []string) *recorder {
	return &recorder{urls: urls, started: make([]int, len(urls)), lats: make([][]time.Duration, len(urls))}
}

// next makes the next request, to the next target in turn.
func (rec *recorder) next() *http.Request {
	rec.mu.Lock()
	t := rec.turn % len(rec.urls)
	rec.turn++
	rec.started[t]++
	rec.mu.Unlock()
	var t0 time.Time
	trace := &httptrace.ClientTrace{
		GetConn: func(string) { t0 = time.Now() },
		GotFirstResponseByte: func() {
			d := time.Since(t0)
			rec.mu.Lock()
			rec.lats[t] = append(rec.lats[t], d)
			rec.mu.Unlock()
		},
	}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, rec.urls[t], nil)
	return req
}

func (rec *recorder) result(elapsed time.Duration) (Result, error) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := Result{Duration: elapsed}
	var all []time.Duration
	for i, u := range rec.urls {
		r.Targets = append(r.Targets, Target{URL: u, Requests: rec.started[i], Errors: rec.started[i] - len(rec.lats[i]), P50: Quantile(rec.lats[i], 0.50)})
		r.Requests += rec.started[i]
		all = append(all, rec.lats[i]...)
	}
	r.Errors = r.Requests - len(all)
	if len(all) == 0 {
		return r, fmt.Errorf("none of %d requests got a response", r.Requests)
	}
	r.P50, r.P90, r.P99 = Quantile(all, 0.50), Quantile(all, 0.90), Quantile(all, 0.99)
	r.RPS = float64(len(all)) / elapsed.Seconds()
	return r, nil
}

// Quantile is the nearest-rank quantile of durations (any order; 0 for
// none).
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
