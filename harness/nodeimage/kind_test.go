package nodeimage_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
	kindlog "sigs.k8s.io/kind/pkg/log"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/docker"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/nodeimage"
)

func TestMain(m *testing.M) { os.Exit(labtest.Run(m)) }

// E2EEnv turns on the tests that build the node image (cold: 20-30 min,
// once per machine) and create a real kind cluster (about a minute).
const E2EEnv = "PROXYMODES_KIND_E2E"

func needE2E(t *testing.T) {
	t.Helper()
	if testing.Short() || os.Getenv(E2EEnv) != "1" {
		t.Skipf("kind end-to-end test: set %s=1 (builds the offline node image once, cold ~25 min, then creates a kind cluster)", E2EEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := docker.Installed(); err != nil {
		t.Fatal(err)
	}
}

// kindLogger sends kind's log to the test log.
type kindLogger struct{ t *testing.T }

func (l kindLogger) Warn(m string)                        { l.t.Log("kind: WARN " + m) }
func (l kindLogger) Warnf(f string, a ...any)             { l.t.Logf("kind: WARN "+f, a...) }
func (l kindLogger) Error(m string)                       { l.t.Log("kind: ERROR " + m) }
func (l kindLogger) Errorf(f string, a ...any)            { l.t.Logf("kind: ERROR "+f, a...) }
func (l kindLogger) V(v kindlog.Level) kindlog.InfoLogger { return kindInfo{l.t, v <= 0} }

type kindInfo struct {
	t  *testing.T
	on bool
}

func (i kindInfo) Info(m string) {
	if i.on {
		i.t.Log("kind: " + m)
	}
}
func (i kindInfo) Infof(f string, a ...any) {
	if i.on {
		i.t.Logf("kind: "+f, a...)
	}
}
func (i kindInfo) Enabled() bool { return i.on }

func hostState(t *testing.T) string {
	t.Helper()
	v, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	return labtest.HostRules(t) + "ip_forward=" + string(v)
}

// bridgeConflist is a node's static pod network: a bridge on the node's
// pod /24 (no kindnet: its module is not served here).
func bridgeConflist(podCIDR string) string {
	gw := strings.TrimSuffix(podCIDR, ".0/24") + ".1"
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "proxymodes",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, podCIDR, gw)
}

func TestKindClusterOnOfflineImage(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	before := hostState(t)

	start := time.Now()
	d, err := docker.Start(ctx, docker.Options{Logger: labtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	unreg := labtest.OnInterrupt(d.Stop)
	defer func() {
		unreg()
		d.Stop(context.Background())
	}()
	t.Logf("TIMING daemon start: %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	image, err := nodeimage.Ensure(ctx, d, labtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING nodeimage.Ensure: %s (%s)", time.Since(start).Round(time.Millisecond), image)
	start = time.Now()
	if again, err := nodeimage.Ensure(ctx, d, labtest.Logger(t)); err != nil || again != image {
		t.Fatalf("second Ensure: %q, %v; want %q", again, err, image)
	}
	t.Logf("TIMING warm nodeimage.Ensure: %s", time.Since(start).Round(time.Millisecond))

	restore := d.Setenv()
	defer restore()

	dir := t.TempDir()
	conflist := filepath.Join(dir, "10-proxymodes.conflist")
	podCIDR := "198.18.64.0/24" // the first /24 of the pod CIDR goes to the only node
	if err := os.WriteFile(conflist, []byte(bridgeConflist(podCIDR)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := &v1alpha4.Cluster{
		Networking: v1alpha4.Networking{
			DisableDefaultCNI: true,
			KubeProxyMode:     v1alpha4.IPTablesProxyMode,
			PodSubnet:         addrplan.Pods.String(),
			ServiceSubnet:     addrplan.Services.String(),
		},
		Nodes: []v1alpha4.Node{{
			Role:        v1alpha4.ControlPlaneRole,
			ExtraMounts: []v1alpha4.Mount{{HostPath: conflist, ContainerPath: "/etc/cni/net.d/10-proxymodes.conflist", Readonly: true}},
		}},
		// These VMs run cgroup v1, which kubelet 1.37 refuses by default.
		KubeadmConfigPatches: []string{"kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nfailCgroupV1: false\n"},
	}
	provider := cluster.NewProvider(cluster.ProviderWithDocker(), cluster.ProviderWithLogger(kindLogger{t}))
	name := "pm-e2e"
	kubeconfig := filepath.Join(dir, "kubeconfig")
	provider.Delete(name, kubeconfig) // a killed run's cluster went with its daemon; this is cheap insurance
	start = time.Now()
	if err := provider.Create(name, cluster.CreateWithV1Alpha4Config(cfg), cluster.CreateWithNodeImage(image),
		cluster.CreateWithKubeconfigPath(kubeconfig), cluster.CreateWithWaitForReady(3*time.Minute),
		cluster.CreateWithDisplayUsage(false), cluster.CreateWithDisplaySalutation(false)); err != nil {
		t.Fatalf("kind create: %v", err)
	}
	t.Logf("TIMING kind create (node Ready): %s", time.Since(start).Round(time.Millisecond))
	deleted := false
	defer func() {
		if !deleted {
			provider.Delete(name, kubeconfig)
		}
	}()

	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	// kind only warns when its wait for Ready times out.
	if nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil || len(nodes.Items) == 0 || !nodeReady(nodes.Items[0]) {
		var conds []string
		if err == nil && len(nodes.Items) > 0 {
			for _, c := range nodes.Items[0].Status.Conditions {
				conds = append(conds, fmt.Sprintf("%s=%s (%s)", c.Type, c.Status, c.Message))
			}
		}
		t.Fatalf("the node is not Ready after kind create (%v): %s", err, strings.Join(conds, "; "))
	}
	// Every kubeadm image must run: etcd, the control plane, kube-proxy,
	// CoreDNS (which also needs the pod network) and pause under them all.
	start = time.Now()
	want := []string{"etcd-", "kube-apiserver-", "kube-controller-manager-", "kube-scheduler-", "kube-proxy-", "coredns-"}
	var pods []corev1.Pod
	for {
		list, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{})
		if err == nil {
			pods = list.Items
			if missing := notReady(pods, want); len(missing) == 0 {
				break
			} else if time.Since(start) > 3*time.Minute {
				t.Fatalf("kube-system pods not Ready after 3 minutes: %v\n%s", missing, describe(pods))
			}
		}
		time.Sleep(time.Second)
	}
	t.Logf("TIMING all kube-system pods Ready after create: %s", time.Since(start).Round(time.Millisecond))
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	if !nodeReady(nodes.Items[0]) {
		t.Fatalf("node %s is not Ready: %+v", nodes.Items[0].Name, nodes.Items[0].Status.Conditions)
	}
	if got := nodes.Items[0].Spec.PodCIDR; got != podCIDR {
		t.Errorf("node pod CIDR %s, but the conflist serves %s", got, podCIDR)
	}
	for _, a := range nodes.Items[0].Status.Addresses {
		if a.Type == corev1.NodeInternalIP && !addrplan.KindNet.Contains(mustAddr(t, a.Address)) {
			t.Errorf("node address %s is outside the kind network %s", a.Address, addrplan.KindNet)
		}
	}
	// kube-proxy in iptables mode has programmed the node, not the host.
	out, err := d.Output(ctx, "exec", name+"-control-plane", "iptables-save", "-t", "nat")
	if err != nil || !strings.Contains(out, "KUBE-SERVICES") {
		t.Errorf("no KUBE-SERVICES chain in the node's nat table (%v):\n%s", err, out)
	}
	if during := hostState(t); during != before {
		t.Fatalf("the host namespace changed while the cluster ran:\nbefore:\n%s\nduring:\n%s", before, during)
	}
	// kind's log export (what a provider does on failure) runs crictl and
	// journalctl in the nodes; it must work completely.
	logs := filepath.Join(dir, "logs")
	start = time.Now()
	if err := provider.CollectLogs(name, logs); err != nil {
		t.Errorf("kind export logs: %v", err)
	}
	t.Logf("TIMING kind export logs: %s", time.Since(start).Round(time.Millisecond))
	if b, err := os.ReadFile(filepath.Join(logs, name+"-control-plane", "images.log")); err != nil || !strings.Contains(string(b), "registry.k8s.io/pause") {
		t.Errorf("exported images.log lacks the pause image (%v):\n%s", err, b)
	}

	start = time.Now()
	if err := provider.Delete(name, kubeconfig); err != nil {
		t.Fatal(err)
	}
	deleted = true
	t.Logf("TIMING kind delete: %s", time.Since(start).Round(time.Millisecond))
	if out, err := d.Output(ctx, "ps", "-aq"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("containers left after delete: %q %v", out, err)
	}
	start = time.Now()
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING daemon stop: %s", time.Since(start).Round(time.Millisecond))
	if left := docker.Leftovers(); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
	if after := hostState(t); after != before {
		t.Fatalf("the host namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func notReady(pods []corev1.Pod, prefixes []string) []string {
	var missing []string
	for _, p := range prefixes {
		ok := false
		for _, pod := range pods {
			if strings.HasPrefix(pod.Name, p) && ready(pod) {
				ok = true
			}
		}
		if !ok {
			missing = append(missing, strings.TrimSuffix(p, "-"))
		}
	}
	return missing
}

func ready(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func describe(pods []corev1.Pod) string {
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "%s %s", p.Name, p.Status.Phase)
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Waiting != nil {
				fmt.Fprintf(&b, " [%s waiting: %s %s]", c.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestProxierAndEchoImagesRun(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	d, err := docker.Start(ctx, docker.Options{Logger: labtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	unreg := labtest.OnInterrupt(d.Stop)
	defer func() { unreg(); d.Stop(context.Background()) }()

	proxier, err := nodeimage.Proxier(ctx, d, labtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	// The proxier's image must carry every mode's tools next to the binary.
	for _, tool := range []string{"iptables", "iptables-legacy", "ip6tables", "nft", "ipset", "ipvsadm", "conntrack", "proxier"} {
		if out, err := d.Output(ctx, "run", "--rm", "--network", "none", "--entrypoint", "sh", proxier, "-c", "command -v "+tool); err != nil {
			t.Errorf("%s lacks %s: %v %s", proxier, tool, err, out)
		}
	}

	echo, err := nodeimage.Echo(ctx, d, labtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.Output(ctx, "run", "-d", "--network", docker.NetworkName, echo, "--name", "echo-1")
	if err != nil {
		t.Fatal(err)
	}
	id = strings.TrimSpace(id)
	ip, err := d.Output(ctx, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + strings.TrimSpace(ip) + ":8080/"
	var body []byte
	for start := time.Now(); time.Since(start) < 30*time.Second; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
	}
	if !strings.HasPrefix(string(body), "echo-1 ") {
		logs, _ := d.Output(ctx, "logs", id)
		t.Fatalf("GET %s: %q, want the backend's name first; container log:\n%s", url, body, logs)
	}
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// TestKindTwoNodesPodNetwork is the multi-node recipe the kind provider
// needs: no mounted CNI config (the node image's containerd writes a bridge
// config for each node's own pod /24 from its template), a route on every
// node to every other node's pod /24, and images loaded into the nodes
// with kind's own loader.
func TestKindTwoNodesPodNetwork(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	d, err := docker.Start(ctx, docker.Options{Logger: labtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	unreg := labtest.OnInterrupt(d.Stop)
	defer func() { unreg(); d.Stop(context.Background()) }()
	image, err := nodeimage.Ensure(ctx, d, labtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	echo, err := nodeimage.Echo(ctx, d, labtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	restore := d.Setenv()
	defer restore()

	cfg := &v1alpha4.Cluster{
		Networking: v1alpha4.Networking{
			DisableDefaultCNI: true,
			KubeProxyMode:     v1alpha4.IPTablesProxyMode,
			PodSubnet:         addrplan.Pods.String(),
			ServiceSubnet:     addrplan.Services.String(),
		},
		Nodes:                []v1alpha4.Node{{Role: v1alpha4.ControlPlaneRole}, {Role: v1alpha4.WorkerRole}},
		KubeadmConfigPatches: []string{"kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nfailCgroupV1: false\n"},
	}
	provider := cluster.NewProvider(cluster.ProviderWithDocker(), cluster.ProviderWithLogger(kindLogger{t}))
	name := "pm-e2e2"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	start := time.Now()
	if err := provider.Create(name, cluster.CreateWithV1Alpha4Config(cfg), cluster.CreateWithNodeImage(image),
		cluster.CreateWithKubeconfigPath(kubeconfig), cluster.CreateWithWaitForReady(3*time.Minute),
		cluster.CreateWithDisplayUsage(false), cluster.CreateWithDisplaySalutation(false)); err != nil {
		t.Fatalf("kind create: %v", err)
	}
	t.Logf("TIMING kind create, 2 nodes: %s", time.Since(start).Round(time.Millisecond))
	defer provider.Delete(name, kubeconfig)

	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 2 {
		t.Fatalf("nodes: %v", err)
	}
	ips := map[string]string{}
	for _, n := range nodes.Items {
		if !nodeReady(n) {
			t.Fatalf("node %s not Ready: %+v", n.Name, n.Status.Conditions)
		}
		if !addrplan.Pods.Contains(netip.MustParsePrefix(n.Spec.PodCIDR).Addr()) {
			t.Fatalf("node %s pod CIDR %s is outside %s", n.Name, n.Spec.PodCIDR, addrplan.Pods)
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ips[n.Name] = a.Address
			}
		}
	}
	// No kindnet: each node routes the other nodes' pod /24s to them.
	for _, n := range nodes.Items {
		for _, o := range nodes.Items {
			if o.Name != n.Name {
				if _, err := d.Output(ctx, "exec", n.Name, "ip", "route", "replace", o.Spec.PodCIDR, "via", ips[o.Name]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	// kind's loader (`kind load docker-image`) imports a docker save
	// archive into each node's containerd.
	archive := filepath.Join(t.TempDir(), "echo.tar")
	if err := d.Run(ctx, nil, "save", "-o", archive, echo); err != nil {
		t.Fatal(err)
	}
	internal, err := provider.ListInternalNodes(name)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for _, n := range internal {
		f, err := os.Open(archive)
		if err != nil {
			t.Fatal(err)
		}
		err = nodeutils.LoadImageArchive(n, f)
		f.Close()
		if err != nil {
			t.Fatalf("loading %s into %s: %v", echo, n, err)
		}
	}
	t.Logf("TIMING load echo image into 2 nodes: %s", time.Since(start).Round(time.Millisecond))

	for _, n := range nodes.Items {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "echo-" + n.Name, Namespace: "default"},
			Spec: corev1.PodSpec{
				NodeName: n.Name,
				// The control plane is tainted; this pod is there on purpose.
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers: []corev1.Container{{
					Name: "echo", Image: echo, ImagePullPolicy: corev1.PullNever,
					Args: []string{"--name", "echo-" + n.Name},
				}},
			},
		}
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	podIPs := map[string]string{}
	for start := time.Now(); len(podIPs) < 2; time.Sleep(500 * time.Millisecond) {
		list, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, p := range list.Items {
				if ready(p) || (p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "") {
					podIPs[p.Spec.NodeName] = p.Status.PodIP
				}
			}
			if time.Since(start) > 2*time.Minute {
				t.Fatalf("echo pods not running after 2 minutes:\n%s", describe(list.Items))
			}
		}
	}
	// From each node to the pod on the other node, by pod IP: the route
	// and the other node's bridge carry it, and the pod sees the node's
	// address (nothing masquerades).
	for _, n := range nodes.Items {
		for _, o := range nodes.Items {
			if o.Name == n.Name {
				continue
			}
			var out string
			for start := time.Now(); time.Since(start) < 30*time.Second; time.Sleep(500 * time.Millisecond) {
				out, err = d.Output(ctx, "exec", n.Name, "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/"+podIPs[o.Name]+"/9000; head -1 <&3")
				if err == nil {
					break
				}
			}
			if !strings.HasPrefix(out, "echo-"+o.Name+" "+ips[n.Name]+":") {
				t.Errorf("from %s to the pod on %s (%s): %q, %v; want echo-%s and %s as the client", n.Name, o.Name, podIPs[o.Name], out, err, o.Name, ips[n.Name])
			}
		}
	}
	start = time.Now()
	if err := provider.Delete(name, kubeconfig); err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING kind delete, 2 nodes: %s", time.Since(start).Round(time.Millisecond))
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if left := docker.Leftovers(); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
