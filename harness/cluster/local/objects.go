package local

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
	"github.com/proxymodes/proxymodes/harness/hostipvs"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// buildNetwork picks the kernel, then has the data plane lay out the
// fabric, nodes and management links.
func (l *Lab) buildNetwork(ctx context.Context) error {
	kernel, err := l.chooseKernel()
	if err != nil {
		return err
	}
	topo := plane.Topology{Lab: l.opts.Name, Prefix: l.prefix, StateDir: l.dir, Nodes: l.opts.Nodes, Outer: l.sandbox()}
	if topo.Outer != "" {
		if err := netlab.CreateNS(topo.Outer); err != nil {
			return err
		}
	}
	if kernel == KernelUML {
		gs, err := startGuests(ctx, l)
		if err != nil {
			return err
		}
		l.plane = gs
	} else {
		l.plane = plane.NewHost()
	}
	l.st.Kernel = l.plane.Kernel()
	if err := l.plane.Build(ctx, topo); err != nil {
		return err
	}
	for k := 0; k < l.opts.Nodes; k++ {
		l.st.Nodes = append(l.st.Nodes, cluster.Node{
			Name: plane.NodeName(k), IP: addrplan.NodeIP(k).Addr(), PodCIDR: addrplan.PodCIDR(k), NS: plane.NodeNS(l.prefix, k),
		})
	}
	return nil
}

// chooseKernel honours Options.Kernel, and otherwise uses a guest only when
// the proxy mode needs what the host kernel lacks.
func (l *Lab) chooseKernel() (string, error) {
	if l.opts.Proxier != nil && l.opts.Proxier.Mode == "nftables" && l.opts.Kernel == KernelUML {
		return "", fmt.Errorf("the nftables mode needs nf_tables, which the user-mode Linux guest's kernel lacks: run it in the host kernel (leave LAB_KERNEL unset)")
	}
	if l.opts.Kernel != "" {
		return l.opts.Kernel, nil
	}
	if l.opts.Proxier != nil && l.opts.Proxier.Mode == "ipvs" && !hostipvs.Available() {
		l.log.Logf("lab %s: the host kernel has no ip_vs, so the nodes run in a user-mode Linux guest", l.opts.Name)
		return KernelUML, nil
	}
	return KernelHost, nil
}

// registerNodes creates a Ready Node object per node: the endpointslice
// controller ignores pods on nodes it does not know.
func (l *Lab) registerNodes(ctx context.Context) error {
	for _, n := range l.st.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux",
			}},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		}
		created, err := l.Client().CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		created.Status = corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IP.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "LabNodeReady",
				LastHeartbeatTime: now, LastTransitionTime: now,
			}},
		}
		if _, err := l.Client().CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startProxiers(ctx context.Context) error {
	return l.runProxiers(ctx, l.opts.Proxier.Args)
}

func (l *Lab) runProxiers(ctx context.Context, args []string) error {
	po := l.opts.Proxier
	if err := po.resolve(l.opts.BuildOutput); err != nil {
		return err
	}
	return l.plane.StartProxiers(ctx, plane.ProxierSpec{Binary: po.Binary, Mode: po.Mode, Kubeconfig: l.st.Kubeconfig,
		Args: append(po.implArgs(), args...), Env: po.Env, StartTimeout: po.StartTimeout})
}

// RestartProxiers stops every node's proxier and starts it again with
// extra flags (another --ipvs-scheduler, say). The data plane keeps its
// rules in between, as in a rolling upgrade.
func (l *Lab) RestartProxiers(ctx context.Context, extra ...string) error {
	if l.opts.Proxier == nil {
		return fmt.Errorf("lab %s runs no proxier", l.opts.Name)
	}
	for _, n := range l.Info().Nodes {
		// A node whose proxier was already stopped is fine.
		l.plane.StopProxier(ctx, n.Name)
	}
	return l.runProxiers(ctx, append(append([]string(nil), l.opts.Proxier.Args...), extra...))
}

// StopProxiers implements cluster.ProxierRestarter.
func (l *Lab) StopProxiers(ctx context.Context) error {
	if l.opts.Proxier == nil {
		return fmt.Errorf("lab %s runs no proxier", l.opts.Name)
	}
	for _, n := range l.Info().Nodes {
		if err := l.plane.StopProxier(ctx, n.Name); err != nil {
			return err
		}
	}
	return nil
}

// StartProxiers implements cluster.ProxierRestarter: the same proxier,
// with the same flags.
func (l *Lab) StartProxiers(ctx context.Context) error {
	if l.opts.Proxier == nil {
		return fmt.Errorf("lab %s runs no proxier", l.opts.Name)
	}
	return l.startProxiers(ctx)
}

// SwitchProxiers replaces every node's proxier with another mode or
// implementation (nil: none), as an operator changing kube-proxy's mode
// would: stop the old ones, run the old binary's --cleanup in each node
// (both implementations remove every mode's rules with it), start the new
// ones. Benchmarks use it to compare proxiers over the same Services.
func (l *Lab) SwitchProxiers(ctx context.Context, po *ProxierOptions) error {
	if po != nil {
		if err := po.resolve(l.opts.BuildOutput); err != nil {
			return err
		}
	}
	if old := l.opts.Proxier; old != nil {
		for _, n := range l.Info().Nodes {
			l.plane.StopProxier(ctx, n.Name) // a node whose proxier already stopped is fine
			if err := l.cleanup(ctx, old, n); err != nil {
				return err
			}
		}
	}
	l.opts.Proxier = po
	if po == nil {
		return nil
	}
	return l.runProxiers(ctx, po.Args)
}

// cleanup runs a proxier's --cleanup in a node. kube-proxy's, after its
// ipvs mode in the UML guest, fails its first iptables-restore ("line 7
// failed" in nat) having removed part of its state, and succeeds when run
// again; a third failure is real.
func (l *Lab) cleanup(ctx context.Context, po *ProxierOptions, n cluster.Node) error {
	argv := []string{po.Binary, "--cleanup"}
	if len(po.Env) > 0 {
		// The same environment as its runs: with another PATH,
		// kube-proxy would clean the other iptables backend's rules.
		argv = append(append([]string{"env"}, po.Env...), argv...)
	}
	var err error
	var out string
	for attempt := 0; attempt < 3; attempt++ {
		if out, err = l.plane.Exec(ctx, n.NS, argv); err == nil {
			return nil
		}
	}
	return fmt.Errorf("cleaning up %s's rules on %s failed 3 times: %w\n%s", po.Impl, n.Name, err, out)
}

// OpenFlow opens a flow (probe.Flow) from a lab namespace, wherever it
// lives.
func (l *Lab) OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (cluster.Flow, error) {
	return l.plane.OpenFlow(ctx, ns, proto, dst)
}

// ProxierMetrics returns a node's proxier metrics (Prometheus text).
func (l *Lab) ProxierMetrics(ctx context.Context, node string) (string, error) {
	return l.plane.ProxierMetrics(ctx, node)
}

// Proxier is what the nodes run (nil without proxiers).
func (l *Lab) Proxier() *ProxierOptions {
	if l.opts.Proxier == nil {
		return nil
	}
	p := *l.opts.Proxier
	return &p
}

// StopProxier stops one node's proxier and leaves its rules in place, as
// a crashed or upgraded proxier would.
func (l *Lab) StopProxier(node string) error {
	return l.plane.StopProxier(context.Background(), node)
}

// ProxierBinary is the proxier the lab runs ("" without one).
func (l *Lab) ProxierBinary() string {
	if l.opts.Proxier == nil {
		return ""
	}
	return l.opts.Proxier.Binary
}

// Probe runs a probe from one of the lab's namespaces, wherever it lives.
func (l *Lab) Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary {
	return l.plane.Probe(ctx, t, n, timeout)
}

// IPTables dumps the rules of one of the lab's namespaces.
func (l *Lab) IPTables(ctx context.Context, ns string) (string, error) {
	return l.plane.IPTables(ctx, ns)
}

// Exec runs a command inside one of the lab's namespaces.
func (l *Lab) Exec(ctx context.Context, ns string, argv ...string) (string, error) {
	return l.plane.Exec(ctx, ns, argv)
}

// SaveLogs copies the control plane's, the proxiers' and the pods' logs
// into dst, so they survive Down; tests call it when they fail.
func (l *Lab) SaveLogs(dst string) error {
	dirs := []string{l.dir}
	if gs, ok := l.plane.(*guests); ok {
		dirs = append(dirs, gs.stateDirs()...)
	}
	for _, dir := range dirs {
		err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || !strings.HasSuffix(path, ".log") {
				return err
			}
			rel, _ := filepath.Rel(dir, path)
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			target := filepath.Join(dst, rel)
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			return os.WriteFile(target, b, 0o644)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// AddPod creates the Pod object, has the data plane wire the pod and start
// its echo backend, and then reports the Pod Running and Ready with its IP,
// so the real endpointslice controller publishes it.
func (l *Lab) AddPod(ctx context.Context, spec cluster.PodSpec) (cluster.Pod, error) {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.Name == "" {
		return cluster.Pod{}, fmt.Errorf("pod needs a name")
	}
	l.mu.Lock()
	k, j, err := l.placePod(spec)
	if err != nil {
		l.mu.Unlock()
		return cluster.Pod{}, err
	}
	pod := cluster.Pod{Namespace: spec.Namespace, Name: spec.Name, Node: plane.NodeName(k),
		IP: addrplan.PodIP(k, j).Addr(), NS: plane.PodNS(l.prefix, spec.Namespace, spec.Name), AltTCPPort: spec.AltTCPPort}
	// Reserve the slot before the slow part so concurrent adds don't collide.
	l.st.Pods = append(l.st.Pods, podState{Pod: pod, Index: j})
	l.mu.Unlock()

	if err := l.createPod(ctx, spec, pod, k, j); err != nil {
		l.removePod(context.Background(), pod)
		return cluster.Pod{}, fmt.Errorf("pod %s: %w", pod, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return pod, l.save()
}

// placePod picks the node (the requested one, or the least loaded) and a
// free address index on it. Callers hold l.mu.
func (l *Lab) placePod(spec cluster.PodSpec) (node, index int, err error) {
	count := make([]int, len(l.st.Nodes))
	used := map[[2]int]bool{}
	node = -1
	for _, p := range l.st.Pods {
		if p.Namespace == spec.Namespace && p.Name == spec.Name {
			return 0, 0, fmt.Errorf("pod %s/%s already exists", spec.Namespace, spec.Name)
		}
		k := nodeIndex(l.st.Nodes, p.Node)
		count[k]++
		used[[2]int{k, p.Index}] = true
	}
	if spec.Node != "" {
		node = nodeIndex(l.st.Nodes, spec.Node)
		if node < 0 {
			return 0, 0, fmt.Errorf("no node %q in lab %s", spec.Node, l.opts.Name)
		}
	} else {
		for k := range count {
			if node < 0 || count[k] < count[node] {
				node = k
			}
		}
	}
	j, ok := nextFree(l.st.NextPodIndex, node, func(j int) bool { return used[[2]int{node, j}] })
	if !ok {
		return 0, 0, fmt.Errorf("%s is full (%d pods)", plane.NodeName(node), addrplan.MaxPodsPerNode)
	}
	for len(l.st.NextPodIndex) <= node {
		l.st.NextPodIndex = append(l.st.NextPodIndex, 0)
	}
	l.st.NextPodIndex[node] = (j + 1) % addrplan.MaxPodsPerNode
	return node, j, nil
}

// nextFree hands out pod addresses as CNI's host-local IPAM does: the
// first free one after the last one given, wrapping at the end of the
// range. Taking the lowest free one instead gave a deleted pod's address
// to the next pod at once, which real clusters do only after the range
// wraps. Proxiers then met an endpoint address leaving and coming back
// within seconds, a path that no check means to test (kube-proxy's IPVS
// mode moves such an address off its graceful-termination list). The one
// time a new endpoint stayed broken, it had taken the address of one
// deleted 15 s before: CI, 2026-12-07, ipvs/kube-proxy in the guest, every
// connection to it refused for 69 s.
func nextFree(next []int, node int, used func(int) bool) (int, bool) {
	start := 0
	if node < len(next) {
		start = next[node]
	}
	for i := 0; i < addrplan.MaxPodsPerNode; i++ {
		j := (start + i) % addrplan.MaxPodsPerNode
		if !used(j) {
			return j, true
		}
	}
	return 0, false
}

func nodeIndex(nodes []cluster.Node, name string) int {
	for k, n := range nodes {
		if n.Name == name {
			return k
		}
	}
	return -1
}

func (l *Lab) createPod(ctx context.Context, spec cluster.PodSpec, pod cluster.Pod, k, j int) error {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName: pod.Node,
			Containers: []corev1.Container{{
				Name:  "backend",
				Image: "proxymodes.invalid/backend:lab", // never pulled: the lab runs the backend itself
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: backend.HTTPPort, Protocol: corev1.ProtocolTCP},
					{Name: "tcp", ContainerPort: backend.TCPPort, Protocol: corev1.ProtocolTCP},
					{Name: "udp", ContainerPort: backend.UDPPort, Protocol: corev1.ProtocolUDP},
				},
			}},
		},
	}
	if pod.AltTCPPort != 0 {
		c := &obj.Spec.Containers[0]
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: cluster.AltPortName, ContainerPort: int32(pod.AltTCPPort), Protocol: corev1.ProtocolTCP})
	}
	created, err := l.Client().CoreV1().Pods(spec.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if err := l.plane.AddPod(ctx, plane.PodSlot{Pod: pod, Node: k, Index: j}); err != nil {
		return err
	}
	return l.markReady(ctx, created, pod)
}

func (l *Lab) markReady(ctx context.Context, p *corev1.Pod, pod cluster.Pod) error {
	now := metav1.Now()
	node := l.st.Nodes[nodeIndex(l.st.Nodes, pod.Node)]
	p.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    node.IP.String(),
		HostIPs:   []corev1.HostIP{{IP: node.IP.String()}},
		PodIP:     pod.IP.String(),
		PodIPs:    []corev1.PodIP{{IP: pod.IP.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "backend", Ready: true, Started: ptrTo(true), Image: p.Spec.Containers[0].Image,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	_, err := l.Client().CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

func ptrTo[T any](v T) *T { return &v }

// DeletePod stops the backend, removes the pod's namespace and deletes the
// Pod object.
func (l *Lab) DeletePod(ctx context.Context, namespace, name string) error {
	p, ok := l.findPod(podKey(namespace, name))
	if !ok {
		return fmt.Errorf("no pod %s/%s in lab %s", namespace, name, l.opts.Name)
	}
	return l.removePod(ctx, p.Pod)
}

// TerminatePod implements cluster.PodTerminator. The lab is the kubelet
// here: it gives the Pod its deletionTimestamp and leaves the backend
// serving, as a draining container would be, until DeletePod; nothing
// ends it when grace runs out.
func (l *Lab) TerminatePod(ctx context.Context, namespace, name string, grace time.Duration) error {
	if _, ok := l.findPod(podKey(namespace, name)); !ok {
		return fmt.Errorf("no pod %s/%s in lab %s", namespace, name, l.opts.Name)
	}
	seconds := int64(grace / time.Second)
	return l.Client().CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &seconds})
}

func (l *Lab) findPod(key string) (podState, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.st.Pods {
		if podKey(p.Namespace, p.Name) == key {
			return p, true
		}
	}
	return podState{}, false
}

func (l *Lab) removePod(ctx context.Context, pod cluster.Pod) error {
	err := l.plane.RemovePod(ctx, pod)
	zero := int64(0)
	if derr := l.Client().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); derr != nil && !apierrors.IsNotFound(derr) && err == nil {
		err = derr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.st.Pods {
		if p.Namespace == pod.Namespace && p.Name == pod.Name {
			l.st.Pods = append(l.st.Pods[:i], l.st.Pods[i+1:]...)
			break
		}
	}
	if serr := l.save(); err == nil {
		err = serr
	}
	return err
}

// Pods lists the lab's pods.
func (l *Lab) Pods() []cluster.Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]cluster.Pod, 0, len(l.st.Pods))
	for _, p := range l.st.Pods {
		out = append(out, p.Pod)
	}
	return out
}

// Break makes the pod's backend fail while its Pod stays Ready.
func (l *Lab) Break(ctx context.Context, pod cluster.Pod, f cluster.Fault) error {
	if f != cluster.Refuse && f != cluster.Blackhole {
		return fmt.Errorf("unknown fault %q (use %q or %q)", f, cluster.Refuse, cluster.Blackhole)
	}
	if err := l.setFault(pod, f); err != nil {
		return err
	}
	return l.plane.Break(ctx, pod, f)
}

// Restore undoes Break.
func (l *Lab) Restore(ctx context.Context, pod cluster.Pod) error {
	p, ok := l.findPod(podKey(pod.Namespace, pod.Name))
	if !ok {
		return fmt.Errorf("no pod %s in lab %s", pod, l.opts.Name)
	}
	if p.Fault == "" {
		return nil
	}
	if err := l.plane.Restore(ctx, pod, p.Fault); err != nil {
		return err
	}
	return l.setFault(pod, "")
}

func (l *Lab) setFault(pod cluster.Pod, f cluster.Fault) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.st.Pods {
		if p.Namespace == pod.Namespace && p.Name == pod.Name {
			if f != "" && p.Fault != "" {
				return fmt.Errorf("pod %s is already broken (%s): Restore it first", pod, p.Fault)
			}
			l.st.Pods[i].Fault = f
			return l.save()
		}
	}
	return fmt.Errorf("no pod %s in lab %s", pod, l.opts.Name)
}

var _ cluster.ProxierRestarter = (*Lab)(nil)
