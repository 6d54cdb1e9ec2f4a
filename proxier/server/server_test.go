package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/iptables"
	"github.com/proxymodes/proxymodes/proxier/metrics"
	"github.com/proxymodes/proxymodes/proxier/tracker"
)

// recordingMode remembers what it was asked to sync and can fail.
type recordingMode struct {
	mu    sync.Mutex
	calls []core.ChangeSet
	snaps []*core.Snapshot
	fail  error
}

func (m *recordingMode) Name() string   { return "recording" }
func (m *recordingMode) Cleanup() error { return nil }
func (m *recordingMode) Sync(s *core.Snapshot, c core.ChangeSet) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, c)
	m.snaps = append(m.snaps, s)
	return m.fail
}

func (m *recordingMode) last() (core.ChangeSet, *core.Snapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[len(m.calls)-1], m.snaps[len(m.snaps)-1]
}

type stubCleaner struct{ got []core.ChangeSet }

func (s *stubCleaner) ClearStale(_ *core.Snapshot, c core.ChangeSet) error {
	s.got = append(s.got, c)
	return nil
}

func svcObj(name, ip string) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
}

func sliceObj(svc string, trigger time.Time, ips ...string) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svc + "-1", Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	if !trigger.IsZero() {
		es.Annotations = map[string]string{tracker.TriggerTimeAnnotation: trigger.Format(time.RFC3339Nano)}
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{ip}})
	}
	return es
}

func TestSyncOnceFailureForcesFullAndKeepsTriggers(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	mode := &recordingMode{}
	m := metrics.New()
	health := NewHealth(clk, time.Minute)
	ct := &stubCleaner{}
	p, err := New(Config{Mode: mode, SyncPeriod: time.Hour, Metrics: m, Health: health, Conntrack: ct, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	tr := p.Tracker()
	tr.UpsertService(svcObj("a", "198.19.0.1"))
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if c, _ := mode.last(); !c.Full {
		t.Errorf("first sync was not full")
	}
	if ok, _ := health.Healthy(); !ok {
		t.Errorf("not healthy after a successful sync")
	}

	// An endpoint change with a trigger time; the sync fails.
	trigger := clk.Now().Add(-2 * time.Second)
	tr.UpsertEndpointSlice(sliceObj("a", trigger, "198.18.64.1"))
	mode.fail = errors.New("restore failed")
	clk.Step(time.Second)
	if err := p.SyncOnce(); err == nil {
		t.Fatal("failure not reported")
	}
	if c, _ := mode.last(); c.Full || c.Services.Len() != 1 {
		t.Errorf("second sync should be partial with one change: %+v", c)
	}
	if got := counterValue(t, m, "kubeproxy_sync_proxy_rules_failures_total"); got != 1 {
		t.Errorf("sync failures metric %v, want 1", got)
	}
	if got := histogramCount(t, m); got != 0 {
		t.Errorf("network programming observed %d times before the change was applied", got)
	}

	// The retry must be full, and carries the trigger time to success.
	mode.fail = nil
	clk.Step(time.Second)
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if c, _ := mode.last(); !c.Full {
		t.Errorf("sync after a failure was not full")
	}
	if got := histogramCount(t, m); got != 1 {
		t.Errorf("network programming observations %d, want 1 (kept across the failure)", got)
	}
	if got := histogramSum(t, m); got < 3.9 || got > 4.1 {
		t.Errorf("network programming latency %.2fs, want 4s (trigger 2s before, 2 x 1s steps)", got)
	}
	// Next sync: partial again.
	if err := p.SyncOnce(); err != nil {
		t.Fatal(err)
	}
	if c, _ := mode.last(); c.Full {
		t.Errorf("sync after recovery was full")
	}
	// Health expires when syncs stop succeeding.
	clk.Step(2 * time.Minute)
	if ok, _ := health.Healthy(); ok {
		t.Errorf("still healthy 2 minutes after the last success")
	}
}

func TestPeriodicFullSync(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	mode := &recordingMode{}
	p, err := New(Config{Mode: mode, SyncPeriod: 30 * time.Second, FullSyncPeriod: 30 * time.Second, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	var fulls []bool
	for i := 0; i < 4; i++ {
		if err := p.SyncOnce(); err != nil {
			t.Fatal(err)
		}
		c, _ := mode.last()
		fulls = append(fulls, c.Full)
		clk.Step(15 * time.Second)
	}
	// t=0 full, t=15 partial, t=30 full (30s since last full), t=45 partial
	if want := []bool{true, false, true, false}; !equalBools(fulls, want) {
		t.Errorf("full syncs %v, want %v", fulls, want)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func counterValue(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func histogramCount(t *testing.T, m *metrics.Metrics) uint64 {
	t.Helper()
	return histogram(t, m).GetSampleCount()
}

func histogramSum(t *testing.T, m *metrics.Metrics) float64 {
	t.Helper()
	return histogram(t, m).GetSampleSum()
}

func histogram(t *testing.T, m *metrics.Metrics) interface {
	GetSampleCount() uint64
	GetSampleSum() float64
} {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kubeproxy_network_programming_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatal("histogram not found")
	return nil
}

// running starts p and, when the test ends, stops it and checks that Run
// returned cleanly; the context it returns ends with the test.
func running(t *testing.T, p *Proxier) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ctx
}

// labelFilteringClient is a fake clientset whose watches honour label
// selectors as the API server does. The stock fake filters only lists, so
// an object created after the informer listed reached it regardless of
// its labels, and the headless check below failed about once in 70 runs.
func labelFilteringClient() *fake.Clientset {
	client := fake.NewSimpleClientset()
	client.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		wa := action.(k8stesting.WatchActionImpl)
		w, err := client.Tracker().Watch(wa.GetResource(), wa.GetNamespace(), wa.GetListOptions())
		if err != nil {
			return true, nil, err
		}
		sel := wa.GetWatchRestrictions().Labels
		if sel == nil || sel.Empty() {
			return true, w, nil
		}
		return true, watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
			m, err := meta.Accessor(e.Object)
			return e, err != nil || sel.Matches(labels.Set(m.GetLabels()))
		}), nil
	})
	return client
}

// TestRunWithInformersAndIptablesFake runs the whole proxier against a
// fake API server and the iptables mode over the fake backend: a Service
// created through the API becomes rules that route its VIP to its pod.
func TestRunWithInformersAndIptablesFake(t *testing.T) {
	client := labelFilteringClient()
	fakeIPT := iptables.NewFake()
	m := metrics.New()
	mode, err := iptables.New(iptables.Config{Backend: fakeIPT, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	health := NewHealth(nil, time.Minute)
	p, err := New(Config{Client: client, NodeName: "node-1", Mode: mode, MinSyncPeriod: 10 * time.Millisecond,
		SyncPeriod: time.Minute, Metrics: m, Health: health})
	if err != nil {
		t.Fatal(err)
	}
	ctx := running(t, p)

	if _, err := client.CoreV1().Services("ns").Create(ctx, svcObj("web", "198.19.0.10"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, sliceObj("web", time.Now(), "198.18.64.10"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A headless Service is not ours.
	headless := svcObj("hl", "198.19.0.11")
	headless.Labels = map[string]string{labelHeadless: ""}
	if _, err := client.CoreV1().Services("ns").Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	pkt := iptables.Packet{Protocol: "tcp", Src: netip.MustParseAddr("198.18.64.99"), Dst: netip.MustParseAddr("198.19.0.10"), DstPort: 80}
	deadline := time.Now().Add(10 * time.Second)
	for {
		outs, err := fakeIPT.Trace("nat", "PREROUTING", pkt)
		if err == nil && len(outs) == 1 && outs[0].DNAT == "198.18.64.10:8080" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VIP never routed to the pod; last trace %v (err %v)\n%s", outs, err, fakeIPT.Dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The rules show as soon as the mode's Sync returns, before SyncOnce
	// records health and metrics; Syncs takes the lock that sync holds,
	// so it returns once that sync has finished.
	p.Syncs()
	if strings.Contains(fakeIPT.Dump(), "ns/hl") {
		t.Errorf("headless service got rules")
	}
	if ok, _ := health.Healthy(); !ok {
		t.Errorf("not healthy after syncing")
	}

	// The metrics endpoint shows kube-proxy's names.
	srv := httptest.NewServer(MetricsMux(m.Registry, health, "iptables"))
	defer srv.Close()
	body := get(t, srv.URL+"/metrics")
	for _, name := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
		"kubeproxy_network_programming_duration_seconds_count 1",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		`kubeproxy_sync_proxy_rules_iptables_total{table="nat"}`,
		"proxymodes_proxier_service_ports 1",
		"proxymodes_proxier_endpoints 1",
		"kubeproxy_sync_proxy_rules_failures_total 0",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	if b := get(t, srv.URL+"/healthz"); !strings.Contains(b, `"healthy":true`) {
		t.Errorf("/healthz: %s", b)
	}
	if b := get(t, srv.URL+"/proxyMode"); b != "iptables" {
		t.Errorf("/proxyMode: %q, want kube-proxy's plain \"iptables\"", b)
	}

	// Deleting the Service removes its rules.
	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for strings.Contains(fakeIPT.Dump(), "ns/web") {
		if time.Now().After(deadline) {
			t.Fatalf("rules of a deleted service remain:\n%s", fakeIPT.Dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestHealthz(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(100, 0))
	h := NewHealth(clk, 10*time.Second)
	srv := httptest.NewServer(HealthMux(h))
	defer srv.Close()
	code := func() int {
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := code(); c != http.StatusServiceUnavailable {
		t.Errorf("before any sync: %d, want 503", c)
	}
	h.Updated(clk.Now())
	if c := code(); c != http.StatusOK {
		t.Errorf("after a sync: %d, want 200", c)
	}
	clk.Step(11 * time.Second)
	if c := code(); c != http.StatusServiceUnavailable {
		t.Errorf("11s after the last sync (timeout 10s): %d, want 503", c)
	}
}

// TestFirstSyncSeesEveryService: the first sync after a start must hold
// every Service the API had. With a wait on the informers' own HasSynced
// it ran while the handlers were still delivering the initial list, and a
// restarted proxier deleted the rules of the Services not delivered yet.
func TestFirstSyncSeesEveryService(t *testing.T) {
	const n = 200
	client := labelFilteringClient()
	ctx := context.Background()
	for i := range n {
		svc := svcObj(fmt.Sprintf("s%d", i), fmt.Sprintf("198.19.%d.%d", i/250, 1+i%250))
		if _, err := client.CoreV1().Services("ns").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Slow handlers, as a tracker busy with 10k objects is.
	unwrapped := wrapHandler
	t.Cleanup(func() { wrapHandler = unwrapped })
	wrapHandler = func(h cache.ResourceEventHandler) cache.ResourceEventHandler {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { time.Sleep(2 * time.Millisecond); h.OnAdd(obj, false) },
			UpdateFunc: h.OnUpdate,
			DeleteFunc: h.OnDelete,
		}
	}
	mode := &recordingMode{}
	p, err := New(Config{Client: client, NodeName: "node-1", Mode: mode, MinSyncPeriod: time.Hour, SyncPeriod: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	running(t, p)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mode.mu.Lock()
		synced := len(mode.snaps)
		mode.mu.Unlock()
		if synced > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no sync within 10 s of the start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mode.mu.Lock()
	first := len(mode.snaps[0].Services)
	mode.mu.Unlock()
	if first != n {
		t.Errorf("the first sync held %d of the %d Services the API had: it ran before the handlers delivered the initial list", first, n)
	}
}
