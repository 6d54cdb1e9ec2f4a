package suite

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// Namespace is where the suites create their objects: the cluster's
// (Info.Namespace) or "default" when the whole cluster is the run's.
func Namespace(c cluster.Cluster) string {
	if ns := c.Info().Namespace; ns != "" {
		return ns
	}
	return "default"
}

// Namespace is where the feature's objects live.
func (fx *Fixture) Namespace() string { return Namespace(fx.c) }

// Service ports every suite Service exposes.
const (
	TCPPort = 80 // -> backend.TCPPort (greets with "pod client")
	UDPPort = 53 // -> backend.UDPPort (echoes "pod client")
)

// Converge is the least the suites wait for the proxier to program a
// change; Run.Converge adds the time of the slowest syncs measured. The
// reference proxier syncs at most once a second, so this is generous; it
// bounds waiting, never a statistical check.
const Converge = 45 * time.Second

// Fixture tracks what one feature created, so its teardown removes it.
type Fixture struct {
	c    cluster.Cluster
	slug string
	run  *Run

	mu       sync.Mutex
	pods     []cluster.Pod
	services []string
	slices   []string
	// made counts the backends made, deleted ones included, so that a
	// new one never takes a live one's name.
	made int
}

// livePods lists the feature's pods that have not been deleted.
func (fx *Fixture) livePods() []cluster.Pod {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return append([]cluster.Pod(nil), fx.pods...)
}

// Selector is the label set of the feature's backends.
func (fx *Fixture) Selector() map[string]string { return map[string]string{"app": fx.slug} }

// Backends adds n backend pods selected by Selector, spread over the
// nodes in turn (so local and remote endpoints are both exercised).
func (fx *Fixture) Backends(a *A, n int) []cluster.Pod {
	a.Helper()
	return fx.backends(a, n, fx.Selector())
}

// GroupSelector selects the backends that BackendGroup added for group.
func (fx *Fixture) GroupSelector(group string) map[string]string {
	return map[string]string{"app": fx.slug, "group": group}
}

// BackendGroup adds n backend pods that only GroupSelector(group) selects
// (and Selector too), for a Service whose backends no other Service of the
// feature shares.
func (fx *Fixture) BackendGroup(a *A, n int, group string) []cluster.Pod {
	a.Helper()
	return fx.backends(a, n, fx.GroupSelector(group))
}

func (fx *Fixture) backends(a *A, n int, labels map[string]string) []cluster.Pod {
	a.Helper()
	var out []cluster.Pod
	for range n {
		out = append(out, fx.addPod(a, cluster.PodSpec{Labels: labels}))
	}
	return out
}

// BackendWithAltPort adds one backend of group that also serves raw TCP
// on alt, declared as its container port cluster.AltPortName: a named
// targetPort resolves to a different port on each such pod.
func (fx *Fixture) BackendWithAltPort(a *A, group string, alt uint16) cluster.Pod {
	a.Helper()
	return fx.addPod(a, cluster.PodSpec{Labels: fx.GroupSelector(group), AltTCPPort: alt})
}

// BackendOn adds one backend of group on node.
func (fx *Fixture) BackendOn(a *A, group, node string) cluster.Pod {
	a.Helper()
	return fx.addPod(a, cluster.PodSpec{Node: node, Labels: fx.GroupSelector(group)})
}

// DrainingBackendOn adds one backend of group on node (any node when
// empty) that keeps serving while it terminates (Terminate).
func (fx *Fixture) DrainingBackendOn(a *A, group, node string) cluster.Pod {
	a.Helper()
	return fx.addPod(a, cluster.PodSpec{Node: node, Labels: fx.GroupSelector(group), Drain: true})
}

// TerminateGrace is the grace period of Terminate: far longer than any
// check of a terminating endpoint, which ends with the feature's teardown.
const TerminateGrace = 10 * time.Minute

// Terminate deletes a pod gracefully (cluster.PodTerminator): its endpoint
// turns Ready=false, Serving=true, Terminating=true while it serves on.
// A provider that cannot skips the rest of the feature.
func (fx *Fixture) Terminate(a *A, p cluster.Pod) {
	a.Helper()
	pt, ok := fx.c.(cluster.PodTerminator)
	if !ok {
		a.SkipFeature("the %s provider cannot delete a pod gracefully (cluster.PodTerminator)", fx.c.Info().Provider)
	}
	if err := pt.TerminatePod(a.Ctx, p.Namespace, p.Name, TerminateGrace); err != nil {
		a.Fatalf("deleting pod %s with a grace period of %s: %v", p, TerminateGrace, err)
	}
	a.Logf("pod %s: graceful deletion started (grace %s)", p, TerminateGrace)
}

// AddPod adds one backend pod with the feature's selector on a node.
func (fx *Fixture) AddPod(a *A, name, node string) cluster.Pod {
	a.Helper()
	return fx.addPod(a, cluster.PodSpec{Name: name, Node: node, Labels: fx.Selector()})
}

// addPod creates a backend. A spec without a name gets the next of the
// feature's ("<slug>-<n>") and, without a node, the nodes in turn, so
// that local and remote endpoints are both exercised.
func (fx *Fixture) addPod(a *A, spec cluster.PodSpec) cluster.Pod {
	a.Helper()
	spec.Namespace = fx.Namespace()
	if spec.Name == "" {
		nodes := fx.c.Info().Nodes
		fx.mu.Lock()
		i := fx.made
		fx.made++
		fx.mu.Unlock()
		spec.Name = fmt.Sprintf("%s-%d", fx.slug, i)
		if spec.Node == "" {
			spec.Node = nodes[i%len(nodes)].Name
		}
	}
	name := spec.Name
	p, err := fx.c.AddPod(a.Ctx, spec)
	if err != nil {
		a.Fatalf("adding backend pod %s: %v", name, err)
	}
	fx.mu.Lock()
	fx.pods = append(fx.pods, p)
	fx.mu.Unlock()
	return p
}

// DeletePod deletes one of the feature's pods.
func (fx *Fixture) DeletePod(a *A, p cluster.Pod) {
	a.Helper()
	if err := fx.c.DeletePod(a.Ctx, p.Namespace, p.Name); err != nil {
		a.Fatalf("deleting pod %s: %v", p, err)
	}
	fx.mu.Lock()
	defer fx.mu.Unlock()
	for i, q := range fx.pods {
		if q.Name == p.Name && q.Namespace == p.Namespace {
			fx.pods = append(fx.pods[:i], fx.pods[i+1:]...)
			break
		}
	}
}

// Unselect takes a pod out of every Service of the feature by removing
// the labels they select on; the pod itself keeps running and serving, so
// a proxy that keeps its endpoint still reaches it. A deleted pod cannot
// show that: a proxy that retries (userspace) hides a dead endpoint.
func (fx *Fixture) Unselect(a *A, p cluster.Pod) {
	a.Helper()
	patch := []byte(`{"metadata":{"labels":{"app":null,"group":null}}}`)
	if _, err := fx.c.Client().CoreV1().Pods(p.Namespace).Patch(a.Ctx, p.Name, k8stypes.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		a.Fatalf("taking pod %s out of the selector: %v", p, err)
	}
}

// ServiceOptions shape a Service.
type ServiceOptions struct {
	Name string
	// Selector defaults to the feature's; use an unmatched one for a
	// Service without endpoints.
	Selector map[string]string
	NodePort bool
	// Affinity > 0 sets sessionAffinity ClientIP with this timeout.
	Affinity time.Duration
	// UDPPort replaces the UDP port's number (default UDPPort), e.g. to
	// put UDP on the TCP port's number.
	UDPPort uint16
	// Selectorless leaves out the selector: the endpoints are the
	// EndpointSlices the feature writes itself (Fixture.EndpointSlice).
	Selectorless bool // ExtraPorts are added after the "tcp" and "udp" ports.
	ExtraPorts   []corev1.ServicePort
	// InternalLocal sets internalTrafficPolicy: Local.
	InternalLocal bool
	// ExternalLocal makes a LoadBalancer Service (NodePorts and a
	// healthCheckNodePort, no load balancer) with
	// externalTrafficPolicy: Local.
	ExternalLocal bool
	// ExternalIPs sets spec.externalIPs (see ExternalIP).
	ExternalIPs []netip.Addr
	// LoadBalancer makes a LoadBalancer Service of NoLoadBalancerClass,
	// so that no controller gives it a load balancer; SetIngress stands
	// in for one.
	LoadBalancer bool
	// SourceRanges sets spec.loadBalancerSourceRanges.
	SourceRanges []string
}

// NoLoadBalancerClass is the loadBalancerClass of the suites' LoadBalancer
// Services: no controller implements it, so on a cluster with a cloud
// provider no real load balancer is made (or billed) for them. Proxies
// ignore the class.
const NoLoadBalancerClass = "proxymodes.io/none"

var externalIPs atomic.Int32

// ExternalIP returns an address of addrplan.External that no other
// Service of this process got (the block's 254 addresses are reused after
// that, by when the first features' Services are long deleted).
func ExternalIP() netip.Addr {
	return addrplan.ExternalIP(int(externalIPs.Add(1)-1) % 254)
}

// Service creates a Service with TCP port 80 and UDP port 53 in front of
// the backends' TCP and UDP port 9000.
func (fx *Fixture) Service(a *A, o ServiceOptions) *corev1.Service {
	a.Helper()
	sel := o.Selector
	if sel == nil && !o.Selectorless {
		sel = fx.Selector()
	}
	udp := o.UDPPort
	if udp == 0 {
		udp = UDPPort
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: fx.Namespace()},
		Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: TCPPort, TargetPort: intstr.FromInt32(backend.TCPPort), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: int32(udp), TargetPort: intstr.FromInt32(backend.UDPPort), Protocol: corev1.ProtocolUDP},
		}},
	}
	svc.Spec.Ports = append(svc.Spec.Ports, o.ExtraPorts...)
	if o.NodePort {
		svc.Spec.Type = corev1.ServiceTypeNodePort
	}
	if o.InternalLocal {
		local := corev1.ServiceInternalTrafficPolicyLocal
		svc.Spec.InternalTrafficPolicy = &local
	}
	if o.ExternalLocal {
		// Only a LoadBalancer Service gets a healthCheckNodePort; its
		// load balancer never comes, which the proxier does not need.
		o.LoadBalancer = true
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}
	if o.LoadBalancer {
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.LoadBalancerClass = ptr.To(NoLoadBalancerClass)
		svc.Spec.LoadBalancerSourceRanges = o.SourceRanges
	}
	for _, ip := range o.ExternalIPs {
		svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, ip.String())
	}
	SetAffinity(svc, o.Affinity)
	created, err := fx.c.Client().CoreV1().Services(fx.Namespace()).Create(a.Ctx, svc, metav1.CreateOptions{})
	if err != nil && externalIPsDenied(err, svc, a.Cluster.Info().Provider) {
		a.Skipf("the cluster's API server refuses Services with externalIPs (its DenyServiceExternalIPs admission plugin: %v), so no proxy there can be given one to check", err)
	}
	if err != nil {
		a.Fatalf("creating Service %s: %v", o.Name, err)
	}
	fx.mu.Lock()
	fx.services = append(fx.services, o.Name)
	fx.mu.Unlock()
	a.Logf("Service %s/%s: ClusterIP %s%s", fx.Namespace(), o.Name, created.Spec.ClusterIP, nodePortNote(created))
	return created
}

// externalIPsDenied tells the refusal of the DenyServiceExternalIPs
// admission plugin, which a cluster's owner may enable: then an existing
// cluster cannot have the Service the check needs, a limit of the
// provider, not a failure of its proxy. The labs this harness builds
// never enable it, so there it stays a failure.
func externalIPsDenied(err error, svc *corev1.Service, provider string) bool {
	return provider == "existing" && len(svc.Spec.ExternalIPs) > 0 &&
		apierrors.IsForbidden(err) && strings.Contains(err.Error(), "Use of external IPs is denied")
}

func nodePortNote(s *corev1.Service) string {
	var np []string
	for _, p := range s.Spec.Ports {
		if p.NodePort != 0 {
			np = append(np, fmt.Sprintf("%s=%d", p.Name, p.NodePort))
		}
	}
	if s.Spec.HealthCheckNodePort != 0 {
		np = append(np, fmt.Sprintf("health=%d", s.Spec.HealthCheckNodePort))
	}
	if len(np) == 0 {
		return ""
	}
	return ", NodePorts " + strings.Join(np, " ")
}

// SetIngress gives a LoadBalancer Service the load balancer ingress IPs
// in its status, as a load balancer controller does once it has made one
// (VIP mode: the load balancer delivers packets with these addresses as
// their destination).
func (fx *Fixture) SetIngress(a *A, name string, ips ...netip.Addr) {
	a.Helper()
	svcs := fx.c.Client().CoreV1().Services(fx.Namespace())
	for try := 0; ; try++ {
		svc, err := svcs.Get(a.Ctx, name, metav1.GetOptions{})
		if err != nil {
			a.Fatalf("getting Service %s: %v", name, err)
		}
		svc.Status.LoadBalancer.Ingress = nil
		for _, ip := range ips {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress,
				corev1.LoadBalancerIngress{IP: ip.String(), IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)})
		}
		_, err = svcs.UpdateStatus(a.Ctx, svc, metav1.UpdateOptions{})
		if err == nil {
			a.Logf("Service %s: load balancer ingress %v", name, ips)
			return
		}
		if !apierrors.IsConflict(err) || try > 5 {
			a.Fatalf("setting the load balancer ingress of Service %s: %v", name, err)
		}
	}
}

// SetAffinity sets ClientIP affinity with a timeout (d > 0) or None.
func SetAffinity(svc *corev1.Service, d time.Duration) {
	if d <= 0 {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityNone
		svc.Spec.SessionAffinityConfig = nil
		return
	}
	secs := int32(d / time.Second)
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &secs}}
}

// UpdateAffinity changes a live Service's affinity.
func (fx *Fixture) UpdateAffinity(a *A, name string, d time.Duration) {
	a.Helper()
	fx.UpdateService(a, name, func(svc *corev1.Service) { SetAffinity(svc, d) })
}

// UpdateService applies change to a live Service, again on a conflict.
func (fx *Fixture) UpdateService(a *A, name string, change func(*corev1.Service)) *corev1.Service {
	a.Helper()
	svcs := fx.c.Client().CoreV1().Services(fx.Namespace())
	for try := 0; ; try++ {
		svc, err := svcs.Get(a.Ctx, name, metav1.GetOptions{})
		if err != nil {
			a.Fatalf("getting Service %s: %v", name, err)
		}
		change(svc)
		updated, err := svcs.Update(a.Ctx, svc, metav1.UpdateOptions{})
		if err == nil {
			return updated
		}
		if !apierrors.IsConflict(err) || try > 5 {
			a.Fatalf("updating Service %s: %v", name, err)
		}
	}
}

// DeleteService deletes one of the feature's Services now.
func (fx *Fixture) DeleteService(a *A, name string) {
	a.Helper()
	if err := fx.c.Client().CoreV1().Services(fx.Namespace()).Delete(a.Ctx, name, metav1.DeleteOptions{}); err != nil {
		a.Fatalf("deleting Service %s: %v", name, err)
	}
	fx.mu.Lock()
	fx.services = without(fx.services, name)
	fx.mu.Unlock()
}

// without returns list without the first occurrence of name.
func without(list []string, name string) []string {
	for i, s := range list {
		if s == name {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

func (fx *Fixture) cleanup(t *testing.T) {
	fx.mu.Lock()
	pods, svcs, slices := fx.pods, fx.services, fx.slices
	fx.pods, fx.services, fx.slices = nil, nil, nil
	fx.mu.Unlock()
	ctx := context.Background()
	for _, name := range slices {
		if err := fx.c.Client().DiscoveryV1().EndpointSlices(fx.Namespace()).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("teardown: deleting EndpointSlice %s: %v", name, err)
		}
	}
	for _, s := range svcs {
		if err := fx.c.Client().CoreV1().Services(fx.Namespace()).Delete(ctx, s, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("teardown: deleting Service %s: %v", s, err)
		}
	}
	for _, p := range pods {
		// A pod that was broken on purpose is restored first; Restore of a
		// healthy pod is a no-op.
		fx.c.Restore(ctx, p)
		if err := fx.c.DeletePod(ctx, p.Namespace, p.Name); err != nil {
			t.Errorf("teardown: deleting pod %s: %v", p, err)
		}
	}
}

// VIP is a Service's ClusterIP and port.
func VIP(svc *corev1.Service, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), port)
}

// NodePort returns the node port of a Service port by name.
func NodePort(svc *corev1.Service, name string) uint16 {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return uint16(p.NodePort)
		}
	}
	return 0
}

// Names returns the pods' names, sorted.
func Names(pods []cluster.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// Probe opens n connections through the cluster. Inside an Eventually's
// check they are settling probes (probe.Target.Settling).
func (a *A) Probe(t probe.Target, n int, timeout time.Duration) probe.Summary {
	a.Helper()
	t.Settling = t.Settling || a.settling
	return a.Cluster.Probe(a.Ctx, t, n, timeout)
}

// Eventually repeats a probe until ok accepts its summary, and fails with
// the last summary after limit. It is only for waiting until the proxier
// has programmed a change; measurements are taken after it returns, and it
// returns only once every proxier is quiet as well (see EventuallyTrue).
func (a *A) Eventually(what string, limit time.Duration, run func() probe.Summary, ok func(probe.Summary) bool) probe.Summary {
	a.Helper()
	var s probe.Summary
	a.EventuallyTrue(what, limit, func() (bool, string) {
		s = run()
		return ok(s), "last probe: " + s.String()
	})
	return s
}

// EventuallyTrue repeats check until it reports true, and fails with its
// last description after limit. Then it waits until every node's proxier
// is quiet (Quiet), so that what the caller measures next is the
// converged rules, not a sync still running on some node. ConvergedSince
// tells when check first held.
func (a *A) EventuallyTrue(what string, limit time.Duration, check func() (ok bool, last string)) {
	a.Helper()
	start := time.Now()
	deadline := start.Add(limit)
	lastLog := start
	for {
		ok, last := a.settle(check)
		if ok {
			a.converged = time.Now()
			a.Logf("%s: after %s", what, time.Since(start).Round(10*time.Millisecond))
			a.Quiet(what)
			return
		}
		if time.Now().After(deadline) || a.Ctx.Err() != nil {
			a.Fatalf("%s: still not so after %s; %s%s", what, limit, last, a.Run.syncNote())
		}
		if time.Since(lastLog) > 5*time.Second {
			a.Logf("%s: not yet after %s; %s", what, time.Since(start).Round(time.Second), last)
			lastLog = time.Now()
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// settle runs an Eventually's check with its probes marked as settling.
func (a *A) settle(check func() (bool, string)) (bool, string) {
	a.settling = true
	defer func() { a.settling = false }()
	return check()
}

// ConvergedSince is the time from start until the last Eventually's check
// held, without the wait for quiet proxiers that followed.
func (a *A) ConvergedSince(start time.Time) time.Duration { return a.converged.Sub(start) }

// ServedBy reports whether every connection succeeded and exactly the
// named backends answered (each at least once).
func ServedBy(s probe.Summary, names ...string) bool { return labtest.Served(s, names...) }

// Distribution renders counts over the given backends ("a=300 b=290 ...").
func Distribution(s probe.Summary, names []string) string {
	c := s.Counts()
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s=%d", n, c[n]))
	}
	for n, k := range c {
		if !contains(names, n) {
			parts = append(parts, fmt.Sprintf("UNEXPECTED %s=%d", n, k))
		}
	}
	if e := s.Errors(); len(e) > 0 {
		// The first error says what kind of failure it was (a timeout, a
		// refusal, no route), which a count alone hides.
		parts = append(parts, fmt.Sprintf("errors=%d (first: %v)", len(e), e[0]))
	}
	return strings.Join(parts, " ")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
