package local_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
)

const sharedName = "ltest"

var (
	sharedMu  sync.Mutex
	sharedLab *local.Lab
)

func TestMain(m *testing.M) {
	code := labtest.Run(m)
	downShared()
	os.Exit(code)
}

// stderrLog serves the shared lab, which outlives the test that starts it.
type stderrLog struct{}

func (stderrLog) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

// lab returns the lab shared by the tests of this file, starting it on
// first use.
func lab(t *testing.T) *local.Lab {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedLab == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		l, err := local.Up(ctx, local.Options{Name: sharedName, Nodes: 2, Logger: stderrLog{}, BuildOutput: os.Stderr})
		if err != nil {
			t.Fatal(err)
		}
		labtest.OnInterrupt(l.Down)
		sharedLab = l
	}
	return sharedLab
}

func downShared() error {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if sharedLab == nil {
		return nil
	}
	err := sharedLab.Down(context.Background())
	sharedLab = nil
	return err
}

func addPod(t *testing.T, l *local.Lab, name, node string, labels map[string]string) cluster.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := l.AddPod(ctx, cluster.PodSpec{Namespace: "default", Name: name, Node: node, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.DeletePod(context.Background(), p.Namespace, p.Name); err != nil {
			t.Errorf("delete pod %s: %v", p, err)
		}
	})
	return p
}

func TestPodReachesPodOnOtherNode(t *testing.T) {
	l := lab(t)
	a := addPod(t, l, "p2p-a", "node-1", nil)
	b := addPod(t, l, "p2p-b", "node-2", nil)
	if a.IP == b.IP || a.Node == b.Node {
		t.Fatalf("pods not on distinct nodes with distinct IPs: %+v %+v", a, b)
	}
	for _, pair := range [][2]cluster.Pod{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		for _, proto := range []probe.Proto{probe.TCP, probe.UDP, probe.HTTP} {
			port := uint16(backend.TCPPort)
			if proto == probe.HTTP {
				port = backend.HTTPPort
			}
			r := probe.Once(context.Background(), probe.Target{NS: from.NS, Addr: netip.AddrPortFrom(to.IP, port), Proto: proto}, 5*time.Second)
			if r.Err != nil {
				t.Fatalf("%s from %s to %s (%s): %v", proto, from, to, to.IP, r.Err)
			}
			if r.Backend != to.Name {
				t.Errorf("%s from %s to %s: answered by %q", proto, from, to, r.Backend)
			}
			// Pod-to-pod traffic is routed, never NATed.
			if host, _, _ := strings.Cut(r.Client, ":"); host != from.IP.String() {
				t.Errorf("%s from %s: backend saw client %s, want %s", proto, from, r.Client, from.IP)
			}
		}
	}
}

func TestServiceGetsEndpointSliceOfReadyPods(t *testing.T) {
	l := lab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sel := map[string]string{"app": "eps"}
	p1 := addPod(t, l, "eps-1", "node-1", sel)
	p2 := addPod(t, l, "eps-2", "node-2", sel)
	addPod(t, l, "eps-other", "node-1", map[string]string{"app": "other"})
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "eps", Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(backend.TCPPort), Protocol: corev1.ProtocolTCP},
		}},
	}
	c := l.Client()
	if _, err := c.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.CoreV1().Services("default").Delete(context.Background(), "eps", metav1.DeleteOptions{})
	want := []string{p1.IP.String(), p2.IP.String()}
	sort.Strings(want)
	var got []string
	for ctx.Err() == nil {
		got = readyEndpointIPs(t, ctx, l, "default", "eps")
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("EndpointSlice of Service eps lists ready IPs %v, want %v", got, want)
}

func readyEndpointIPs(t *testing.T, ctx context.Context, l *local.Lab, ns, svc string) []string {
	slices, err := l.Client().DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				ips = append(ips, ep.Addresses...)
			}
		}
	}
	sort.Strings(ips)
	return ips
}

func TestBackendFaultsWhilePodStaysReady(t *testing.T) {
	l := lab(t)
	p := addPod(t, l, "faulty", "node-2", nil)
	from := l.Info().Nodes[0].NS
	tcp := probe.Target{NS: from, Addr: netip.AddrPortFrom(p.IP, backend.TCPPort), Proto: probe.TCP}
	udp := probe.Target{NS: from, Addr: netip.AddrPortFrom(p.IP, backend.UDPPort), Proto: probe.UDP}
	ctx := context.Background()
	expectServed := func(stage string) {
		t.Helper()
		for _, tg := range []probe.Target{tcp, udp} {
			if r := probe.Once(ctx, tg, 5*time.Second); r.Err != nil || r.Backend != p.Name {
				t.Fatalf("%s: %s: got backend %q, err %v; want %s", stage, tg, r.Backend, r.Err, p.Name)
			}
		}
	}
	expectServed("before any fault")
	hostRules := labtest.HostRules(t)

	if err := l.Break(ctx, p, cluster.Refuse); err != nil {
		t.Fatal(err)
	}
	for _, tg := range []probe.Target{tcp, udp} {
		r := probe.Once(ctx, tg, 2*time.Second)
		if !errors.Is(r.Err, syscall.ECONNREFUSED) {
			t.Errorf("refuse: %s: want connection refused, got backend %q err %v", tg, r.Backend, r.Err)
		}
	}
	expectPodReady(t, l, p)
	if err := l.Restore(ctx, p); err != nil {
		t.Fatal(err)
	}
	expectServed("after restoring from refuse")

	if err := l.Break(ctx, p, cluster.Blackhole); err != nil {
		t.Fatal(err)
	}
	for _, tg := range []probe.Target{tcp, udp} {
		start := time.Now()
		r := probe.Once(ctx, tg, 700*time.Millisecond)
		// A black hole gives no answer at all: the probe can only time out.
		if !errors.Is(r.Err, os.ErrDeadlineExceeded) && !errors.Is(r.Err, context.DeadlineExceeded) {
			t.Errorf("blackhole: %s: want a timeout, got backend %q err %v", tg, r.Backend, r.Err)
		}
		if d := time.Since(start); d < 600*time.Millisecond {
			t.Errorf("blackhole: %s failed after %s, before its timeout", tg, d)
		}
	}
	expectPodReady(t, l, p)
	if got := labtest.HostRules(t); got != hostRules {
		t.Errorf("the host namespace's rules changed while a pod was black-holed:\nbefore:\n%s\nafter:\n%s", hostRules, got)
	}
	if err := l.Restore(ctx, p); err != nil {
		t.Fatal(err)
	}
	expectServed("after restoring from blackhole")
}

func expectPodReady(t *testing.T, l *local.Lab, p cluster.Pod) {
	t.Helper()
	obj, err := l.Client().CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range obj.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return
		}
	}
	t.Errorf("pod %s is not Ready while its backend is broken: %+v", p, obj.Status.Conditions)
}
