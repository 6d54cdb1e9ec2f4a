package manifests

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/controlplane"
	"github.com/proxymodes/proxymodes/harness/labtest"
)

// The capability check runs in a child process in a network namespace of
// its own, so the rules the proxier writes never touch the host's. The
// child is this test binary, told what to do through the environment.
const (
	envCapsChild = "PROXYMODES_CAPS_CHECK" // the capabilities, e.g. "net_admin,net_raw"
	envCapsCP    = "PROXYMODES_CAPS_CONTROLPLANE"
	envCapsBin   = "PROXYMODES_CAPS_PROXIER"
	// envCapsLimit bounds each proxier's wait for a successful sync.
	envCapsLimit = "PROXYMODES_CAPS_LIMIT"
)

// TestProxierRunsWithTheDaemonSetCapabilities runs the real proxier binary
// with nothing but the capabilities the rendered DaemonSet adds (a
// container also keeps the runtime's defaults; this is stricter) and
// checks that it syncs and programs a Service with iptables-nft,
// iptables-legacy, in userspace mode and in nftables mode. IPVS needs ip_vs, which this
// machine's kernel lacks; its privileged init container is covered by the
// --init-only unit test.
func TestProxierRunsWithTheDaemonSetCapabilities(t *testing.T) {
	ds := decode(t, render(t, "iptables"))[3].(*appsv1.DaemonSet)
	var caps []string
	for _, c := range ds.Spec.Template.Spec.Containers[0].SecurityContext.Capabilities.Add {
		caps = append(caps, strings.ToLower(string(c)))
	}
	// A sync takes well under a second here; the limit is for busy
	// machines.
	if err := runCapsChild(t, strings.Join(caps, ","), 30*time.Second); err != nil {
		t.Errorf("the proxier cannot work with %v: %v", caps, err)
	}
	// And the check can fail: without NET_ADMIN nothing gets programmed
	// (the first sync fails within a second).
	if err := runCapsChild(t, "net_raw", 5*time.Second); err == nil {
		t.Errorf("the proxier synced without NET_ADMIN: the check proves nothing")
	}
}

func runCapsChild(t *testing.T, caps string, limit time.Duration) error {
	t.Helper()
	cp, err := binaries.Kubernetes("controlplane", labtest.LogWriter(t))
	if err != nil {
		t.Fatal(err)
	}
	proxier, err := binaries.Project("proxier/cmd/proxier", labtest.LogWriter(t))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envCapsChild+"="+caps, envCapsCP+"="+cp, envCapsBin+"="+proxier, envCapsLimit+"="+limit.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	t.Logf("with %s (%s):\n%s", caps, time.Since(start).Round(time.Millisecond), out.String())
	return err
}

// capsChild is the child's whole run; it returns the exit code.
func capsChild(caps string) int {
	if err := checkCaps(caps); err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	return 0
}

func checkCaps(caps string) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "proxymodes-caps-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Config{Binary: os.Getenv(envCapsCP), Dir: dir,
		Address: addrplan.APIServer(), BindAddress: loopback, ServiceCIDR: addrplan.Services})
	if err != nil {
		return err
	}
	defer cp.Stop()
	cs, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		return err
	}
	vip, err := createService(ctx, cs)
	if err != nil {
		return err
	}
	limit, err := time.ParseDuration(os.Getenv(envCapsLimit))
	if err != nil {
		return err
	}
	for _, run := range []struct{ mode, backend string }{{"iptables", "nft"}, {"iptables", "legacy"}, {"userspace", "nft"}, {"nftables", ""}} {
		start := time.Now()
		label := run.mode + " mode"
		if run.backend != "" {
			label += ", iptables-" + run.backend
		}
		if err := runProxier(ctx, cp.Kubeconfig, caps, run.mode, run.backend, vip, limit); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		fmt.Printf("%s: programmed the Service in %s\n", label, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

func createService(ctx context.Context, cs kubernetes.Interface) (string, error) {
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "caps"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	_, err = cs.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "caps-1", Labels: map[string]string{discoveryv1.LabelServiceName: "caps"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addrplan.PodIP(0, 0).Addr().String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	return svc.Spec.ClusterIP, err
}

// runProxier runs the proxier under setpriv, whose bounding set leaves
// root with caps alone, until its healthz says a sync succeeded and the
// Service's address is in the mode's rules (the iptables backend's; an
// empty backend is the nftables mode's table).
func runProxier(ctx context.Context, kubeconfig, caps, mode, backend, vip string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	args := []string{"--bounding-set=-all,+" + strings.ReplaceAll(caps, ",", ",+"), "--inh-caps=-all", "--",
		os.Getenv(envCapsBin), "--proxy-mode=" + mode, "--kubeconfig=" + kubeconfig,
		"--hostname-override=node-1", "--cluster-cidr=" + addrplan.Pods.String(),
		"--healthz-bind-address=127.0.0.1:10256", "--metrics-bind-address=", "--min-sync-period=100ms"}
	if backend != "" {
		args = append(args, "--iptables-backend="+backend)
	}
	cmd := exec.CommandContext(ctx, "setpriv", args...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("setpriv (util-linux) runs the proxier with fewer capabilities: %w", err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		// The next run starts clean, as a fresh node would.
		exec.Command(os.Getenv(envCapsBin), "--cleanup").Run()
	}()
	for {
		if resp, err := http.Get("http://127.0.0.1:10256/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				dump := exec.Command("iptables-" + backend + "-save")
				if mode == "nftables" {
					dump = exec.Command("nft", "list", "table", "ip", "proxymodes")
				}
				rules, err := dump.CombinedOutput()
				if err != nil {
					return fmt.Errorf("%s: %v: %s", dump, err, rules)
				}
				if !strings.Contains(string(rules), vip) {
					return fmt.Errorf("healthy, but no rule of %s names the Service's address %s", dump, vip)
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no successful sync in %s; the proxier's log ends:\n%s", limit, tail(log.String(), 3))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
