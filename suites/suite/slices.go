package suite

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
)

// ManagedBy marks the EndpointSlices the suites write, so that the
// endpointslice controller leaves them alone (it manages only its own).
const ManagedBy = "proxymodes.dev-suite"

// EndpointSlice writes an EndpointSlice of svc (a Selectorless one) that
// lists the pods as ready endpoints of its "tcp" and "udp" ports, as a
// controller of the user's own would.
func (fx *Fixture) EndpointSlice(a *A, svc *corev1.Service, name string, pods []cluster.Pod) *discoveryv1.EndpointSlice {
	a.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fx.Namespace(), Labels: map[string]string{
			discoveryv1.LabelServiceName: svc.Name,
			discoveryv1.LabelManagedBy:   ManagedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("tcp"), Port: ptr.To[int32](backend.TCPPort), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To("udp"), Port: ptr.To[int32](backend.UDPPort), Protocol: ptr.To(corev1.ProtocolUDP)},
		},
	}
	for _, p := range pods {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(p.Node),
		})
	}
	created, err := fx.c.Client().DiscoveryV1().EndpointSlices(fx.Namespace()).Create(a.Ctx, es, metav1.CreateOptions{})
	if err != nil {
		a.Fatalf("creating EndpointSlice %s: %v", name, err)
	}
	fx.mu.Lock()
	fx.slices = append(fx.slices, name)
	fx.mu.Unlock()
	a.Logf("EndpointSlice %s/%s of Service %s: %s", fx.Namespace(), name, svc.Name, Names(pods))
	return created
}

// DeleteEndpointSlice deletes one of the feature's EndpointSlices now.
func (fx *Fixture) DeleteEndpointSlice(a *A, name string) {
	a.Helper()
	if err := fx.c.Client().DiscoveryV1().EndpointSlices(fx.Namespace()).Delete(a.Ctx, name, metav1.DeleteOptions{}); err != nil {
		a.Fatalf("deleting EndpointSlice %s: %v", name, err)
	}
	fx.mu.Lock()
	fx.slices = without(fx.slices, name)
	fx.mu.Unlock()
}
