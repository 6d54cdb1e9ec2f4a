// Package tracker turns Service, EndpointSlice and Node events into the
// desired-state core.Snapshot and the core.ChangeSet since the last Take.
//
// It is shared by every proxy mode: event handlers only convert and store
// objects (cheap, under a lock); the diffing happens in Take, once per sync.
package tracker

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// TriggerTimeAnnotation is set by the EndpointSlice controller to the time of
// the change (Pod or Service) that caused the slice update. It is the start
// point of the network_programming_duration_seconds metric.
const TriggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

// Tracker accumulates changes. All methods are safe for concurrent use.
type Tracker struct {
	mu       sync.Mutex
	nodeName string
	onChange func()

	services map[types.NamespacedName][]*core.ServicePort
	slices   map[types.NamespacedName]map[string]*sliceEntry // by service, then slice name
	node     *core.NodeInfo

	dirty    sets.Set[types.NamespacedName]
	triggers map[types.NamespacedName][]time.Time
	last     *core.Snapshot
	// lastPorts indexes last.Services by Service, so diffing one Service
	// does not scan the whole snapshot.
	lastPorts map[types.NamespacedName][]core.ServicePortName
}

// sliceEntry is the converted form of one EndpointSlice.
type sliceEntry struct {
	ports       []discovery.EndpointPort
	endpoints   []core.Endpoint // Port is unset here; filled in per port
	triggerTime time.Time
}

// New returns a Tracker for the node nodeName. onChange, when not nil, is
// called (without the lock held) after each event that may change the
// snapshot; the proxier uses it to schedule a sync.
func New(nodeName string, onChange func()) *Tracker {
	return &Tracker{
		nodeName: nodeName,
		onChange: onChange,
		services: map[types.NamespacedName][]*core.ServicePort{},
		slices:   map[types.NamespacedName]map[string]*sliceEntry{},
		dirty:    sets.New[types.NamespacedName](),
		triggers: map[types.NamespacedName][]time.Time{},
		last:     core.NewSnapshot(),

		lastPorts: map[types.NamespacedName][]core.ServicePortName{},
	}
}

func (t *Tracker) changed() {
	if t.onChange != nil {
		t.onChange()
	}
}

// UpsertService records the current state of a Service.
func (t *Tracker) UpsertService(svc *v1.Service) {
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	ports := ServicePorts(svc)
	t.mu.Lock()
	if len(ports) == 0 {
		delete(t.services, nn)
	} else {
		t.services[nn] = ports
	}
	t.dirty.Insert(nn)
	t.mu.Unlock()
	t.changed()
}

// DeleteService forgets a Service.
func (t *Tracker) DeleteService(svc *v1.Service) {
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	t.mu.Lock()
	delete(t.services, nn)
	t.dirty.Insert(nn)
	t.mu.Unlock()
	t.changed()
}

// UpsertEndpointSlice records the current state of an EndpointSlice.
func (t *Tracker) UpsertEndpointSlice(es *discovery.EndpointSlice) {
	nn, ok := sliceService(es)
	if !ok {
		return
	}
	entry := convertSlice(es)
	t.mu.Lock()
	bySlice := t.slices[nn]
	if bySlice == nil {
		bySlice = map[string]*sliceEntry{}
		t.slices[nn] = bySlice
	}
	if old := bySlice[es.Name]; !entry.triggerTime.IsZero() && (old == nil || !old.triggerTime.Equal(entry.triggerTime)) {
		t.triggers[nn] = append(t.triggers[nn], entry.triggerTime)
	}
	bySlice[es.Name] = entry
	t.dirty.Insert(nn)
	t.mu.Unlock()
	t.changed()
}

// DeleteEndpointSlice forgets an EndpointSlice.
func (t *Tracker) DeleteEndpointSlice(es *discovery.EndpointSlice) {
	nn, ok := sliceService(es)
	if !ok {
		return
	}
	t.mu.Lock()
	if bySlice := t.slices[nn]; bySlice != nil {
		delete(bySlice, es.Name)
		if len(bySlice) == 0 {
			delete(t.slices, nn)
		}
	}
	t.dirty.Insert(nn)
	t.mu.Unlock()
	t.changed()
}

// UpsertNode records this node's object; other nodes are ignored.
func (t *Tracker) UpsertNode(n *v1.Node) {
	if n.Name != t.nodeName {
		return
	}
	info := &core.NodeInfo{Name: n.Name, Labels: map[string]string{}}
	for k, v := range n.Labels {
		info.Labels[k] = v
	}
	for _, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			info.Addresses = append(info.Addresses, ip)
		}
	}
	t.mu.Lock()
	moved := t.node == nil || !slices.Equal(t.node.Addresses, info.Addresses)
	t.node = info
	t.mu.Unlock()
	// The modes read the node's addresses (a source range that holds one
	// lets load balancer IPs in as sources), so a change must reach them
	// without waiting for some Service to change.
	if moved {
		t.changed()
	}
}

// DeleteNode forgets this node's object.
func (t *Tracker) DeleteNode(n *v1.Node) {
	if n.Name != t.nodeName {
		return
	}
	t.mu.Lock()
	t.node = nil
	t.mu.Unlock()
}

// Pending reports how many Services changed since the last Take.
func (t *Tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dirty.Len()
}

// Take returns the current desired state, what changed since the previous
// Take, and the EndpointSlice trigger times of those changes. Take resets the
// change set: the caller owns retrying (by asking for a full sync).
func (t *Tracker) Take() (*core.Snapshot, core.ChangeSet, []time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()

	prev := t.last
	snap := &core.Snapshot{
		Services:  make(map[core.ServicePortName]*core.ServicePort, len(prev.Services)),
		Endpoints: make(map[core.ServicePortName][]core.Endpoint, len(prev.Endpoints)),
		NodeName:  t.nodeName,
	}
	if t.node != nil {
		n := *t.node
		snap.Node = &n
	}
	changes := core.ChangeSet{Services: sets.New[types.NamespacedName]()}

	// Unchanged services: reuse the previous entries as they are.
	for sp, port := range prev.Services {
		if t.dirty.Has(sp.NamespacedName) {
			continue
		}
		snap.Services[sp] = port
		if eps, ok := prev.Endpoints[sp]; ok {
			snap.Endpoints[sp] = eps
		}
	}

	var triggers []time.Time
	for nn := range t.dirty {
		triggers = append(triggers, t.triggers[nn]...)
		delete(t.triggers, nn)

		byPort := t.endpointsFor(nn)
		for _, port := range t.services[nn] {
			snap.Services[port.Name] = port
			if eps := byPort[port.Name]; len(eps) > 0 {
				snap.Endpoints[port.Name] = eps
			}
		}
		oldPorts := t.lastPorts[nn]
		var newPorts []core.ServicePortName
		for _, port := range t.services[nn] {
			newPorts = append(newPorts, port.Name)
		}
		if serviceChanged(prev, snap, oldPorts, newPorts) {
			changes.Services.Insert(nn)
			staleUDP(prev, snap, oldPorts, newPorts, &changes)
		}
		if len(newPorts) == 0 {
			delete(t.lastPorts, nn)
		} else {
			t.lastPorts[nn] = newPorts
		}
	}
	t.dirty = sets.New[types.NamespacedName]()
	t.last = snap
	return snap, changes, triggers
}

// endpointsFor merges all slices of one Service into sorted, de-duplicated
// endpoint lists per service port. Lock held.
func (t *Tracker) endpointsFor(nn types.NamespacedName) map[core.ServicePortName][]core.Endpoint {
	out := map[core.ServicePortName][]core.Endpoint{}
	seen := map[core.ServicePortName]map[netip.AddrPort]int{}
	for _, entry := range t.slices[nn] {
		for _, p := range entry.ports {
			if p.Port == nil {
				continue
			}
			proto := v1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			sp := core.ServicePortName{NamespacedName: nn, Port: name, Protocol: proto}
			if seen[sp] == nil {
				seen[sp] = map[netip.AddrPort]int{}
			}
			for _, ep := range entry.endpoints {
				ep.Port = *p.Port
				if i, dup := seen[sp][ep.AddrPort()]; dup {
					// The same endpoint in two slices (during a move):
					// prefer the more ready copy.
					if ep.Ready && !out[sp][i].Ready {
						out[sp][i] = ep
					}
					continue
				}
				seen[sp][ep.AddrPort()] = len(out[sp])
				out[sp] = append(out[sp], ep)
			}
		}
	}
	for sp := range out {
		core.SortEndpoints(out[sp])
	}
	return out
}

// serviceChanged compares one Service's ports and endpoints in two snapshots.
func serviceChanged(prev, next *core.Snapshot, oldPorts, newPorts []core.ServicePortName) bool {
	if len(oldPorts) != len(newPorts) {
		return true
	}
	for _, sp := range oldPorts {
		if !prev.Services[sp].Equal(next.Services[sp]) || !endpointsEqual(prev.Endpoints[sp], next.Endpoints[sp]) {
			return true
		}
	}
	return false
}

func endpointsEqual(a, b []core.Endpoint) bool {
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

// staleUDP records UDP backends that stopped being usable, and UDP service
// IPs that gained their first usable backend.
func staleUDP(prev, next *core.Snapshot, oldPorts, newPorts []core.ServicePortName, changes *core.ChangeSet) {
	for _, sp := range oldPorts {
		old := prev.Services[sp]
		if old.Protocol != v1.ProtocolUDP {
			continue
		}
		nextUsable := map[netip.Addr]bool{}
		if cur, ok := next.Services[sp]; ok && cur.ClusterIP == old.ClusterIP && cur.Port == old.Port {
			for _, ep := range core.UsableEndpoints(next.Endpoints[sp]) {
				nextUsable[ep.IP] = true
			}
		}
		for _, ep := range core.UsableEndpoints(prev.Endpoints[sp]) {
			if !nextUsable[ep.IP] {
				changes.StaleUDPEndpoints = append(changes.StaleUDPEndpoints, core.StaleUDPEndpoint{
					ServiceIP: old.ClusterIP, Port: old.Port, NodePort: old.NodePort, Endpoint: ep.IP,
				})
			}
		}
	}
	for _, sp := range newPorts {
		cur := next.Services[sp]
		if cur.Protocol != v1.ProtocolUDP {
			continue
		}
		if len(core.UsableEndpoints(next.Endpoints[sp])) > 0 && len(core.UsableEndpoints(prev.Endpoints[sp])) == 0 {
			changes.StaleUDPServiceIPs = append(changes.StaleUDPServiceIPs, cur.ClusterIP)
			changes.StaleUDPServiceIPs = append(changes.StaleUDPServiceIPs, cur.ExternalIPs...)
			changes.StaleUDPServiceIPs = append(changes.StaleUDPServiceIPs, cur.LoadBalancerIPs...)
		}
	}
}

// ServicePorts converts a Service into the ports a proxy handles. Headless
// and ExternalName Services, and Services without an IPv4 ClusterIP, have none.
func ServicePorts(svc *v1.Service) []*core.ServicePort {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	clusterIP, ok := firstIPv4(svc)
	if !ok {
		return nil
	}
	affinity := svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP
	timeout := int32(core.DefaultStickyTimeoutSeconds)
	if cfg := svc.Spec.SessionAffinityConfig; affinity && cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil {
		timeout = *cfg.ClientIP.TimeoutSeconds
	}
	var externalIPs []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			externalIPs = append(externalIPs, ip)
		}
	}
	lbIPs, sourceRanges := loadBalancer(svc)
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	var out []*core.ServicePort
	for _, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		sp := &core.ServicePort{
			Name:             core.ServicePortName{NamespacedName: nn, Port: p.Name, Protocol: proto},
			ClusterIP:        clusterIP,
			Port:             p.Port,
			Protocol:         proto,
			ExternalIPs:      externalIPs,
			LoadBalancerIPs:  lbIPs,
			ClientIPAffinity: affinity,
			InternalLocal:    svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal,
		}
		if affinity {
			sp.StickyTimeoutSeconds = timeout
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			sp.NodePort = p.NodePort
		}
		// As kube-proxy: the external policy applies only where there is
		// external traffic, and the health check port only to a
		// LoadBalancer Service under the Local policy.
		if len(lbIPs) > 0 {
			sp.LoadBalancerSourceRanges = sourceRanges
		}
		if svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal && (sp.ExternallyAccessible() || svc.Spec.Type == v1.ServiceTypeLoadBalancer) {
			sp.ExternalLocal = true
			if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
				sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
			}
		}
		out = append(out, sp)
	}
	return out
}

// loadBalancer returns the IPv4 ingress IPs of the Service's load balancer
// that are VIPs (ipMode unset or VIP: a Proxy-mode load balancer does not
// deliver packets with its IP as destination, so kube-proxy makes no rule
// for it) and its IPv4 source ranges, trimmed of the spaces validation
// lets through; a zero-length range allows all, the same as none.
func loadBalancer(svc *v1.Service) ([]netip.Addr, []netip.Prefix) {
	var ips []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP {
			continue
		}
		if ip, err := netip.ParseAddr(ing.IP); err == nil && ip.Is4() {
			ips = append(ips, ip)
		}
	}
	var ranges []netip.Prefix
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || !p.Addr().Is4() {
			continue
		}
		if p.Bits() == 0 {
			return ips, nil
		}
		ranges = append(ranges, p.Masked())
	}
	return ips, ranges
}

func firstIPv4(svc *v1.Service) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if s == v1.ClusterIPNone {
			return netip.Addr{}, false
		}
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func sliceService(es *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := es.Labels[discovery.LabelServiceName]
	if name == "" || es.AddressType != discovery.AddressTypeIPv4 {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: es.Namespace, Name: name}, true
}

func convertSlice(es *discovery.EndpointSlice) *sliceEntry {
	entry := &sliceEntry{ports: es.Ports}
	if s, ok := es.Annotations[TriggerTimeAnnotation]; ok {
		if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
			entry.triggerTime = ts
		} else {
			klog.V(4).InfoS("Ignoring unparsable trigger time", "slice", klog.KObj(es), "value", s)
		}
	}
	for _, e := range es.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		ip, err := netip.ParseAddr(e.Addresses[0])
		if err != nil || !ip.Is4() {
			continue
		}
		// Per the API, an unknown ready condition means ready, and an
		// unknown serving condition means the same as ready.
		ready := e.Conditions.Ready == nil || *e.Conditions.Ready
		serving := ready
		if e.Conditions.Serving != nil {
			serving = *e.Conditions.Serving
		}
		ep := core.Endpoint{
			IP:          ip,
			Ready:       ready,
			Serving:     serving,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		}
		if e.NodeName != nil {
			ep.NodeName = *e.NodeName
		}
		if e.Zone != nil {
			ep.Zone = *e.Zone
		}
		entry.endpoints = append(entry.endpoints, ep)
	}
	return entry
}

// ServiceHandler adapts the tracker to a Service informer.
func (t *Tracker) ServiceHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { withObj(obj, t.UpsertService) },
		UpdateFunc: func(_, obj any) { withObj(obj, t.UpsertService) },
		DeleteFunc: func(obj any) { withObj(obj, t.DeleteService) },
	}
}

// EndpointSliceHandler adapts the tracker to an EndpointSlice informer.
func (t *Tracker) EndpointSliceHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { withObj(obj, t.UpsertEndpointSlice) },
		UpdateFunc: func(_, obj any) { withObj(obj, t.UpsertEndpointSlice) },
		DeleteFunc: func(obj any) { withObj(obj, t.DeleteEndpointSlice) },
	}
}

// NodeHandler adapts the tracker to a Node informer.
func (t *Tracker) NodeHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { withObj(obj, t.UpsertNode) },
		UpdateFunc: func(_, obj any) { withObj(obj, t.UpsertNode) },
		DeleteFunc: func(obj any) { withObj(obj, t.DeleteNode) },
	}
}

// withObj unwraps tombstones and ignores objects of the wrong type.
func withObj[T any](obj any, fn func(T)) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if o, ok := obj.(T); ok {
		fn(o)
	}
}
