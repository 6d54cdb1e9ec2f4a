// Package kube is what every provider of a real Kubernetes cluster shares:
// backend pods are real Pods of the echo image, and everything that must
// happen on a node (probes, UDP flows, faults in a pod's network
// namespace, rule dumps) runs through a Shell on that node, with the
// static proxymodes binary at NodeBinary and `ip netns exec` for pods.
//
// kind's Shell is `docker exec` into the node container; an existing
// cluster's is pods/exec into a privileged hostNetwork agent pod per node.
package kube

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/rules"
)

// NodeBinary is where the static proxymodes binary is on every node (kind
// copies it there; the agent image has it there).
const NodeBinary = "/usr/local/bin/proxymodes"

// Shell runs commands in a node's host network namespace.
type Shell interface {
	// Run runs argv on node with env added and returns its standard
	// output; a failure carries its standard error.
	Run(ctx context.Context, node string, env []string, argv ...string) (string, error)
	// Start runs argv on node with pipes to its standard input and output.
	// It lives until its input is closed (or it exits); Wait returns its
	// end. It outlives ctx-free callers, so it takes no context.
	Start(node string, env []string, argv ...string) (Process, error)
}

// Process is a command started by Shell.Start.
type Process interface {
	Stdin() io.WriteCloser
	Stdout() io.Reader
	// Wait waits for the end; its error carries the standard error.
	Wait() error
}

// Config is what a provider hands to New.
type Config struct {
	Info   cluster.Info
	REST   *rest.Config
	Client kubernetes.Interface
	Shell  Shell
	// Echo is the echo image; Pull its pull policy (Never for images
	// loaded into kind nodes).
	Echo string
	Pull corev1.PullPolicy
}

// Cluster implements cluster.Cluster but SaveLogs and Down, which are the
// provider's.
type Cluster struct {
	cfg  Config
	mu   sync.Mutex
	pods map[string]cluster.Pod
	next int
}

// New returns the shared part of a provider's cluster.
func New(cfg Config) *Cluster {
	return &Cluster{cfg: cfg, pods: map[string]cluster.Pod{}}
}

// Info implements cluster.Cluster.
func (c *Cluster) Info() cluster.Info { return c.cfg.Info }

// RESTConfig implements cluster.Cluster.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.cfg.REST) }

// Client implements cluster.Cluster.
func (c *Cluster) Client() kubernetes.Interface { return c.cfg.Client }

// Kernel names the kernel of the nodes' data plane.
func (c *Cluster) Kernel() string { return c.cfg.Info.Kernel }

// AddPod creates a Pod of the echo image pinned to a node and waits until
// it runs. It has no readiness probe: a broken backend (Break) must stay
// Ready, as in the local lab.
func (c *Cluster) AddPod(ctx context.Context, spec cluster.PodSpec) (cluster.Pod, error) {
	node := spec.Node
	if node == "" {
		c.mu.Lock()
		node = c.cfg.Info.Nodes[c.next%len(c.cfg.Info.Nodes)].Name
		c.next++
		c.mu.Unlock()
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptrTo(int64(0)),
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: echoContainer, Image: c.cfg.Echo, ImagePullPolicy: c.cfg.Pull,
				Args: []string{"--name", spec.Name},
				Ports: []corev1.ContainerPort{
					{Name: "tcp", ContainerPort: backend.TCPPort, Protocol: corev1.ProtocolTCP},
					{Name: "udp", ContainerPort: backend.UDPPort, Protocol: corev1.ProtocolUDP},
				},
			}},
		},
	}
	if spec.Drain {
		p.Spec.Containers[0].Args = append(p.Spec.Containers[0].Args, "--drain")
	}
	if spec.AltTCPPort != 0 {
		echo := &p.Spec.Containers[0]
		echo.Args = append(echo.Args, "--alt-tcp-port", strconv.Itoa(int(spec.AltTCPPort)))
		echo.Ports = append(echo.Ports, corev1.ContainerPort{Name: cluster.AltPortName, ContainerPort: int32(spec.AltTCPPort), Protocol: corev1.ProtocolTCP})
	}
	if _, err := c.cfg.Client.CoreV1().Pods(spec.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return cluster.Pod{}, err
	}
	pod := cluster.Pod{Namespace: spec.Namespace, Name: spec.Name, Node: node, AltTCPPort: spec.AltTCPPort}
	got, err := WaitRunning(ctx, c.cfg.Client, spec.Namespace, spec.Name, 2*time.Minute)
	if err != nil {
		return pod, err
	}
	pod.IP, _ = netip.ParseAddr(got.Status.PodIP)
	ns, err := c.podNetns(ctx, node, pod.IP)
	if err != nil {
		return pod, err
	}
	pod.NS = node + "/" + ns
	c.mu.Lock()
	c.pods[pod.String()] = pod
	c.mu.Unlock()
	return pod, nil
}

// WaitRunning waits until a Pod is Ready with an address.
func WaitRunning(ctx context.Context, client kubernetes.Interface, namespace, name string, limit time.Duration) (*corev1.Pod, error) {
	deadline := time.Now().Add(limit)
	for {
		got, err := client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil && PodReady(got) && got.Status.PodIP != "" {
			return got, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pod %s/%s not running after %s (%v)", namespace, name, limit, PodProblem(got, err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PodReady reports the Pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// PodProblem says why a Pod is not running: err, or its phase and the
// reasons its containers wait.
func PodProblem(p *corev1.Pod, err error) string {
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s", p.Status.Phase)
	for _, s := range p.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			fmt.Fprintf(&b, "; %s waiting: %s %s", s.Name, w.Reason, w.Message)
		}
	}
	return b.String()
}

// podNetns finds the network namespace (under /var/run/netns of the node)
// that holds the pod's address.
func (c *Cluster) podNetns(ctx context.Context, node string, ip netip.Addr) (string, error) {
	script := `for n in $(ls /var/run/netns); do ip -n "$n" -4 -o addr show | grep -q " $1/" && echo "$n"; done; true`
	out, err := c.cfg.Shell.Run(ctx, node, nil, "sh", "-c", script, "sh", ip.String())
	if err != nil {
		return "", err
	}
	if f := strings.Fields(out); len(f) == 1 {
		return f[0], nil
	}
	return "", fmt.Errorf("no single network namespace in %s's /var/run/netns holds %s (found %q): the node's container runtime must name pod namespaces there (containerd and CRI-O do)", node, ip, out)
}

// TerminatePod implements cluster.PodTerminator: the kubelet signals the
// backend (which drains if the pod was made with PodSpec.Drain) and kills
// it when grace ends; DeletePod ends it sooner.
func (c *Cluster) TerminatePod(ctx context.Context, namespace, name string, grace time.Duration) error {
	seconds := int64(grace / time.Second)
	return c.cfg.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &seconds})
}

// echoContainer names the backend's container in the pods AddPod makes.
const echoContainer = "echo"

// PodExecutor runs argv in a pod's container over pods/exec, as kubectl
// does: WebSocket first, SPDY when the server or a proxy refuses the
// upgrade.
func PodExecutor(rc *rest.Config, client kubernetes.Interface, namespace, pod, container string, argv []string, stdin bool) (remotecommand.Executor, error) {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: container, Command: argv, Stdin: stdin, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(rc, "GET", req.URL().String())
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(rc, "POST", req.URL())
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

// endDrain makes a draining backend that is terminating exit: the kubelet
// would wait out the grace period it was deleted with, even for a force
// delete. The backend is PID 1 of its container and handles SIGINT, so
// the signal reaches it from inside.
func (c *Cluster) endDrain(ctx context.Context, namespace, name string) error {
	ex, err := PodExecutor(c.cfg.REST, c.cfg.Client, namespace, name, echoContainer, []string{"sh", "-c", "kill -INT 1"}, false)
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard, Stderr: &stderr}); err != nil {
		return fmt.Errorf("ending the drain of %s/%s: %w: %s", namespace, name, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// DeletePod implements cluster.Cluster. It returns once nothing of the
// pod remains: the Pod object is gone and so is its network namespace.
// Between the two, a killed backend's namespace still answers TCP with RST
// (the same "connection refused" a REJECT rule gives), which would let a
// check mistake the dying pod for the proxy's work.
func (c *Cluster) DeletePod(ctx context.Context, namespace, name string) error {
	// A pod that is terminating already (TerminatePod) keeps its grace
	// period in the kubelet even when its object is force-deleted (a
	// shorter one given later was not honoured either), and a draining
	// backend serves on until then.
	if p, err := c.cfg.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{}); err == nil && p.DeletionTimestamp != nil {
		if err := c.endDrain(ctx, namespace, name); err != nil {
			return err
		}
	}
	err := c.cfg.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	c.mu.Lock()
	p, known := c.pods[namespace+"/"+name]
	delete(c.pods, namespace+"/"+name)
	c.mu.Unlock()
	node, netns, _ := strings.Cut(p.NS, "/")
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := c.cfg.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		gone := apierrors.IsNotFound(err)
		if gone && known && netns != "" {
			_, nserr := c.cfg.Shell.Run(ctx, node, nil, "test", "!", "-e", "/var/run/netns/"+netns)
			gone = nserr == nil
		}
		if gone {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s/%s (network namespace %s) still exists a minute after its deletion", namespace, name, p.NS)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Pods implements cluster.Cluster.
func (c *Cluster) Pods() []cluster.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]cluster.Pod, 0, len(c.pods))
	for _, p := range c.pods {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b cluster.Pod) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// Faults are rules in the pod's own namespace: the backend keeps running
// and the Pod stays Ready, exactly as the local lab's faults look on the
// wire (Refuse: TCP RST and ICMP port unreachable; Blackhole: silence).
var faultRules = map[cluster.Fault][][]string{
	cluster.Refuse: {
		{"-p", "tcp", "--dport", fmt.Sprint(backend.TCPPort), "-j", "REJECT", "--reject-with", "tcp-reset"},
		{"-p", "udp", "--dport", fmt.Sprint(backend.UDPPort), "-j", "REJECT", "--reject-with", "icmp-port-unreachable"},
	},
	cluster.Blackhole: {{"-j", "DROP"}},
}

// Break implements cluster.Cluster.
func (c *Cluster) Break(ctx context.Context, pod cluster.Pod, f cluster.Fault) error {
	rs, ok := faultRules[f]
	if !ok {
		return fmt.Errorf("unknown fault %q (use %q or %q)", f, cluster.Refuse, cluster.Blackhole)
	}
	for _, r := range rs {
		if _, err := c.Exec(ctx, pod.NS, append([]string{"iptables", "-I", "INPUT"}, r...)...); err != nil {
			return err
		}
	}
	return nil
}

// Restore implements cluster.Cluster.
func (c *Cluster) Restore(ctx context.Context, pod cluster.Pod) error {
	_, err := c.Exec(ctx, pod.NS, "iptables", "-F", "INPUT")
	return err
}

// Probe implements cluster.Cluster: the probe role runs on the node, in
// the namespace t.NS names.
func (c *Cluster) Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary {
	s := probe.Summary{Target: t}
	fail := func(err error) probe.Summary {
		for i := 0; i < n; i++ {
			s.Results = append(s.Results, probe.Result{Err: err})
		}
		return s
	}
	req, err := json.Marshal(probe.Request{Target: t, N: n, Timeout: timeout})
	if err != nil {
		return fail(err)
	}
	out, err := c.execEnv(ctx, t.NS, []string{"PROXYMODES_ROLE=" + probe.Role}, NodeBinary, string(req))
	if err != nil {
		return fail(err)
	}
	var ws []probe.WireResult
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		return fail(fmt.Errorf("probe output: %w: %q", err, out))
	}
	s.Results = probe.DecodeResults(ws)
	return s
}

// IPTables implements cluster.Cluster. A node may lack one iptables
// flavour, but a dump that no saver produced is an error: read as an
// empty rule set it would pass every "nothing left" check.
func (c *Cluster) IPTables(ctx context.Context, ns string) (string, error) {
	var b strings.Builder
	var errs []error
	for _, save := range rules.Savers() {
		out, err := c.Exec(ctx, ns, save)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", save, err))
			continue
		}
		b.WriteString(rules.Normalize(out))
	}
	if len(errs) == len(rules.Savers()) {
		return "", fmt.Errorf("no iptables rules could be read in %s: %w", ns, errors.Join(errs...))
	}
	return b.String(), nil
}

// Exec runs argv in a node ("<node>") or pod ("<node>/<netns>") namespace
// (suite.Execer).
func (c *Cluster) Exec(ctx context.Context, ns string, argv ...string) (string, error) {
	return c.execEnv(ctx, ns, nil, argv...)
}

func (c *Cluster) execEnv(ctx context.Context, ns string, env []string, argv ...string) (string, error) {
	node, argv := inNetns(ns, argv)
	return c.cfg.Shell.Run(ctx, node, env, argv...)
}

// inNetns splits "<node>[/<netns>]" and wraps argv to run in the netns.
func inNetns(ns string, argv []string) (string, []string) {
	node, netns, _ := strings.Cut(ns, "/")
	if netns == "" {
		return node, argv
	}
	return node, append([]string{"ip", "netns", "exec", netns}, argv...)
}

// OpenFlow implements cluster.FlowOpener: the flow's socket lives in a
// flow process on the node, driven over its stdin and stdout.
func (c *Cluster) OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (cluster.Flow, error) {
	node, argv := inNetns(ns, []string{NodeBinary, string(proto), dst.String()})
	p, err := c.cfg.Shell.Start(node, []string{"PROXYMODES_ROLE=" + probe.FlowRole}, argv...)
	if err != nil {
		return nil, err
	}
	f := &execFlow{p: p, out: bufio.NewReader(p.Stdout()), desc: ns + " -> " + dst.String()}
	line, err := f.out.ReadString('\n')
	if !strings.HasPrefix(line, "ok ") {
		werr := f.Close()
		return nil, fmt.Errorf("%s flow from %s to %s: %q %v (%v)", proto, ns, dst, line, err, werr)
	}
	f.desc = strings.TrimSpace(strings.TrimPrefix(line, "ok ")) + " -> " + string(proto) + "://" + dst.String()
	return f, nil
}

type execFlow struct {
	mu   sync.Mutex
	p    Process
	out  *bufio.Reader
	desc string
}

func (f *execFlow) Exchange(ctx context.Context, timeout time.Duration) (string, error) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), time.Millisecond)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := fmt.Fprintln(f.p.Stdin(), timeout); err != nil {
		return "", err
	}
	line, err := f.out.ReadBytes('\n')
	if err != nil {
		return "", fmt.Errorf("flow %s ended: %w", f.desc, err)
	}
	var r probe.FlowReply
	if err := json.Unmarshal(line, &r); err != nil {
		return "", err
	}
	return r.Backend, r.Err.Err()
}

func (f *execFlow) Close() error {
	f.p.Stdin().Close()
	return f.p.Wait()
}

func (f *execFlow) String() string { return "flow " + f.desc }

func ptrTo[T any](v T) *T { return &v }

// ProxierPort is where kube-proxy (and our proxier) serve /metrics and
// /proxyMode on every node, on loopback by default.
const ProxierPort = 10249

// ProxierGet fetches path from the proxy's metrics port on a node, with
// bash's /dev/tcp: kind node images and the agent image have bash, not
// always curl. It returns the body of a 200 answer.
func ProxierGet(ctx context.Context, shell Shell, node, path string) (string, error) {
	script := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d || exit 3
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
cat <&3`, ProxierPort, path)
	out, err := shell.Run(ctx, node, nil, "bash", "-c", script)
	if err != nil {
		return "", fmt.Errorf("GET 127.0.0.1:%d%s on %s: %w", ProxierPort, path, node, err)
	}
	head, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200 ") {
		return "", fmt.Errorf("GET 127.0.0.1:%d%s on %s: no 200 answer (%.80q)", ProxierPort, path, node, head)
	}
	return body, nil
}

// ProxierMetrics returns a node's proxy metrics (Prometheus text).
func (c *Cluster) ProxierMetrics(ctx context.Context, node string) (string, error) {
	return ProxierGet(ctx, c.cfg.Shell, node, "/metrics")
}
