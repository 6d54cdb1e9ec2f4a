package server

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Health answers /healthz: healthy once a sync has succeeded, for Timeout
// after each success. The runner syncs at least every --sync-period, so
// a healthy proxier refreshes it well before the timeout.
type Health struct {
	clock   clock.PassiveClock
	timeout time.Duration

	mu          sync.Mutex
	lastUpdated time.Time
}

// NewHealth returns a Health with the given timeout; a nil clock means the
// real one.
func NewHealth(c clock.PassiveClock, timeout time.Duration) *Health {
	if c == nil {
		c = clock.RealClock{}
	}
	return &Health{clock: c, timeout: timeout}
}

// Updated records a successful sync at t.
func (h *Health) Updated(t time.Time) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.lastUpdated = t
	h.mu.Unlock()
}

// Healthy reports the current state and the last success time.
func (h *Health) Healthy() (bool, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lastUpdated.IsZero() {
		return false, h.lastUpdated
	}
	return h.clock.Since(h.lastUpdated) <= h.timeout, h.lastUpdated
}

// ServeHTTP implements http.Handler with kube-proxy's JSON body.
func (h *Health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	ok, last := h.Healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	body := map[string]any{"currentTime": h.clock.Now().UTC().Format(time.RFC3339Nano), "healthy": ok}
	if !last.IsZero() {
		body["lastUpdated"] = last.UTC().Format(time.RFC3339Nano)
	}
	_ = json.NewEncoder(w).Encode(body)
}

// Listen binds addr now (so a taken port fails at start-up) and serves
// handler on it until ctx is done. An empty addr disables the server.
func Listen(ctx context.Context, addr string, handler http.Handler) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "HTTP server stopped", "address", addr)
		}
	}()
	klog.InfoS("Serving", "address", ln.Addr().String())
	return nil
}

// MetricsMux serves /metrics from reg, /healthz too when h is set, and
// /proxyMode with mode: what kube-proxy answers on its metrics port, so
// that tools asking a node which mode its proxy runs get the same answer
// from ours.
func MetricsMux(reg *prometheus.Registry, h *Health, mode string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if h != nil {
		mux.Handle("/healthz", h)
	}
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write([]byte(mode))
	})
	return mux
}

// HealthMux serves /healthz and /livez from h.
func HealthMux(h *Health) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/healthz", h)
	mux.Handle("/livez", h)
	return mux
}
