package existing_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/existing"
	"github.com/proxymodes/proxymodes/harness/cluster/kind"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
)

func TestMain(m *testing.M) { os.Exit(labtest.Run(m)) }

// E2EEnv turns the test on: it needs a kind cluster to stand in for the
// user's (the offline node image is built once per machine, cold ~25 min).
const E2EEnv = "PROXYMODES_EXISTING_E2E"

// RunEnv narrows its conformance run to the tests a go test -run pattern
// selects (make existing-e2e EXISTING_RUN=...); empty runs the whole suite.
const RunEnv = "PROXYMODES_EXISTING_RUN"

// The disruptive checks stop and start the proxiers only where the suite
// owns the cluster: a user's cluster must never offer it.
func TestNeverRestartsTheUsersProxy(t *testing.T) {
	if _, ok := any(&existing.Cluster{}).(cluster.ProxierRestarter); ok {
		t.Fatal("PROVIDER=existing implements cluster.ProxierRestarter: the restart feature would stop the user's proxy")
	}
	if _, ok := any(&existing.Cluster{}).(cluster.APIServerRestarter); ok {
		t.Fatal("PROVIDER=existing implements cluster.APIServerRestarter: the API server restart feature would stop the user's API server")
	}
}

func TestMissingEchoImageNamesTheFix(t *testing.T) {
	t.Setenv(existing.EnvEcho, "")
	_, err := existing.Up(context.Background(), existing.Options{Name: "x", Kubeconfig: "/nonexistent"})
	if err == nil || !strings.Contains(err.Error(), existing.EnvEcho) || !strings.Contains(err.Error(), "kind image --save") {
		t.Fatalf("want an error naming %s and how to build the image, got %v", existing.EnvEcho, err)
	}
}

func TestBadKubeconfigNamesTheFix(t *testing.T) {
	_, err := existing.Up(context.Background(), existing.Options{Name: "x", Kubeconfig: "/nonexistent", Echo: "e"})
	if err == nil || !strings.Contains(err.Error(), "KUBECONFIG") {
		t.Fatalf("want an error naming KUBECONFIG, got %v", err)
	}
}

// TestOnKind treats a kind cluster running kube-proxy (iptables) as the
// user's cluster: the provider's own operations, then the whole
// conformance suite with PROVIDER=existing, then nothing left behind.
func TestOnKind(t *testing.T) {
	if os.Getenv(E2EEnv) == "" {
		t.Skipf("existing-cluster end-to-end test: set %s=1 (creates a kind cluster to play the user's)", E2EEnv)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ctx := context.Background()
	kc, err := kind.Up(ctx, kind.Options{Name: "existing", Mode: "iptables", Impl: kind.ImplKubeProxy, Logger: labtest.Logger(t), BuildOutput: labtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := kc.Down(context.Background()); err != nil {
			t.Error(err)
		}
		if left := kind.Leftovers(); len(left) > 0 {
			t.Errorf("kind left: %v", left)
		}
	})
	kubeconfig := kc.Info().Kubeconfig

	t.Run("provider", func(t *testing.T) {
		// The wrong MODE stops the run, naming the right one, and
		// leaves nothing behind.
		_, err := existing.Up(ctx, existing.Options{Name: "wrong-mode", Kubeconfig: kubeconfig, Echo: kc.EchoImage(), Mode: "ipvs", Logger: labtest.Logger(t)})
		if err == nil || !strings.Contains(err.Error(), "MODE=iptables") {
			t.Fatalf("MODE=ipvs on a kube-proxy in iptables mode: want an error naming MODE=iptables, got %v", err)
		}
		if _, err := kc.Client().CoreV1().Namespaces().Get(ctx, existing.Namespace("wrong-mode"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("the stopped run left its namespace (%v)", err)
		}
		c, err := existing.Up(ctx, existing.Options{Name: "provider-test", Kubeconfig: kubeconfig, Echo: kc.EchoImage(), Mode: "iptables", Logger: labtest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		downed := false
		t.Cleanup(func() {
			if !downed {
				c.Down(context.Background())
			}
		})
		// A second run on the same namespace stops, naming the fix, and
		// leaves the first run's namespace alone.
		if _, err := existing.Up(ctx, existing.Options{Name: "provider-test", Kubeconfig: kubeconfig, Echo: kc.EchoImage()}); err == nil || !strings.Contains(err.Error(), "kubectl delete namespace "+existing.Namespace("provider-test")) {
			t.Fatalf("a second run on the same namespace: want an error naming kubectl delete namespace, got %v", err)
		}
		if len(c.Leftovers(ctx)) == 0 {
			t.Fatal("the failed second run deleted the first run's namespace")
		}
		exerciseProvider(t, c)
		if err := c.Down(ctx); err != nil {
			t.Fatal(err)
		}
		downed = true
		if left := c.Leftovers(ctx); len(left) > 0 {
			t.Fatalf("after Down: %v", left)
		}
	})

	t.Run("conformance", func(t *testing.T) {
		root, err := binaries.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"test", "-count=1", "-timeout", "30m", "-v"}
		if run := os.Getenv(RunEnv); run != "" {
			args = append(args, "-run", run)
		}
		cmd := exec.Command("go", append(args, "./suites/conformance")...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, existing.EnvEcho+"="+kc.EchoImage(),
			"PROXYMODES_PROVIDER=existing", "PROXYMODES_MODE=iptables", "PROXYMODES_IMPL=kube-proxy")
		cmd.Stdout, cmd.Stderr = labtest.Logger(t), labtest.Logger(t)
		if err := cmd.Run(); err != nil {
			t.Fatalf("conformance with PROVIDER=existing on kind (kube-proxy, iptables): %v", err)
		}
	})
}

func exerciseProvider(t *testing.T, c *existing.Cluster) {
	ctx := context.Background()
	info := c.Info()
	if len(info.Nodes) != 2 || info.Namespace != existing.Namespace("provider-test") || !strings.Contains(info.Kernel, "Linux") {
		t.Fatalf("info: %+v", info)
	}
	ns := info.Namespace
	labels := map[string]string{"app": "echo"}
	var pods []cluster.Pod
	for i, n := range info.Nodes {
		p, err := c.AddPod(ctx, cluster.PodSpec{Namespace: ns, Name: fmt.Sprintf("echo-%d", i), Node: n.Name, Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	svc, err := c.Client().CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(backend.TCPPort), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 53, TargetPort: intstr.FromInt32(backend.UDPPort), Protocol: corev1.ProtocolUDP},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr(svc.Spec.ClusterIP)
	tg := probe.Target{NS: pods[0].NS, Addr: netip.AddrPortFrom(vip, 80), Proto: probe.TCP}
	// Probes from a pod namespace through the cluster's own proxy.
	deadline := time.Now().Add(time.Minute)
	for {
		s := c.Probe(ctx, tg, 30, 2*time.Second)
		cn := s.Counts()
		if cn[pods[0].Name] > 0 && cn[pods[1].Name] > 0 && cn[pods[0].Name]+cn[pods[1].Name] == 30 {
			t.Logf("through %s: %v", tg.Addr, cn)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Service never reached both backends: %s", s)
		}
		time.Sleep(time.Second)
	}
	// Faults act in the backend's namespace.
	direct := probe.Target{NS: pods[0].NS, Addr: netip.AddrPortFrom(pods[1].IP, backend.TCPPort), Proto: probe.TCP}
	if err := c.Break(ctx, pods[1], cluster.Refuse); err != nil {
		t.Fatal(err)
	}
	if s := c.Probe(ctx, direct, 3, 2*time.Second); s.Counts()[pods[1].Name] != 0 {
		t.Fatalf("a refusing backend answered: %s", s)
	}
	if err := c.Restore(ctx, pods[1]); err != nil {
		t.Fatal(err)
	}
	if s := c.Probe(ctx, direct, 3, 2*time.Second); s.Counts()[pods[1].Name] != 3 {
		t.Fatalf("a restored backend did not answer: %s", s)
	}
	// Node commands run in the node's namespace: kube-proxy's rules.
	rules, err := c.IPTables(ctx, info.Nodes[0].NS)
	if err != nil || !strings.Contains(rules, "KUBE-SERVICES") || !strings.Contains(rules, vip.String()) {
		t.Fatalf("node rules lack kube-proxy's Service (%v):\n%s", err, rules)
	}
	// A UDP flow keeps its socket across exchanges.
	f, err := c.OpenFlow(ctx, pods[0].NS, probe.UDP, netip.AddrPortFrom(vip, 53))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if b, err := f.Exchange(ctx, 2*time.Second); err != nil || (b != pods[0].Name && b != pods[1].Name) {
			t.Fatalf("UDP exchange %d: %q %v", i, b, err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("closing the UDP flow: %v", err)
	}
	if err := c.DeletePod(ctx, ns, pods[1].Name); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Exec(ctx, info.Nodes[1].NS, "sh", "-c", "ls /var/run/netns"); err != nil || strings.Contains(out, strings.SplitN(pods[1].NS, "/", 2)[1]) {
		t.Fatalf("the deleted pod's namespace remains (%v): %s", err, out)
	}
}
