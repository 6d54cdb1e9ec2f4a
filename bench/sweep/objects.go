package sweep

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
)

const (
	namespace = "bench"
	// managedBy marks the EndpointSlices the sweep writes itself: the
	// Services have no selector, so no controller competes with it and
	// each change is exactly one object update at a known time.
	managedBy   = "proxymodes.bench"
	servicePort = 80
)

// fleet is the sweep's Services. Each one has k endpoints, taken from one
// of two disjoint sets of backend pods; a change moves a Service to the
// other set, so the first reply from the new set proves the new rules.
type fleet struct {
	client kubernetes.Interface
	sets   [2][]cluster.Pod
	mu     sync.Mutex
	vips   []netip.Addr
	set    []int // current endpoint set per Service
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

func (f *fleet) size() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.vips)
}

func (f *fleet) vip(i int) netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vips[i]
}

// grow creates Services (and their EndpointSlices) until there are n, with
// parallel workers, as a controller would; progress reports every 10%.
func (f *fleet) grow(ctx context.Context, n, workers int, progress func(done, total int)) error {
	start := f.size()
	if n <= start {
		return nil
	}
	f.mu.Lock()
	f.vips = append(f.vips, make([]netip.Addr, n-start)...)
	f.set = append(f.set, make([]int, n-start)...)
	f.mu.Unlock()
	var next, done atomic.Int64
	next.Store(int64(start))
	g, gctx := errgroup.WithContext(ctx)
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := f.create(gctx, i); err != nil {
					return err
				}
				if d := int(done.Add(1)); progress != nil && d%max(1, (n-start)/10) == 0 {
					progress(start+d, n)
				}
			}
		})
	}
	return g.Wait()
}

func (f *fleet) create(ctx context.Context, i int) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: serviceName(i), Namespace: namespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: servicePort,
				TargetPort: intstr.FromInt32(backend.HTTPPort)}},
		},
	}
	created, err := f.client.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating Service %s: %w", svc.Name, err)
	}
	vip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		return fmt.Errorf("Service %s got ClusterIP %q: %w", svc.Name, created.Spec.ClusterIP, err)
	}
	set := i % 2
	port := int32(backend.HTTPPort)
	proto := corev1.ProtocolTCP
	name := ""
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: namespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: managedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   f.endpoints(set),
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	if _, err := f.client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating EndpointSlice %s: %w", svc.Name, err)
	}
	f.mu.Lock()
	f.vips[i], f.set[i] = vip, set
	f.mu.Unlock()
	return nil
}

func (f *fleet) endpoints(set int) []discoveryv1.Endpoint {
	ready := true
	var eps []discoveryv1.Endpoint
	for _, p := range f.sets[set] {
		node := p.Node
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{p.IP.String()}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return eps
}

// swap moves Service i to its other endpoint set and returns the new
// set's pods. The trigger-time annotation is what kube-proxy's own
// network-programming metric measures from.
func (f *fleet) swap(ctx context.Context, i int, at time.Time) ([]cluster.Pod, error) {
	f.mu.Lock()
	set := 1 - f.set[i]
	f.mu.Unlock()
	patch, err := json.Marshal(map[string]any{
		"metadata":  map[string]any{"annotations": map[string]string{corev1.EndpointsLastChangeTriggerTime: at.UTC().Format(time.RFC3339Nano)}},
		"endpoints": f.endpoints(set),
	})
	if err != nil {
		return nil, err
	}
	if _, err := f.client.DiscoveryV1().EndpointSlices(namespace).Patch(ctx, serviceName(i), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("changing the endpoints of %s: %w", serviceName(i), err)
	}
	f.mu.Lock()
	f.set[i] = set
	f.mu.Unlock()
	return f.sets[set], nil
}
