package userspace_test

// Lab integration tests of the userspace mode: a real control plane and
// endpointslice controller, the proxier binary in --proxy-mode=userspace
// on two namespace nodes, echo backends in pod namespaces, real traffic.
// Needs root; one lab runs per host, so everything shares this TestMain.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/rules"
)

var lab *local.Lab

func TestMain(m *testing.M) {
	labtest.Init()
	flag.Parse()
	if testing.Short() || os.Geteuid() != 0 {
		// Unit tests only: the lab needs root, and -short skips it.
		fmt.Fprintln(os.Stderr, "userspace: no lab (-short or not root); lab tests are skipped")
		os.Exit(m.Run())
	}
	os.Exit(labtest.WithLab(m, local.Options{Name: "usp", Nodes: 2, Proxier: &local.ProxierOptions{Mode: "userspace"}},
		func(l *local.Lab) { lab = l }))
}

func needLab(t testing.TB) {
	t.Helper()
	if lab == nil {
		t.Skip("no lab (needs root)")
	}
}

func addPod(t testing.TB, name, node string, labels map[string]string) cluster.Pod {
	return labtest.AddPod(t, lab, name, node, labels)
}

func createService(t testing.TB, name string, selector map[string]string, affinity bool) *corev1.Service {
	t.Helper()
	return labtest.Service(t, lab, name, selector, func(s *corev1.Service) {
		if affinity {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		}
	})
}

var vip = labtest.VIP

// eventually polls until ok holds for a probe summary (the proxier syncs at
// most once a second, and slices take a moment to appear).
func eventually(t testing.TB, what string, run func() probe.Summary, ok func(probe.Summary) bool) probe.Summary {
	t.Helper()
	return labtest.Eventually(t, what, 20*time.Second, run, ok)
}

var served = labtest.Served

// threeBackends starts three pods behind a new Service and a client pod on
// node-1, and waits until the client reaches all three through the VIP.
func threeBackends(t *testing.T, app string, affinity bool) (svc *corev1.Service, pods []cluster.Pod, client cluster.Pod) {
	t.Helper()
	sel := map[string]string{"app": app}
	for i, node := range []string{"node-1", "node-2", "node-2"} {
		pods = append(pods, addPod(t, fmt.Sprintf("%s-%c", app, 'a'+i), node, sel))
	}
	client = addPod(t, app+"-client", "node-1", nil)
	svc = createService(t, app, sel, affinity)
	if !affinity {
		tg := probe.Target{NS: client.NS, Addr: vip(svc, 80), Proto: probe.TCP}
		eventually(t, "VIP serves all three backends", func() probe.Summary { return probe.Run(context.Background(), tg, 6, 5*time.Second) },
			func(s probe.Summary) bool { return served(s, pods[0].Name, pods[1].Name, pods[2].Name) })
	}
	return svc, pods, client
}

// TestRoundRobinExactOrder: from one client, 3×k connections go to the
// three backends in a fixed rotation.
func TestRoundRobinExactOrder(t *testing.T) {
	needLab(t)
	svc, pods, client := threeBackends(t, "rr", false)
	const k = 7
	s := probe.Run(context.Background(), probe.Target{NS: client.NS, Addr: vip(svc, 80), Proto: probe.TCP}, 3*k, 5*time.Second)
	seq := s.Sequence()
	if errs := s.Errors(); len(errs) > 0 {
		t.Fatalf("%d connections failed: %v", len(errs), errs[0])
	}
	period := seq[:3]
	if period[0] == period[1] || period[1] == period[2] || period[0] == period[2] {
		t.Fatalf("first three connections %v: not three different backends", period)
	}
	for i, b := range seq {
		if b != period[i%3] {
			t.Fatalf("connection %d went to %s, want %s: sequence %v is not a strict rotation", i, b, period[i%3], seq)
		}
	}
	c := s.Counts()
	for _, p := range pods {
		if c[p.Name] != k {
			t.Errorf("%s served %d of %d connections, want %d", p.Name, c[p.Name], 3*k, k)
		}
	}
	t.Logf("rotation %v", period)
}

// TestRetryHidesBrokenBackend: with one of three backends refusing or
// black-holing (its Pod stays Ready), every client connection succeeds
// because the proxier retries the next endpoint.
func TestRetryHidesBrokenBackend(t *testing.T) {
	needLab(t)
	for _, fault := range []cluster.Fault{cluster.Refuse, cluster.Blackhole} {
		t.Run(string(fault), func(t *testing.T) {
			svc, pods, client := threeBackends(t, "retry-"+string(fault), false)
			ctx := context.Background()
			broken := pods[1]
			if err := lab.Break(ctx, broken, fault); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { lab.Restore(ctx, broken) })
			// The fault is real: the pod itself fails.
			direct := probe.Once(ctx, probe.Target{NS: client.NS, Addr: netip.AddrPortFrom(broken.IP, backend.TCPPort), Proto: probe.TCP}, time.Second)
			if direct.Err == nil {
				t.Fatalf("%s pod %s still answers directly", fault, broken.Name)
			}
			const n = 12
			s := probe.Run(ctx, probe.Target{NS: client.NS, Addr: vip(svc, 80), Proto: probe.TCP}, n, 5*time.Second)
			if errs := s.Errors(); len(errs) > 0 {
				t.Fatalf("%d of %d connections failed while one backend is %s: %v", len(errs), n, fault, errs[0])
			}
			c := s.Counts()
			if c[broken.Name] != 0 {
				t.Errorf("%d connections answered by the broken pod %s", c[broken.Name], broken.Name)
			}
			if c[pods[0].Name] == 0 || c[pods[2].Name] == 0 {
				t.Errorf("healthy backends not both used: %v", c)
			}
			// Every third connection met the broken backend first and
			// was retried: for a black hole that costs the first dial
			// timeout (250ms).
			slow := 0
			for _, r := range s.Results {
				if r.Latency >= 250*time.Millisecond {
					slow++
				}
			}
			if fault == cluster.Blackhole && slow < n/3-1 {
				t.Errorf("only %d of %d connections took >=250ms; expected about %d retried after a dial timeout", slow, n, n/3)
			}
			t.Logf("%s", s)
		})
	}
}

// TestClientIPAffinity: all connections from one client go to one backend;
// another client is served too.
func TestClientIPAffinity(t *testing.T) {
	needLab(t)
	svc, pods, client := threeBackends(t, "sticky", true)
	ctx := context.Background()
	tg := probe.Target{NS: client.NS, Addr: vip(svc, 80), Proto: probe.TCP}
	s := eventually(t, "VIP serves the client", func() probe.Summary { return probe.Run(ctx, tg, 1, 5*time.Second) },
		func(s probe.Summary) bool { return len(s.Errors()) == 0 })
	first := s.Results[0].Backend
	s = probe.Run(ctx, tg, 15, 5*time.Second)
	if errs := s.Errors(); len(errs) > 0 {
		t.Fatalf("connections failed: %v", errs[0])
	}
	if c := s.Counts(); len(c) != 1 || c[first] != 15 {
		t.Errorf("with ClientIP affinity one client was served by %v, want only %s", c, first)
	}
	// Breaking the sticky backend moves the client (affinity reset on
	// dial failure), and it then sticks to the new one.
	var stuck cluster.Pod
	for _, p := range pods {
		if p.Name == first {
			stuck = p
		}
	}
	if err := lab.Break(ctx, stuck, cluster.Refuse); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Restore(ctx, stuck) })
	s = probe.Run(ctx, tg, 8, 5*time.Second)
	c := s.Counts()
	if len(s.Errors()) > 0 || len(c) != 1 || c[first] != 0 {
		t.Errorf("after breaking the sticky backend %s: %s, want all on one other backend", first, s)
	}
}

// TestUDPEchoThroughVIP: datagrams to VIP:53 from a pod and from the node
// itself reach a backend, and the reply reaches the client's connected
// socket, which only accepts it from the VIP. New client sockets are new
// associations, which rotate over the backends.
func TestUDPEchoThroughVIP(t *testing.T) {
	needLab(t)
	svc, pods, client := threeBackends(t, "udp", false)
	ctx := context.Background()
	for _, from := range []string{client.NS, lab.Info().Nodes[0].NS, lab.Info().Nodes[1].NS} {
		tg := probe.Target{NS: from, Addr: vip(svc, 53), Proto: probe.UDP}
		s := probe.Run(ctx, tg, 6, 3*time.Second)
		if !served(s, pods[0].Name, pods[1].Name, pods[2].Name) {
			t.Errorf("UDP from %s: %s; want replies from all three backends", from, s)
		}
	}
}

var toPortsRE = regexp.MustCompile(`--to-ports (\d+)`)

// proxyPorts returns the REDIRECT target ports of rules mentioning ip.
func proxyPorts(t *testing.T, ns, ip string) []int {
	t.Helper()
	dump, err := rules.IPTables(ns)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, l := range rules.Matching(dump, ip) {
		if m := toPortsRE.FindStringSubmatch(l); m != nil {
			p, _ := strconv.Atoi(m[1])
			out = append(out, p)
		}
	}
	return out
}

// sockets returns the local ports of TCP listeners and UDP sockets in ns,
// read from /proc inside the namespace.
func sockets(t *testing.T, ns string) map[int]bool {
	t.Helper()
	ports := map[int]bool{}
	err := netlab.Do(ns, func() error {
		for _, f := range []string{"tcp", "udp"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				return err
			}
			sc := bufio.NewScanner(strings.NewReader(string(b)))
			sc.Scan() // header
			for sc.Scan() {
				fields := strings.Fields(sc.Text())
				if len(fields) < 4 {
					continue
				}
				// st 0A is TCP LISTEN; every UDP socket counts.
				if f == "tcp" && fields[3] != "0A" {
					continue
				}
				local := fields[1]
				i := strings.LastIndexByte(local, ':')
				p, _ := strconv.ParseInt(local[i+1:], 16, 32)
				ports[int(p)] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// TestDeletedServiceLeavesNothing: after the Service is deleted no rule
// mentions its VIP and its proxy sockets are closed, on every node.
func TestDeletedServiceLeavesNothing(t *testing.T) {
	needLab(t)
	sel := map[string]string{"app": "gone"}
	addPod(t, "gone-a", "node-1", sel)
	svc := createService(t, "gone", sel, false)
	ctx := context.Background()
	for _, n := range lab.Info().Nodes {
		tg := probe.Target{NS: n.NS, Addr: vip(svc, 80), Proto: probe.TCP}
		eventually(t, "service programmed on "+n.Name, func() probe.Summary { return probe.Run(ctx, tg, 1, 5*time.Second) },
			func(s probe.Summary) bool { return served(s, "gone-a") })
	}
	ports := map[string][]int{}
	for _, n := range lab.Info().Nodes {
		ports[n.Name] = proxyPorts(t, n.NS, svc.Spec.ClusterIP)
		if len(ports[n.Name]) < 2 {
			t.Fatalf("%s: found proxy ports %v for the VIP, want a TCP and a UDP one", n.Name, ports[n.Name])
		}
		open := sockets(t, n.NS)
		for _, p := range ports[n.Name] {
			if !open[p] {
				t.Fatalf("%s: proxy port %d is not open while the Service exists, so absence proves nothing", n.Name, p)
			}
		}
	}
	if err := lab.Client().CoreV1().Services("default").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range lab.Info().Nodes {
		for {
			dump, err := rules.IPTables(n.NS)
			if err != nil {
				t.Fatal(err)
			}
			left := rules.Matching(dump, svc.Spec.ClusterIP, "default/gone:")
			open := sockets(t, n.NS)
			var still []int
			for _, p := range ports[n.Name] {
				if open[p] {
					still = append(still, p)
				}
			}
			if len(left) == 0 && len(still) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: 20s after the Service was deleted, rules %q and sockets on ports %v remain", n.Name, left, still)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// Benchmarks compare the userspace proxy with going straight to the pod:
// a client pod on node-1, the backend pod on node-2.
var (
	benchOnce sync.Once
	benchSvc  *corev1.Service
	benchPod  cluster.Pod
	benchCli  cluster.Pod
	benchErr  error
)

func benchSetup(b *testing.B) {
	needLab(b)
	benchOnce.Do(func() {
		ctx := context.Background()
		sel := map[string]string{"app": "bench"}
		if benchPod, benchErr = lab.AddPod(ctx, cluster.PodSpec{Namespace: "default", Name: "bench-a", Node: "node-2", Labels: sel}); benchErr != nil {
			return
		}
		if benchCli, benchErr = lab.AddPod(ctx, cluster.PodSpec{Namespace: "default", Name: "bench-client", Node: "node-1"}); benchErr != nil {
			return
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: "default"},
			Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{
				{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(backend.TCPPort), Protocol: corev1.ProtocolTCP},
			}},
		}
		if benchSvc, benchErr = lab.Client().CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); benchErr != nil {
			return
		}
		tg := probe.Target{NS: benchCli.NS, Addr: vip(benchSvc, 80), Proto: probe.TCP}
		deadline := time.Now().Add(20 * time.Second)
		for probe.Once(ctx, tg, 2*time.Second).Err != nil {
			if time.Now().After(deadline) {
				benchErr = fmt.Errorf("bench service not reachable after 20s")
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
}

func benchTargets() map[string]probe.Target {
	return map[string]probe.Target{
		"proxy":  {NS: benchCli.NS, Addr: vip(benchSvc, 80), Proto: probe.TCP},
		"direct": {NS: benchCli.NS, Addr: netip.AddrPortFrom(benchPod.IP, backend.TCPPort), Proto: probe.TCP},
	}
}

// BenchmarkConnect measures connect plus the backend's greeting line, one
// new connection per op.
func BenchmarkConnect(b *testing.B) {
	benchSetup(b)
	tgs := benchTargets()
	for _, path := range []string{"proxy", "direct"} {
		b.Run("path="+path, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if r := probe.Once(context.Background(), tgs[path], 5*time.Second); r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		})
	}
}

const bulkBytes = 64 << 20

// BenchmarkThroughput sends 64 MiB through the TCP echo backend and reads
// the echo back, per op; MB/s counts one direction.
func BenchmarkThroughput(b *testing.B) {
	benchSetup(b)
	tgs := benchTargets()
	chunk := make([]byte, 256<<10)
	for _, path := range []string{"proxy", "direct"} {
		b.Run("path="+path, func(b *testing.B) {
			b.SetBytes(bulkBytes)
			for i := 0; i < b.N; i++ {
				conn, err := probe.Dial(context.Background(), tgs[path], "tcp")
				if err != nil {
					b.Fatal(err)
				}
				conn.SetDeadline(time.Now().Add(2 * time.Minute))
				r := bufio.NewReaderSize(conn, 256<<10)
				if _, err := r.ReadString('\n'); err != nil {
					b.Fatal(err)
				}
				errc := make(chan error, 1)
				go func() {
					var err error
					for sent := 0; sent < bulkBytes && err == nil; sent += len(chunk) {
						_, err = conn.Write(chunk)
					}
					if err == nil {
						err = conn.(*net.TCPConn).CloseWrite()
					}
					errc <- err
				}()
				n, err := io.Copy(io.Discard, r)
				if werr := <-errc; werr != nil {
					b.Fatal(werr)
				}
				if err != nil || n != bulkBytes {
					b.Fatalf("echo returned %d bytes (%v), want %d", n, err, bulkBytes)
				}
				conn.Close()
			}
		})
	}
}
