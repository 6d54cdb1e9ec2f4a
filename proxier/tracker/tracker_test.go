package tracker

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/proxymodes/proxymodes/proxier/core"
)

func service(name, ip string, mutate ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

type ep struct {
	ip                          string
	ready, serving, terminating *bool
	node                        string
}

func slice(svc, name string, port int32, proto v1.Protocol, eps ...ep) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(proto)}},
	}
	for _, e := range eps {
		de := discovery.Endpoint{Addresses: []string{e.ip}, Conditions: discovery.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}}
		if e.node != "" {
			de.NodeName = ptr.To(e.node)
		}
		es.Endpoints = append(es.Endpoints, de)
	}
	return es
}

var (
	nsA    = types.NamespacedName{Namespace: "ns", Name: "a"}
	nsB    = types.NamespacedName{Namespace: "ns", Name: "b"}
	portA  = core.ServicePortName{NamespacedName: nsA, Port: "http", Protocol: v1.ProtocolTCP}
	truePt = ptr.To(true)
	falsPt = ptr.To(false)
)

func TestServiceConversion(t *testing.T) {
	svc := service("a", "198.19.0.1", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, NodePort: 30053})
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.ExternalIPs = []string{"198.19.200.1"}
	})
	ports := ServicePorts(svc)
	if len(ports) != 2 {
		t.Fatalf("got %d ports, want 2", len(ports))
	}
	p := ports[0]
	if p.Name != portA || p.ClusterIP != netip.MustParseAddr("198.19.0.1") || p.Port != 80 || p.NodePort != 30080 {
		t.Errorf("bad port: %+v", p)
	}
	if !p.ClientIPAffinity || p.StickyTimeoutSeconds != core.DefaultStickyTimeoutSeconds {
		t.Errorf("ClientIP affinity without a timeout should default to %d, got %+v", core.DefaultStickyTimeoutSeconds, p)
	}
	if len(p.ExternalIPs) != 1 {
		t.Errorf("external IPs: %v", p.ExternalIPs)
	}
	if ports[1].Protocol != v1.ProtocolUDP || ports[1].Name.Port != "dns" || ports[1].NodePort != 30053 {
		t.Errorf("bad UDP port: %+v", ports[1])
	}

	svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
	if got := ServicePorts(svc)[0].StickyTimeoutSeconds; got != 60 {
		t.Errorf("timeout %d, want 60", got)
	}
	if p.InternalLocal {
		t.Errorf("no internalTrafficPolicy: got Local")
	}
	for policy, want := range map[v1.ServiceInternalTrafficPolicy]bool{v1.ServiceInternalTrafficPolicyLocal: true, v1.ServiceInternalTrafficPolicyCluster: false} {
		svc.Spec.InternalTrafficPolicy = &policy
		if got := ServicePorts(svc)[1].InternalLocal; got != want {
			t.Errorf("internalTrafficPolicy %s: InternalLocal %t, want %t", policy, got, want)
		}
	}
	if p.ExternalLocal || p.HealthCheckNodePort != 0 {
		t.Errorf("no externalTrafficPolicy: got Local (%+v)", p)
	}
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc.Spec.HealthCheckNodePort = 31000
	if got := ServicePorts(svc)[0]; !got.ExternalLocal || got.HealthCheckNodePort != 0 {
		t.Errorf("a NodePort Service under externalTrafficPolicy Local: ExternalLocal %t, health check port %d; want true, 0 (only a LoadBalancer has one)", got.ExternalLocal, got.HealthCheckNodePort)
	}
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	if got := ServicePorts(svc)[1]; !got.ExternalLocal || got.HealthCheckNodePort != 31000 {
		t.Errorf("a LoadBalancer Service under externalTrafficPolicy Local: ExternalLocal %t, health check port %d; want true, 31000", got.ExternalLocal, got.HealthCheckNodePort)
	}
	internalOnly := service("i", "198.19.0.2", func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal })
	if got := ServicePorts(internalOnly)[0]; got.ExternalLocal {
		t.Errorf("a ClusterIP Service without external IPs has no external traffic, yet ExternalLocal")
	}
	for name, s := range map[string]*v1.Service{
		"headless":     service("h", v1.ClusterIPNone),
		"externalname": service("e", "", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName }),
		"ipv6":         service("6", "fd00::1"),
	} {
		if got := ServicePorts(s); len(got) != 0 {
			t.Errorf("%s: got ports %v, want none", name, got)
		}
	}
	// ClusterIP services have no NodePort even if the field is set.
	cip := service("c", "198.19.0.3", func(s *v1.Service) { s.Spec.Ports[0].NodePort = 30000 })
	if ServicePorts(cip)[0].NodePort != 0 {
		t.Errorf("ClusterIP service got a NodePort")
	}
}

func TestLoadBalancerConversion(t *testing.T) {
	proxyMode := v1.LoadBalancerIPModeProxy
	svc := service("lb", "198.19.0.4", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{" 198.18.0.7/24", "fd00::/64", "198.18.3.0/24 "}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
			{IP: "198.18.17.1"}, {IP: "198.18.17.2", IPMode: &proxyMode}, {Hostname: "lb.example"}, {IP: "fd00::1"},
			{IP: "198.18.17.3", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
		}
	})
	p := ServicePorts(svc)[0]
	if want := []netip.Addr{netip.MustParseAddr("198.18.17.1"), netip.MustParseAddr("198.18.17.3")}; !slices.Equal(p.LoadBalancerIPs, want) {
		t.Errorf("load balancer IPs %v, want %v (IPv4 VIP-mode ingress only)", p.LoadBalancerIPs, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("198.18.3.0/24")}; !slices.Equal(p.LoadBalancerSourceRanges, want) {
		t.Errorf("source ranges %v, want %v (trimmed, masked, IPv4 only)", p.LoadBalancerSourceRanges, want)
	}
	if !p.ExternallyAccessible() {
		t.Error("a port with a load balancer IP is not externally accessible")
	}
	svc.Spec.LoadBalancerSourceRanges = append(svc.Spec.LoadBalancerSourceRanges, "0.0.0.0/0")
	if got := ServicePorts(svc)[0].LoadBalancerSourceRanges; len(got) != 0 {
		t.Errorf("0.0.0.0/0 among the ranges allows every source, yet ranges %v remain", got)
	}
	svc.Status.LoadBalancer.Ingress = nil
	svc.Spec.LoadBalancerSourceRanges = []string{"198.18.0.0/24"}
	if got := ServicePorts(svc)[0]; len(got.LoadBalancerIPs) != 0 || len(got.LoadBalancerSourceRanges) != 0 {
		t.Errorf("no ingress yet: load balancer IPs %v, source ranges %v; want none", got.LoadBalancerIPs, got.LoadBalancerSourceRanges)
	}
}

func TestTakeTracksChanges(t *testing.T) {
	calls := 0
	tr := New("node-1", func() { calls++ })
	tr.UpsertService(service("a", "198.19.0.1"))
	tr.UpsertService(service("b", "198.19.0.2"))
	tr.UpsertEndpointSlice(slice("a", "a-1", 8080, v1.ProtocolTCP,
		ep{ip: "198.18.64.2", node: "node-1"},
		ep{ip: "198.18.64.1", ready: falsPt, serving: truePt, terminating: truePt, node: "node-2"},
		ep{ip: "198.18.64.3", ready: falsPt},
	))
	if calls != 3 {
		t.Errorf("onChange called %d times, want 3", calls)
	}
	snap, changes, _ := tr.Take()
	if len(snap.Services) != 2 || !changes.Services.Has(nsA) || !changes.Services.Has(nsB) {
		t.Fatalf("first take: services %v, changed %v", snap.Services, changes.Services)
	}
	eps := snap.Endpoints[portA]
	if len(eps) != 3 || eps[0].IP.String() != "198.18.64.1" || eps[0].Port != 8080 {
		t.Fatalf("endpoints not sorted or converted: %+v", eps)
	}
	if e := eps[0]; e.Ready || !e.Serving || !e.Terminating || e.NodeName != "node-2" {
		t.Errorf("terminating endpoint flags: %+v", e)
	}
	if e := eps[1]; !e.Ready || !e.Serving || e.Terminating || e.NodeName != "node-1" {
		t.Errorf("ready endpoint flags (nil conditions mean ready and serving): %+v", e)
	}
	if e := eps[2]; e.Ready || e.Serving {
		t.Errorf("not-ready endpoint (serving defaults to ready): %+v", e)
	}
	if u := core.UsableEndpoints(eps); len(u) != 1 || u[0].IP.String() != "198.18.64.2" {
		t.Errorf("usable endpoints: %+v", u)
	}

	// Nothing happened: nothing changed, and the snapshot is the same.
	snap2, changes, _ := tr.Take()
	if changes.Services.Len() != 0 || len(snap2.Services) != 2 || len(snap2.Endpoints[portA]) != 3 {
		t.Errorf("idle take: changed %v, %d services", changes.Services, len(snap2.Services))
	}

	// An update that changes nothing the proxy uses is not a change.
	svc := service("b", "198.19.0.2")
	svc.Labels = map[string]string{"x": "y"}
	tr.UpsertService(svc)
	if _, changes, _ = tr.Take(); changes.Services.Len() != 0 {
		t.Errorf("no-op update reported as change: %v", changes.Services)
	}

	// Endpoint change on a: only a changed.
	tr.UpsertEndpointSlice(slice("a", "a-1", 8080, v1.ProtocolTCP, ep{ip: "198.18.64.2"}))
	if _, changes, _ = tr.Take(); changes.Services.Len() != 1 || !changes.Services.Has(nsA) {
		t.Errorf("endpoint change: changed %v, want only ns/a", changes.Services)
	}

	// Delete b: changed, and gone from the snapshot.
	tr.DeleteService(service("b", "198.19.0.2"))
	snap, changes, _ = tr.Take()
	if !changes.Services.Has(nsB) || len(snap.Services) != 1 {
		t.Errorf("delete: changed %v, %d services left", changes.Services, len(snap.Services))
	}
}

func TestSlicesMergeAndDedupe(t *testing.T) {
	tr := New("node-1", nil)
	tr.UpsertService(service("a", "198.19.0.1"))
	tr.UpsertEndpointSlice(slice("a", "a-1", 8080, v1.ProtocolTCP, ep{ip: "198.18.64.1", ready: falsPt}, ep{ip: "198.18.64.2"}))
	tr.UpsertEndpointSlice(slice("a", "a-2", 8080, v1.ProtocolTCP, ep{ip: "198.18.64.1"}, ep{ip: "198.18.64.3"}))
	// A slice for another port name and one for IPv6 are ignored for "http".
	other := slice("a", "a-3", 9090, v1.ProtocolTCP, ep{ip: "198.18.64.9"})
	other.Ports[0].Name = ptr.To("metrics")
	tr.UpsertEndpointSlice(other)
	v6 := slice("a", "a-4", 8080, v1.ProtocolTCP, ep{ip: "fd00::1"})
	v6.AddressType = discovery.AddressTypeIPv6
	tr.UpsertEndpointSlice(v6)

	snap, _, _ := tr.Take()
	eps := snap.Endpoints[portA]
	if len(eps) != 3 {
		t.Fatalf("want 3 merged endpoints, got %+v", eps)
	}
	if !eps[0].Ready {
		t.Errorf("duplicate endpoint should keep its ready copy: %+v", eps[0])
	}
	if len(snap.Services) != 1 {
		t.Errorf("endpoints of a port the service lacks leaked into services")
	}
	tr.DeleteEndpointSlice(slice("a", "a-2", 8080, v1.ProtocolTCP))
	snap, _, _ = tr.Take()
	if len(snap.Endpoints[portA]) != 2 {
		t.Errorf("after deleting a slice: %+v", snap.Endpoints[portA])
	}
}

func TestStaleUDP(t *testing.T) {
	tr := New("node-1", nil)
	udp := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].Protocol = v1.ProtocolUDP
		s.Spec.Ports[0].NodePort = 30053
	}
	tr.UpsertService(service("a", "198.19.0.1", udp))
	tr.Take()
	tr.UpsertEndpointSlice(slice("a", "a-1", 53, v1.ProtocolUDP, ep{ip: "198.18.64.1"}, ep{ip: "198.18.64.2"}))
	_, changes, _ := tr.Take()
	if len(changes.StaleUDPServiceIPs) != 1 || changes.StaleUDPServiceIPs[0].String() != "198.19.0.1" {
		t.Errorf("first endpoint of a UDP service should flag its IP: %+v", changes.StaleUDPServiceIPs)
	}
	tr.UpsertEndpointSlice(slice("a", "a-1", 53, v1.ProtocolUDP, ep{ip: "198.18.64.2"}))
	_, changes, _ = tr.Take()
	want := core.StaleUDPEndpoint{ServiceIP: netip.MustParseAddr("198.19.0.1"), Port: 80, NodePort: 30053, Endpoint: netip.MustParseAddr("198.18.64.1")}
	if len(changes.StaleUDPEndpoints) != 1 || changes.StaleUDPEndpoints[0] != want {
		t.Errorf("stale UDP endpoints: %+v, want %+v", changes.StaleUDPEndpoints, want)
	}
	tr.DeleteService(service("a", "198.19.0.1", udp))
	_, changes, _ = tr.Take()
	if len(changes.StaleUDPEndpoints) != 1 || changes.StaleUDPEndpoints[0].Endpoint.String() != "198.18.64.2" {
		t.Errorf("deleting the service should flag its last endpoint: %+v", changes.StaleUDPEndpoints)
	}
}

func TestTriggerTimes(t *testing.T) {
	tr := New("node-1", nil)
	tr.UpsertService(service("a", "198.19.0.1"))
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)
	es := slice("a", "a-1", 8080, v1.ProtocolTCP, ep{ip: "198.18.64.1"})
	es.Annotations = map[string]string{TriggerTimeAnnotation: t0.Format(time.RFC3339Nano)}
	tr.UpsertEndpointSlice(es)
	tr.UpsertEndpointSlice(es) // same trigger time again: counted once
	_, _, triggers := tr.Take()
	if len(triggers) != 1 || !triggers[0].Equal(t0) {
		t.Errorf("trigger times %v, want [%v]", triggers, t0)
	}
	if _, _, triggers = tr.Take(); len(triggers) != 0 {
		t.Errorf("trigger times not reset by Take: %v", triggers)
	}
}

func TestNodeAndHandlers(t *testing.T) {
	tr := New("node-1", nil)
	h := tr.NodeHandler()
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"zone": "a"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "198.18.0.1"}, {Type: v1.NodeHostName, Address: "node-1"}}}}
	h.OnAdd(node, false)
	h.OnAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}}, false)
	snap, _, _ := tr.Take()
	if snap.Node == nil || snap.Node.Name != "node-1" || len(snap.Node.Addresses) != 1 || snap.Node.Labels["zone"] != "a" {
		t.Fatalf("node info: %+v", snap.Node)
	}
	// Tombstones from the informer are unwrapped.
	svcH := tr.ServiceHandler()
	svcH.OnAdd(service("a", "198.19.0.1"), false)
	svcH.OnDelete(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: service("a", "198.19.0.1")})
	snap, changes, _ := tr.Take()
	if len(snap.Services) != 0 || changes.Services.Len() != 0 {
		t.Errorf("add+tombstone delete: %d services, changed %v", len(snap.Services), changes.Services)
	}
	h.OnDelete(node)
	if snap, _, _ = tr.Take(); snap.Node != nil {
		t.Errorf("node not forgotten")
	}
}

// TestNodeAddressChangeTriggersSync: the modes read the node's addresses,
// so the first Node and a change of its addresses ask for a sync; a Node
// update that keeps them (a label, a heartbeat) does not.
func TestNodeAddressChangeTriggersSync(t *testing.T) {
	calls := 0
	tr := New("node-1", func() { calls++ })
	node := func(ip string, labels map[string]string) *v1.Node {
		n := &v1.Node{}
		n.Name, n.Labels = "node-1", labels
		n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: ip}, {Type: v1.NodeHostName, Address: "node-1"}}
		return n
	}
	for _, step := range []struct {
		what  string
		n     *v1.Node
		calls int
	}{
		{"first seen", node("198.18.0.11", nil), 1},
		{"a label added", node("198.18.0.11", map[string]string{"a": "b"}), 1},
		{"its address changed", node("198.18.0.99", map[string]string{"a": "b"}), 2},
	} {
		tr.UpsertNode(step.n)
		if calls != step.calls {
			t.Errorf("%s: onChange called %d times in all, want %d", step.what, calls, step.calls)
		}
	}
	other := node("198.18.0.12", nil)
	other.Name = "node-2"
	tr.UpsertNode(other)
	if calls != 2 {
		t.Errorf("another node's update called onChange")
	}
	if snap, _, _ := tr.Take(); snap.Node == nil || snap.Node.Addresses[0] != netip.MustParseAddr("198.18.0.99") {
		t.Errorf("snapshot node %+v, want address 198.18.0.99", snap.Node)
	}
}
