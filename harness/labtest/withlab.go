package labtest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/leak"
	"github.com/proxymodes/proxymodes/harness/probe"
)

type stderrLog struct{}

func (stderrLog) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

// WithLab runs a test binary's tests against one lab: up before the first
// test, logs kept when a test fails, down and leak-checked after the last.
// Use it as `os.Exit(labtest.WithLab(m, opts, func(l *local.Lab) { lab = l }))`.
func WithLab(m *testing.M, opts local.Options, use func(*local.Lab)) int {
	Init()
	if opts.Logger == nil {
		opts.Logger = stderrLog{}
	}
	if opts.BuildOutput == nil {
		opts.BuildOutput = os.Stderr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	l, err := local.Up(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	OnInterrupt(l.Down)
	use(l)
	code := m.Run()
	if code != 0 {
		dir := filepath.Join(os.TempDir(), "proxymodes-logs", opts.Name+"-"+time.Now().Format("20060102-150405"))
		if err := l.SaveLogs(dir); err == nil {
			fmt.Fprintln(os.Stderr, "logs of the failed run kept in", dir)
		}
	}
	if err := l.Down(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if left := leak.Check(opts.Name); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "lab %s left behind: %v\n", opts.Name, left)
		code = 1
	}
	return code
}

// AddPod adds an echo pod for the duration of the test.
func AddPod(t testing.TB, c cluster.Cluster, name, node string, labels map[string]string) cluster.Pod {
	t.Helper()
	p, err := c.AddPod(context.Background(), cluster.PodSpec{Namespace: "default", Name: name, Node: node, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.DeletePod(context.Background(), p.Namespace, p.Name) })
	return p
}

// Service creates, for the duration of the test, a Service over the echo
// backends: TCP 80 and UDP 53 to their port 9000. Options adjust the spec
// before it is created.
func Service(t testing.TB, c cluster.Cluster, name string, selector map[string]string, opts ...func(*corev1.Service)) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(backend.TCPPort), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 53, TargetPort: intstr.FromInt32(backend.UDPPort), Protocol: corev1.ProtocolUDP},
		}},
	}
	for _, o := range opts {
		o(svc)
	}
	created, err := c.Client().CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Client().CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return created
}

// VIP is the Service's ClusterIP with a port.
func VIP(svc *corev1.Service, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), port)
}

// Eventually probes until ok holds and fails with the last summary after
// limit. Proxiers sync at most once per --min-sync-period, so convergence
// takes seconds; the assertion itself is never loosened.
func Eventually(t testing.TB, what string, limit time.Duration, run func() probe.Summary, ok func(probe.Summary) bool) probe.Summary {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s := run()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s; last probe: %s", what, limit, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Served is true when every connection succeeded and exactly the named
// backends answered.
func Served(s probe.Summary, names ...string) bool {
	c := s.Counts()
	if len(s.Errors()) > 0 || len(c) != len(names) {
		return false
	}
	for _, n := range names {
		if c[n] == 0 {
			return false
		}
	}
	return true
}
