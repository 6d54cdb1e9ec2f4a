// Package kind is the cluster provider on kind: real nodes (containers of
// a private Docker daemon, harness/docker) built from the offline node
// image (harness/nodeimage), the proxier deployed the way production runs
// it (our DaemonSet from clusters/manifests, or kubeadm's kube-proxy), and
// backend pods that are real Pods of the echo image.
//
// Probes run inside the node containers: the static proxymodes binary is
// copied into each node and started with `ip netns exec <pod netns>`, so
// traffic only flows between namespaces of the cluster's own containers.
package kind

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	kindcluster "sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodes"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
	kindlog "sigs.k8s.io/kind/pkg/log"

	kindcfg "github.com/proxymodes/proxymodes/clusters/kind"
	"github.com/proxymodes/proxymodes/clusters/manifests"
	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/kube"
	"github.com/proxymodes/proxymodes/harness/docker"
	"github.com/proxymodes/proxymodes/harness/hostipvs"
	"github.com/proxymodes/proxymodes/harness/interrupt"
	"github.com/proxymodes/proxymodes/harness/nodeimage"
)

// Implementations.
const (
	ImplReference = kindcfg.ImplReference
	ImplKubeProxy = kindcfg.ImplKubeProxy
)

// StateRoot holds each cluster's kubeconfig and CNI configs while it runs.
const StateRoot = "/run/proxymodes-kind"

// Options describe a kind cluster.
type Options struct {
	// Name is the suite's short name; the kind cluster is "pm-<Name>".
	Name       string
	Nodes      int // every node, control plane included (default 2)
	Mode, Impl string
	Logger     cluster.Logger
	// BuildOutput receives build progress (node image, images, binaries).
	BuildOutput io.Writer
}

// ClusterName is the kind cluster name for a suite name.
func ClusterName(name string) string { return "pm-" + name }

// Cluster is a running kind cluster; it implements cluster.Cluster.
type Cluster struct {
	*kube.Cluster
	opts     Options
	name     string
	dir      string
	d        *docker.Daemon
	restore  func()
	provider *kindcluster.Provider
	rest     *rest.Config
	client   kubernetes.Interface
	info     cluster.Info
	// images
	nodeImage, echo, proxier string

	downMu sync.Mutex
}

// HostHasIPVS reports whether kind nodes can run IPVS: they share the
// host's kernel and cannot load modules into it, so ip_vs must be in it.
func HostHasIPVS() bool { return hostipvs.Host.Loaded() }

// Up creates the cluster and deploys the proxier; on failure it removes
// whatever it created.
func Up(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Logger == nil {
		o.Logger = cluster.Discard
	}
	if o.BuildOutput == nil {
		o.BuildOutput = io.Discard
	}
	if o.Impl == "" {
		o.Impl = ImplReference
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Mode == "ipvs" && !HostHasIPVS() {
		return nil, errors.New("IPVS on kind needs the ip_vs kernel module on the host (kind nodes share the host's kernel), and this kernel has none: run MODE=ipvs with PROVIDER=local, which uses a user-mode Linux guest, or `modprobe ip_vs` on a host whose kernel has it")
	}
	log := o.Logger
	// Runs after the removal below, so an interrupt waits for it.
	ctx, done := interrupt.Guard(ctx, func(ctx context.Context) error { return Cleanup(ctx, log) })
	defer done()
	c = &Cluster{opts: o, name: ClusterName(o.Name)}
	c.dir = filepath.Join(StateRoot, c.name)
	defer func() {
		if err != nil {
			log.Logf("kind %s: setup failed, removing what was created", c.name)
			err = errors.Join(err, c.Down(context.WithoutCancel(ctx)))
			c = nil
		}
	}()
	start := time.Now()
	// The daemon-free part of a cold node image build (about 20 min)
	// runs before the machine's one daemon is taken.
	if err := nodeimage.Prepare(ctx, o.BuildOutput); err != nil {
		return c, err
	}
	log.Logf("kind %s: node image parts ready in %s", c.name, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if c.d, err = docker.Start(ctx, docker.Options{Logger: log}); err != nil {
		return c, err
	}
	c.restore = c.d.Setenv()
	log.Logf("kind %s: docker daemon up in %s", c.name, time.Since(start).Round(time.Millisecond))
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"images", c.images},
		{"create", c.create},
		{"network", c.network},
		{"tools", c.tools},
		{"proxier", c.deployProxier},
	}
	for _, s := range steps {
		t := time.Now()
		if err := s.fn(ctx); err != nil {
			return c, fmt.Errorf("kind %s: %s: %w", c.name, s.name, err)
		}
		log.Logf("kind %s: %s done in %s", c.name, s.name, time.Since(t).Round(time.Millisecond))
	}
	return c, nil
}

// images makes sure the node, echo and proxier images exist (the node
// image is built once per machine: ~25 min cold).
func (c *Cluster) images(ctx context.Context) (err error) {
	if c.nodeImage, err = nodeimage.Ensure(ctx, c.d, c.opts.BuildOutput); err != nil {
		return err
	}
	if c.echo, err = nodeimage.Echo(ctx, c.d, c.opts.BuildOutput); err != nil {
		return err
	}
	if c.opts.Impl == ImplReference {
		if c.proxier, err = nodeimage.Proxier(ctx, c.d, c.opts.BuildOutput); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) kindOptions() kindcfg.Options {
	return kindcfg.Options{Mode: c.opts.Mode, Impl: c.opts.Impl, Name: c.name, Nodes: c.opts.Nodes,
		Image: c.nodeImage, CNIDir: filepath.Join(c.dir, "cni")}
}

// create writes each node's bridge conflist and runs kind.
func (c *Cluster) create(ctx context.Context) error {
	ko := c.kindOptions()
	nodes, err := kindcfg.Nodes(ko)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		conf, err := kindcfg.Conflist(kindcfg.ConflistOptions{PodCIDR: netip.MustParsePrefix(n.PodCIDR)})
		if err != nil {
			return err
		}
		if err := os.MkdirAll(n.CNIDir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(n.CNIDir, kindcfg.ConflistName), conf, 0o644); err != nil {
			return err
		}
		c.info.Nodes = append(c.info.Nodes, cluster.Node{Name: n.Name, PodCIDR: netip.MustParsePrefix(n.PodCIDR), NS: n.Name})
	}
	raw, err := kindcfg.Render(ko)
	if err != nil {
		return err
	}
	c.provider = kindcluster.NewProvider(kindcluster.ProviderWithDocker(), kindcluster.ProviderWithLogger(kindLogger{c.opts.Logger}))
	kubeconfig := filepath.Join(c.dir, "kubeconfig")
	// A killed run's cluster died with its daemon; this only clears kind's
	// view of it.
	_ = c.provider.Delete(c.name, kubeconfig)
	if err := c.provider.Create(c.name, kindcluster.CreateWithRawConfig(raw), kindcluster.CreateWithNodeImage(c.nodeImage),
		kindcluster.CreateWithKubeconfigPath(kubeconfig), kindcluster.CreateWithWaitForReady(3*time.Minute),
		kindcluster.CreateWithDisplayUsage(false), kindcluster.CreateWithDisplaySalutation(false)); err != nil {
		return err
	}
	if c.rest, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return err
	}
	c.rest.QPS, c.rest.Burst = 100, 200
	if c.client, err = cluster.NewClient(c.rest); err != nil {
		return err
	}
	c.info.Name, c.info.Provider, c.info.Kubeconfig, c.info.APIServer = c.name, "kind", kubeconfig, c.rest.Host
	c.info.Kernel = hostKernel()
	for i, n := range c.info.Nodes {
		node, err := c.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				c.info.Nodes[i].IP, _ = netip.ParseAddr(a.Address)
			}
		}
		if !addrplan.KindNet.Contains(c.info.Nodes[i].IP) {
			return fmt.Errorf("node %s has address %s, outside the kind network %s", n.Name, c.info.Nodes[i].IP, addrplan.KindNet)
		}
	}
	c.Cluster = kube.New(kube.Config{Info: c.info, REST: c.rest, Client: c.client, Shell: dockerShell{c.d},
		Echo: c.echo, Pull: corev1.PullNever})
	return nil
}

// network routes each node's pod /24 to it from every other node (there
// is no kindnet to do it).
func (c *Cluster) network(ctx context.Context) error {
	for _, n := range c.info.Nodes {
		for _, m := range c.info.Nodes {
			if m.Name == n.Name {
				continue
			}
			if _, err := c.Exec(ctx, n.Name, "ip", "route", "replace", m.PodCIDR.String(), "via", m.IP.String()); err != nil {
				return err
			}
		}
	}
	return nil
}

// tools copies the static proxymodes binary (the probe) into each node and
// loads the images the run needs; then it starts the outside client.
func (c *Cluster) tools(ctx context.Context) error {
	bin, err := binaries.Static("harness/cmd/proxymodes", c.opts.BuildOutput)
	if err != nil {
		return err
	}
	images := []string{c.echo}
	if c.proxier != "" {
		images = append(images, c.proxier)
	}
	nodes, err := c.provider.ListNodes(c.name)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if err := c.d.CopyTo(ctx, n.String(), []docker.File{{Path: kube.NodeBinary, Src: bin, Mode: 0o755}}); err != nil {
			return err
		}
		if err := c.load(ctx, n, images); err != nil {
			return err
		}
	}
	return c.startOutside(ctx, bin)
}

// load streams `docker save` into the node's containerd through kind.
func (c *Cluster) load(ctx context.Context, n kindNode, images []string) error {
	save := c.d.Command(ctx, append([]string{"save"}, images...)...)
	out, err := save.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	save.Stderr = &stderr
	if err := save.Start(); err != nil {
		return err
	}
	lerr := nodeutils.LoadImageArchive(n, out)
	io.Copy(io.Discard, out)
	if err := save.Wait(); err != nil {
		return fmt.Errorf("docker save %s: %v: %s", strings.Join(images, " "), err, stderr.String())
	}
	if lerr != nil {
		return fmt.Errorf("loading %s into %s: %w", strings.Join(images, " "), n, lerr)
	}
	return nil
}

// deployProxier applies our DaemonSet (reference) or waits for kubeadm's
// kube-proxy, until it runs on every node.
func (c *Cluster) deployProxier(ctx context.Context) error {
	if c.opts.Impl == ImplReference {
		stream, err := manifests.Render(manifests.Options{Mode: c.opts.Mode, Image: c.proxier,
			APIServer: netip.AddrPortFrom(c.info.Nodes[0].IP, 6443).String(), ImagePullPolicy: "Never",
			// Syncs and conntrack cleanups in the exported logs, as in the
			// local lab.
			ExtraArgs: []string{"--v=2"}})
		if err != nil {
			return err
		}
		a, err := manifests.NewApplier(c.rest)
		if err != nil {
			return err
		}
		if err := a.Apply(ctx, stream, false); err != nil {
			return err
		}
	}
	return c.waitProxiers(ctx, len(c.info.Nodes))
}

func (c *Cluster) proxierDaemonSet() string {
	if c.opts.Impl == ImplReference {
		return manifests.Name
	}
	return "kube-proxy"
}

// waitProxiers waits until the proxier's DaemonSet runs ready pods on
// want nodes and, when want is 0, until its last pod is gone.
func (c *Cluster) waitProxiers(ctx context.Context, want int) error {
	ds := c.proxierDaemonSet()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		d, err := c.client.AppsV1().DaemonSets("kube-system").Get(ctx, ds, metav1.GetOptions{})
		done := err == nil && d.Status.DesiredNumberScheduled == int32(want) && d.Status.NumberReady == int32(want) &&
			d.Status.UpdatedNumberScheduled == int32(want) && d.Status.ObservedGeneration >= d.Generation
		if done && want == 0 {
			var pods *corev1.PodList
			pods, err = c.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(d.Spec.Selector)})
			done = err == nil && len(pods.Items) == 0
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("DaemonSet kube-system/%s not ready on %d nodes after 3 minutes (%v); see its pods' logs in the saved logs", ds, want, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// stoppedLabel is a node label no node has: a proxier DaemonSet that
// selects it runs nowhere, and its pods go as a crashed proxier's would,
// leaving their rules.
const stoppedLabel = "proxymodes.dev/proxier-stopped"

// StopProxiers implements cluster.ProxierRestarter.
func (c *Cluster) StopProxiers(ctx context.Context) error {
	if err := c.patchProxierSelector(ctx, `"true"`); err != nil {
		return err
	}
	return c.waitProxiers(ctx, 0)
}

// StartProxiers implements cluster.ProxierRestarter.
func (c *Cluster) StartProxiers(ctx context.Context) error {
	if err := c.patchProxierSelector(ctx, "null"); err != nil {
		return err
	}
	return c.waitProxiers(ctx, len(c.info.Nodes))
}

func (c *Cluster) patchProxierSelector(ctx context.Context, value string) error {
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"nodeSelector":{%q:%s}}}}}`, stoppedLabel, value)
	_, err := c.client.AppsV1().DaemonSets("kube-system").Patch(ctx, c.proxierDaemonSet(), types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("patching DaemonSet kube-system/%s's nodeSelector: %w", c.proxierDaemonSet(), err)
	}
	return nil
}

// SaveLogs implements cluster.Cluster with kind's log export (every
// node's journal, containers and pods).
func (c *Cluster) SaveLogs(dst string) error {
	if c.provider == nil {
		return nil
	}
	return c.provider.CollectLogs(c.name, dst)
}

// Down deletes the cluster and stops the daemon; safe to call twice, and
// at once (Ctrl-C's handler and the suite's teardown both call it).
func (c *Cluster) Down(ctx context.Context) error {
	c.downMu.Lock()
	defer c.downMu.Unlock()
	var errs []error
	if c.provider != nil {
		errs = append(errs, c.provider.Delete(c.name, filepath.Join(c.dir, "kubeconfig")))
		c.provider = nil
	}
	if c.restore != nil {
		c.restore()
		c.restore = nil
	}
	if c.d != nil {
		errs = append(errs, c.d.Stop(ctx))
		c.d = nil
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}

// Leftovers lists what a run left (the daemon's leftovers and state).
func Leftovers() []string {
	left := docker.Leftovers()
	if es, _ := os.ReadDir(StateRoot); len(es) > 0 {
		for _, e := range es {
			left = append(left, "kind state "+filepath.Join(StateRoot, e.Name()))
		}
	}
	return left
}

// Cleanup removes a killed run's daemon, its containers and kind state.
func Cleanup(ctx context.Context, log cluster.Logger) error {
	return errors.Join(docker.Cleanup(ctx, log), os.RemoveAll(StateRoot))
}

func hostKernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "host kernel"
	}
	return "Linux " + strings.TrimSpace(string(b)) + " (host kernel, shared by the kind nodes)"
}

// kindLogger adapts our Logger to kind's.
type kindLogger struct{ l cluster.Logger }

func (k kindLogger) Warn(msg string)           { k.l.Logf("kind: %s", msg) }
func (k kindLogger) Warnf(f string, a ...any)  { k.l.Logf("kind: "+f, a...) }
func (k kindLogger) Error(msg string)          { k.l.Logf("kind: ERROR %s", msg) }
func (k kindLogger) Errorf(f string, a ...any) { k.l.Logf("kind: ERROR "+f, a...) }
func (k kindLogger) V(level kindlog.Level) kindlog.InfoLogger {
	// Level 0 is kind's step list ("Preparing nodes", ...); more is noise.
	return infoLogger{l: k.l, on: level == 0}
}

type infoLogger struct {
	l  cluster.Logger
	on bool
}

func (i infoLogger) Info(msg string) {
	if i.on {
		i.l.Logf("kind: %s", strings.TrimSpace(msg))
	}
}
func (i infoLogger) Infof(f string, a ...any) {
	if i.on {
		i.l.Logf("kind: "+strings.TrimSpace(f), a...)
	}
}
func (i infoLogger) Enabled() bool { return i.on }

type kindNode = nodes.Node

// dockerShell is kube.Shell over `docker exec` into the node containers.
type dockerShell struct{ d *docker.Daemon }

func (s dockerShell) args(node string, env []string, stdin bool, argv []string) []string {
	args := []string{"exec"}
	if stdin {
		args = append(args, "-i")
	}
	for _, e := range env {
		args = append(args, "-e", e)
	}
	return append(append(args, node), argv...)
}

func (s dockerShell) Run(ctx context.Context, node string, env []string, argv ...string) (string, error) {
	return s.d.Output(ctx, s.args(node, env, false, argv)...)
}

func (s dockerShell) Start(node string, env []string, argv ...string) (kube.Process, error) {
	cmd := s.d.Command(context.Background(), s.args(node, env, true, argv)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &cmdProcess{cmd: cmd, in: in, out: out}
	cmd.Stderr = &p.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

type cmdProcess struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    io.Reader
	stderr bytes.Buffer
}

func (p *cmdProcess) Stdin() io.WriteCloser { return p.in }
func (p *cmdProcess) Stdout() io.Reader     { return p.out }
func (p *cmdProcess) Wait() error {
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(p.stderr.String()))
	}
	return nil
}

// EchoImage is the echo image loaded into the nodes (what an existing-
// cluster run against this cluster uses as PROXYMODES_ECHO_IMAGE).
func (c *Cluster) EchoImage() string { return c.echo }

var _ cluster.ProxierRestarter = (*Cluster)(nil)
