package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// ServiceHealth serves the healthCheckNodePort of every Service that has
// one (a LoadBalancer Service with externalTrafficPolicy Local), as
// kube-proxy's service health server does: a load balancer asks each node
// and sends traffic only to those answering 200, the nodes with a ready
// endpoint of the Service. The body is kube-proxy's, so tools written
// against it read ours.
type ServiceHealth struct {
	proxy  *Health
	listen func(port int32) (net.Listener, error)

	mu       sync.Mutex
	services map[types.NamespacedName]*healthService
}

type healthService struct {
	name      types.NamespacedName
	port      int32
	srv       *http.Server // nil until the port could be bound
	endpoints int          // this node's ready endpoints (distinct IPs)
}

// NewServiceHealth returns a server whose answers also say whether proxy
// (may be nil) is healthy. listen binds a port; nil binds it on every
// address of the network namespace, as kube-proxy does by default.
func NewServiceHealth(proxy *Health, listen func(port int32) (net.Listener, error)) *ServiceHealth {
	if listen == nil {
		listen = func(port int32) (net.Listener, error) {
			return net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		}
	}
	return &ServiceHealth{proxy: proxy, listen: listen, services: map[types.NamespacedName]*healthService{}}
}

// LocalReadyEndpoints counts, per Service, the distinct addresses of its
// ready endpoints on node. A terminating endpoint may still serve, but a
// node whose endpoints are all terminating must fail the check so that the
// load balancer drains it (kube-proxy counts the same way).
func LocalReadyEndpoints(snap *core.Snapshot) map[types.NamespacedName]int {
	ips := map[types.NamespacedName]sets.Set[string]{}
	for name, eps := range snap.Endpoints {
		for _, ep := range eps {
			if !ep.Ready || ep.NodeName != snap.NodeName {
				continue
			}
			if ips[name.NamespacedName] == nil {
				ips[name.NamespacedName] = sets.New[string]()
			}
			ips[name.NamespacedName].Insert(ep.IP.String())
		}
	}
	out := make(map[types.NamespacedName]int, len(ips))
	for n, s := range ips {
		out[n] = s.Len()
	}
	return out
}

// Sync opens the ports of Services new to snap, closes those of Services
// gone or without a port any more, and updates every count. A port that
// cannot be bound is retried at the next Sync; the error says which.
func (s *ServiceHealth) Sync(snap *core.Snapshot) error {
	want := map[types.NamespacedName]int32{}
	for _, sp := range snap.Services {
		if sp.HealthCheckNodePort != 0 {
			want[sp.Name.NamespacedName] = sp.HealthCheckNodePort
		}
	}
	counts := LocalReadyEndpoints(snap)
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, hs := range s.services {
		if want[name] != hs.port {
			hs.close()
			delete(s.services, name)
		}
	}
	var errs []error
	for name, port := range want {
		hs := s.services[name]
		if hs == nil {
			hs = &healthService{name: name, port: port}
			s.services[name] = hs
		}
		hs.endpoints = counts[name]
		if hs.srv != nil {
			continue
		}
		ln, err := s.listen(port)
		if err != nil {
			errs = append(errs, fmt.Errorf("health check port %d of Service %s: %w", port, name, err))
			continue
		}
		hs.srv = &http.Server{Handler: s.handler(name), ReadHeaderTimeout: 10 * time.Second}
		go func(srv *http.Server) {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Health check server stopped", "service", name, "port", port)
			}
		}(hs.srv)
		klog.V(2).InfoS("Serving health checks", "service", name, "port", port)
	}
	return errors.Join(errs...)
}

// Close stops every port.
func (s *ServiceHealth) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, hs := range s.services {
		hs.close()
		delete(s.services, name)
	}
}

// close ends the port at once: a graceful Shutdown would wait for handlers
// that wait for the lock its caller holds.
func (hs *healthService) close() {
	if hs.srv != nil {
		_ = hs.srv.Close()
	}
}

// ServiceHealthReply is the body of a health check answer.
type ServiceHealthReply struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

func (s *ServiceHealth) handler(name types.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		hs := s.services[name]
		count := 0
		if hs != nil {
			count = hs.endpoints
		}
		s.mu.Unlock()
		healthy := true
		if s.proxy != nil {
			healthy, _ = s.proxy.Healthy()
		}
		var r ServiceHealthReply
		r.Service.Namespace, r.Service.Name = name.Namespace, name.Name
		r.LocalEndpoints, r.ServiceProxyHealthy = count, healthy
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		// A proxier that has stopped syncing may route stale: fail the
		// node then, whatever its endpoints (kube-proxy does the same).
		if count == 0 || !healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(r)
	})
}
