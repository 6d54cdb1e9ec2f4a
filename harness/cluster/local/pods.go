package local

import (
	"bufio"
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/proc"
)

// backendProc is a running echo backend.
type backendProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func (b *backendProc) stop() {
	proc.Stop([]int{b.cmd.Process.Pid}, 5*time.Second)
	<-b.exited
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// vethName is the node-side name of a pod's veth; the kernel allows 15
// characters, so it is derived from a hash of the pod's key.
func vethName(key string) string {
	h := fnv.New32a()
	h.Write([]byte(key))
	return fmt.Sprintf("veth%08x", h.Sum32())
}

// AddPod creates the Pod object, wires a namespace for it on its node,
// starts the echo backend there and then reports the Pod Running and Ready
// with its IP, so the real endpointslice controller publishes it.
func (l *Lab) AddPod(ctx context.Context, spec cluster.PodSpec) (cluster.Pod, error) {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.Name == "" {
		return cluster.Pod{}, fmt.Errorf("pod needs a name")
	}
	key := podKey(spec.Namespace, spec.Name)
	l.mu.Lock()
	k, j, err := l.placePod(spec)
	if err != nil {
		l.mu.Unlock()
		return cluster.Pod{}, err
	}
	pod := cluster.Pod{Namespace: spec.Namespace, Name: spec.Name, Node: nodeName(k),
		IP: addrplan.PodIP(k, j).Addr(), NS: l.prefix + "pod-" + spec.Namespace + "." + spec.Name}
	// Reserve the slot before the slow part so concurrent adds don't collide.
	l.st.Pods = append(l.st.Pods, podState{Pod: pod, Index: j})
	l.mu.Unlock()

	if err := l.createPod(ctx, spec, pod, k, j); err != nil {
		l.removePod(context.Background(), key)
		return cluster.Pod{}, fmt.Errorf("pod %s: %w", key, err)
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
	for j := 0; j < addrplan.MaxPodsPerNode; j++ {
		if !used[[2]int{node, j}] {
			return node, j, nil
		}
	}
	return 0, 0, fmt.Errorf("%s is full (%d pods)", nodeName(node), addrplan.MaxPodsPerNode)
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
	created, err := l.client.CoreV1().Pods(spec.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if err := netlab.CreateNS(pod.NS); err != nil {
		return err
	}
	nodeNS := l.nodeNS(k)
	veth := vethName(podKey(pod.Namespace, pod.Name))
	if err := netlab.Veth(netlab.End{NS: pod.NS, Name: podIface, Addr: addrplan.PodIP(k, j)},
		netlab.End{NS: nodeNS, Name: veth}); err != nil {
		return err
	}
	if err := netlab.Enslave(nodeNS, veth, podBridge); err != nil {
		return err
	}
	// Only the lab range is routed: a pod has no way out.
	if err := netlab.Route(pod.NS, addrplan.Lab, addrplan.PodGateway(k).Addr(), ""); err != nil {
		return err
	}
	if err := l.startBackend(pod); err != nil {
		return err
	}
	return l.markReady(ctx, created, pod)
}

func (l *Lab) startBackend(pod cluster.Pod) error {
	cfg := backend.Config{Name: pod.Name, HTTPPort: backend.HTTPPort, TCPPort: backend.TCPPort, UDPPort: backend.UDPPort}
	cmd, err := agent.Command(l.opts.Name, pod.NS, backend.Role, cfg.Args()...)
	if err != nil {
		return err
	}
	logPath := filepath.Join(l.dir, "pods", pod.Namespace+"."+pod.Name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	bp := &backendProc{cmd: cmd, exited: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == backend.ReadyLine
		ready <- ok
		for sc.Scan() { // drain, so the backend never blocks on stdout
		}
	}()
	go func() { cmd.Wait(); close(bp.exited) }()
	select {
	case ok := <-ready:
		if !ok {
			bp.stop()
			return fmt.Errorf("backend in %s did not start; see %s", pod.NS, logPath)
		}
	case <-time.After(30 * time.Second):
		bp.stop()
		return fmt.Errorf("backend in %s not ready after 30s; see %s", pod.NS, logPath)
	}
	l.mu.Lock()
	l.procs[podKey(pod.Namespace, pod.Name)] = bp
	l.mu.Unlock()
	return nil
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
	_, err := l.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

func ptrTo[T any](v T) *T { return &v }

// DeletePod stops the backend, removes the pod's namespace and deletes the
// Pod object.
func (l *Lab) DeletePod(ctx context.Context, namespace, name string) error {
	key := podKey(namespace, name)
	l.mu.Lock()
	found := false
	for _, p := range l.st.Pods {
		found = found || podKey(p.Namespace, p.Name) == key
	}
	l.mu.Unlock()
	if !found {
		return fmt.Errorf("no pod %s in lab %s", key, l.opts.Name)
	}
	return l.removePod(ctx, key)
}

func (l *Lab) removePod(ctx context.Context, key string) error {
	l.mu.Lock()
	bp := l.procs[key]
	delete(l.procs, key)
	var pod cluster.Pod
	for i, p := range l.st.Pods {
		if podKey(p.Namespace, p.Name) == key {
			pod = p.Pod
			l.st.Pods = append(l.st.Pods[:i], l.st.Pods[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	if bp != nil {
		bp.stop()
	}
	var err error
	if pod.NS != "" {
		err = netlab.DeleteNS(pod.NS)
	}
	ns, name, _ := strings.Cut(key, "/")
	zero := int64(0)
	if derr := l.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); derr != nil && !apierrors.IsNotFound(derr) && err == nil {
		err = derr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
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

// blackholeRule drops every packet that enters the pod, inside the pod's
// own namespace; the host's rules are never touched.
var blackholeRule = []string{"-m", "comment", "--comment", "proxymodes blackhole", "-j", "DROP"}

// Break makes the pod's backend fail while its Pod stays Ready.
func (l *Lab) Break(ctx context.Context, pod cluster.Pod, f cluster.Fault) error {
	key := podKey(pod.Namespace, pod.Name)
	if err := l.setFault(key, f); err != nil {
		return err
	}
	switch f {
	case cluster.Refuse:
		l.mu.Lock()
		bp := l.procs[key]
		delete(l.procs, key)
		l.mu.Unlock()
		if bp != nil {
			bp.stop()
		}
		return nil
	case cluster.Blackhole:
		return podIPTables(pod.NS, func(ipt *iptables.IPTables) error {
			return ipt.Insert("filter", "INPUT", 1, blackholeRule...)
		})
	}
	return fmt.Errorf("unknown fault %q (use %q or %q)", f, cluster.Refuse, cluster.Blackhole)
}

// Restore undoes Break.
func (l *Lab) Restore(ctx context.Context, pod cluster.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	l.mu.Lock()
	var f cluster.Fault
	for _, p := range l.st.Pods {
		if podKey(p.Namespace, p.Name) == key {
			f = p.Fault
		}
	}
	l.mu.Unlock()
	var err error
	switch f {
	case cluster.Refuse:
		err = l.startBackend(pod)
	case cluster.Blackhole:
		err = podIPTables(pod.NS, func(ipt *iptables.IPTables) error {
			return ipt.DeleteIfExists("filter", "INPUT", blackholeRule...)
		})
	}
	if err != nil {
		return err
	}
	return l.setFault(key, "")
}

func (l *Lab) setFault(key string, f cluster.Fault) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.st.Pods {
		if podKey(p.Namespace, p.Name) == key {
			if f != "" && p.Fault != "" {
				return fmt.Errorf("pod %s is already broken (%s): Restore it first", key, p.Fault)
			}
			l.st.Pods[i].Fault = f
			return l.save()
		}
	}
	return fmt.Errorf("no pod %s in lab %s", key, l.opts.Name)
}

// podIPTables runs fn with an iptables handle whose commands execute inside
// the pod's namespace (they are forked from a thread that entered it).
func podIPTables(ns string, fn func(*iptables.IPTables) error) error {
	return netlab.Do(ns, func() error {
		ipt, err := iptables.New(iptables.Timeout(5))
		if err != nil {
			return err
		}
		return fn(ipt)
	})
}
