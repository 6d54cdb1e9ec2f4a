// Package existing is the cluster provider for any running cluster a
// kubeconfig reaches: the suites run against whatever proxy that cluster
// already has. Nothing is created outside one namespace of the run's own
// (privileged Pod Security level, because of the node agent), and Down
// deletes that namespace and waits until it is gone.
//
// What the cluster must offer:
//   - an echo image its nodes can pull (Options.Echo, PROXYMODES_ECHO_IMAGE:
//     `proxymodes kind image --save DIR` builds proxymodes/echo and writes
//     DIR/echo.tar: load it into a docker that can push, and push it);
//   - a container runtime that names pod network namespaces in
//     /var/run/netns (containerd, CRI-O);
//   - the right to run one privileged hostNetwork agent pod per node: it
//     runs probes, UDP flows, faults (iptables in a backend pod's
//     namespace) and rule dumps, as kind's nodes do through docker exec.
//
// Traffic only goes to the run's own Services, backend pods and nodes.
package existing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/kube"
	"github.com/proxymodes/proxymodes/harness/interrupt"
)

// EnvEcho names the echo image for existing clusters.
const EnvEcho = "PROXYMODES_ECHO_IMAGE"

const (
	agentName      = "proxymodes-agent"
	agentContainer = "agent"
	managedBy      = "app.kubernetes.io/managed-by"
)

// Options describe the run on an existing cluster.
type Options struct {
	// Kubeconfig is the file; empty means $KUBECONFIG, then ~/.kube/config.
	Kubeconfig string
	// Name is the suite's short name; the run's namespace is "proxymodes-<Name>".
	Name string
	// Echo is the echo image (default $PROXYMODES_ECHO_IMAGE); Pull its
	// pull policy (default IfNotPresent).
	Echo string
	Pull corev1.PullPolicy
	// Mode is the mode the run's promises are for; when set, Up stops if
	// a node's proxy says it runs another one.
	Mode   string
	Logger cluster.Logger
}

// Namespace is the run's namespace for a suite name.
func Namespace(name string) string { return "proxymodes-" + name }

// Cluster is the run's view of an existing cluster.
type Cluster struct {
	*kube.Cluster
	opts   Options
	ns     string
	rest   *rest.Config
	client kubernetes.Interface
	info   cluster.Info
	// created: the namespace is this run's, so Down may delete it (a
	// killed run's namespace is reported, never deleted behind the user).
	created bool
}

// Up checks the cluster, creates the run's namespace and starts the node
// agents; on failure it removes what it created.
func Up(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Logger == nil {
		o.Logger = cluster.Discard
	}
	if o.Echo == "" {
		o.Echo = os.Getenv(EnvEcho)
	}
	if o.Echo == "" {
		return nil, fmt.Errorf("an existing cluster needs an echo image its nodes can pull: build it with `proxymodes kind image --save DIR` (it prints the proxymodes/echo tag and writes DIR/echo.tar), `docker load` and push it to a registry the cluster reaches, and set %s to the pushed name", EnvEcho)
	}
	if o.Pull == "" {
		o.Pull = corev1.PullIfNotPresent
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.Kubeconfig != "" {
		rules.ExplicitPath = o.Kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("reading the kubeconfig (set KUBECONFIG to the cluster's): %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	client, err := cluster.NewClient(rc)
	if err != nil {
		return nil, err
	}
	c = &Cluster{opts: o, ns: Namespace(o.Name), rest: rc, client: client}
	log := o.Logger
	// Runs after the removal below, so an interrupt waits for it; every
	// step is an API call that returns when ctx is cancelled.
	ctx, done := interrupt.Guard(ctx, nil)
	defer done()
	if err := c.nodes(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			log.Logf("existing %s: setup failed, removing namespace %s", rc.Host, c.ns)
			err = errors.Join(err, c.Down(context.WithoutCancel(ctx)))
			c = nil
		}
	}()
	start := time.Now()
	if err := c.namespace(ctx); err != nil {
		return c, err
	}
	shell, err := c.agents(ctx)
	if err != nil {
		return c, err
	}
	log.Logf("existing %s: namespace %s and %d node agents ready in %s", rc.Host, c.ns, len(c.info.Nodes), time.Since(start).Round(time.Millisecond))
	if err := c.checkMode(ctx, shell); err != nil {
		return c, err
	}
	c.Cluster = kube.New(kube.Config{Info: c.info, REST: rc, Client: client, Shell: shell, Echo: o.Echo, Pull: o.Pull})
	return c, nil
}

// nodes fills Info from the Ready nodes.
func (c *Cluster) nodes(ctx context.Context) error {
	list, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing the nodes of %s (is the kubeconfig's cluster up and are you allowed to list nodes?): %w", c.rest.Host, err)
	}
	kernels := map[string]bool{}
	for _, n := range list.Items {
		// The agent and the echo backend are Linux programs.
		if !nodeReady(&n) || n.Status.NodeInfo.OperatingSystem != "linux" {
			continue
		}
		node := cluster.Node{Name: n.Name, NS: n.Name}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
					node.IP = ip
				}
			}
		}
		node.PodCIDR, _ = netip.ParsePrefix(n.Spec.PodCIDR)
		kernels[n.Status.NodeInfo.KernelVersion] = true
		c.info.Nodes = append(c.info.Nodes, node)
	}
	if len(c.info.Nodes) == 0 {
		return fmt.Errorf("%s has no Ready Linux node", c.rest.Host)
	}
	ks := make([]string, 0, len(kernels))
	for k := range kernels {
		ks = append(ks, "Linux "+k)
	}
	slices.Sort(ks)
	c.info.Name, c.info.Provider, c.info.APIServer = c.ns, "existing", c.rest.Host
	c.info.Kubeconfig = c.opts.Kubeconfig
	c.info.Namespace = c.ns
	c.info.Kernel = strings.Join(ks, ", ") + " (the nodes' kernels)"
	return nil
}

// checkMode asks each node's proxy which mode it runs: kube-proxy answers
// GET /proxyMode on its metrics port (127.0.0.1:10249 by default), and so
// does ours. A run whose MODE differs would hold the proxy to another
// mode's promises, so it stops here; a node whose proxy does not answer
// is taken on trust, and said so.
func (c *Cluster) checkMode(ctx context.Context, shell kube.Shell) error {
	if c.opts.Mode == "" {
		return nil
	}
	var unknown []string
	for _, n := range c.info.Nodes {
		body, err := kube.ProxierGet(ctx, shell, n.Name, "/proxyMode")
		mode := strings.TrimSpace(body)
		if err != nil || mode == "" {
			unknown = append(unknown, n.Name)
			continue
		}
		if mode != c.opts.Mode {
			return fmt.Errorf("the proxy on node %s runs in %s mode (its 127.0.0.1:10249/proxyMode says so), not %s: run with MODE=%s", n.Name, mode, c.opts.Mode, mode)
		}
	}
	if len(unknown) > 0 {
		c.opts.Logger.Logf("existing: no proxy answered 127.0.0.1:10249/proxyMode on %s: taking MODE=%s on trust there", strings.Join(unknown, ", "), c.opts.Mode)
	} else {
		c.opts.Logger.Logf("existing: every node's proxy says it runs in %s mode", c.opts.Mode)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (c *Cluster) namespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns, Labels: map[string]string{
		managedBy: "proxymodes",
		// The node agent is privileged; backends are plain pods.
		"pod-security.kubernetes.io/enforce": "privileged",
	}}}
	_, err := c.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s already exists (another run's, or a killed one's): delete it with `kubectl delete namespace %s` and run again", c.ns, c.ns)
	}
	c.created = err == nil
	return err
}

// agents starts one privileged hostNetwork pod per node and waits for
// them all.
func (c *Cluster) agents(ctx context.Context) (kube.Shell, error) {
	labels := map[string]string{"app.kubernetes.io/name": agentName, managedBy: "proxymodes"}
	hostPath := func(name, path string, t corev1.HostPathType) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &t}}}
	}
	toContainer := corev1.MountPropagationHostToContainer
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: agentName, Namespace: c.ns, Labels: labels},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					HostNetwork:                   true,
					NodeSelector:                  map[string]string{corev1.LabelOSStable: "linux"},
					TerminationGracePeriodSeconds: ptrTo(int64(0)),
					Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name: agentContainer, Image: c.opts.Echo, ImagePullPolicy: c.opts.Pull,
						Command:         []string{"sleep", "infinity"},
						SecurityContext: &corev1.SecurityContext{Privileged: ptrTo(true)},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "netns", MountPath: "/var/run/netns", MountPropagation: &toContainer},
							{Name: "xtables-lock", MountPath: "/run/xtables.lock"},
							{Name: "lib-modules", MountPath: "/lib/modules", ReadOnly: true},
						},
					}},
					Volumes: []corev1.Volume{
						hostPath("netns", "/var/run/netns", corev1.HostPathDirectoryOrCreate),
						hostPath("xtables-lock", "/run/xtables.lock", corev1.HostPathFileOrCreate),
						hostPath("lib-modules", "/lib/modules", corev1.HostPathDirectory),
					},
				},
			},
		},
	}
	if _, err := c.client.AppsV1().DaemonSets(c.ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		pods, err := c.client.CoreV1().Pods(c.ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + agentName})
		byNode := map[string]string{}
		var problems []string
		if err == nil {
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodRunning && kube.PodReady(&p) {
					byNode[p.Spec.NodeName] = p.Name
				} else {
					problems = append(problems, p.Name+": "+kube.PodProblem(&p, nil))
				}
			}
		}
		missing := 0
		for _, n := range c.info.Nodes {
			if byNode[n.Name] == "" {
				missing++
			}
		}
		if missing == 0 {
			return agentShell{rest: c.rest, client: c.client, namespace: c.ns, pods: byNode}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("node agents (DaemonSet %s/%s, image %s) not running on %d of %d nodes after 3 minutes (%v %s): can the nodes pull %s, and may privileged hostNetwork pods run in %s?",
				c.ns, agentName, c.opts.Echo, missing, len(c.info.Nodes), err, strings.Join(problems, "; "), c.opts.Echo, c.ns)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// SaveLogs writes the proxy pods' logs (kube-system pods named *proxy*)
// and the run namespace's events into dst.
func (c *Cluster) SaveLogs(dst string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	var errs []error
	pods, err := c.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		if !strings.Contains(p.Name, "proxy") {
			continue
		}
		for _, ct := range p.Spec.Containers {
			rc, err := c.client.CoreV1().Pods("kube-system").GetLogs(p.Name, &corev1.PodLogOptions{Container: ct.Name}).Stream(ctx)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			f, err := os.Create(filepath.Join(dst, p.Name+"_"+ct.Name+".log"))
			if err == nil {
				_, err = io.Copy(f, rc)
				f.Close()
			}
			rc.Close()
			errs = append(errs, err)
		}
	}
	if evs, err := c.client.CoreV1().Events(c.ns).List(ctx, metav1.ListOptions{}); err == nil {
		var b strings.Builder
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "%s %s %s/%s %s: %s\n", e.LastTimestamp.Format(time.RFC3339), e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
		errs = append(errs, os.WriteFile(filepath.Join(dst, "events.txt"), []byte(b.String()), 0o644))
	}
	return errors.Join(errs...)
}

// Down deletes the run's namespace and waits until it is gone; safe to
// call more than once.
func (c *Cluster) Down(ctx context.Context) error {
	if !c.created {
		return nil
	}
	err := c.client.CoreV1().Namespaces().Delete(ctx, c.ns, metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting namespace %s: %w", c.ns, err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for len(c.Leftovers(ctx)) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s still exists 3 minutes after its deletion: see `kubectl get all -n %s`", c.ns, c.ns)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil
}

// Leftovers lists what of the run remains in the cluster: its namespace.
func (c *Cluster) Leftovers(ctx context.Context) []string {
	_, err := c.client.CoreV1().Namespaces().Get(ctx, c.ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return []string{fmt.Sprintf("namespace %s (cannot tell: %v)", c.ns, err)}
	}
	return []string{"namespace " + c.ns}
}

func ptrTo[T any](v T) *T { return &v }
