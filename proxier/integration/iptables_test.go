// Package integration runs the reference proxier in the local lab: real
// control plane, real endpointslice controller, real kernel rules in node
// namespaces, real TCP and UDP through them.
package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/rules"
)

var lab *local.Lab

type stderrLog struct{}

func (stderrLog) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

func TestMain(m *testing.M) {
	labtest.Init()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	l, err := local.Up(ctx, local.Options{Name: "itest", Nodes: 2, Logger: stderrLog{}, BuildOutput: os.Stderr,
		Proxier: &local.ProxierOptions{Mode: "iptables"}})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lab = l
	labtest.OnInterrupt(l.Down)
	code := m.Run()
	if code != 0 {
		dir := filepath.Join(os.TempDir(), "proxymodes-logs", "integration-"+time.Now().Format("20060102-150405"))
		if err := l.SaveLogs(dir); err == nil {
			fmt.Fprintln(os.Stderr, "logs of the failed run kept in", dir)
		}
	}
	if err := l.Down(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func addPod(t *testing.T, name, node string, labels map[string]string) cluster.Pod {
	t.Helper()
	p, err := lab.AddPod(context.Background(), cluster.PodSpec{Namespace: "default", Name: name, Node: node, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.DeletePod(context.Background(), p.Namespace, p.Name) })
	return p
}

func createService(t *testing.T, name string, selector map[string]string) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: selector, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(backend.TCPPort), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 53, TargetPort: intstr.FromInt32(backend.UDPPort), Protocol: corev1.ProtocolUDP},
		}},
	}
	created, err := lab.Client().CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lab.Client().CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return created
}

func vip(svc *corev1.Service, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), port)
}

// eventually polls until served returns a probe summary for which ok holds,
// and fails with the last summary after the deadline. The proxier syncs at
// most once per --min-sync-period (1s), so seconds are plenty.
func eventually(t *testing.T, what string, limit time.Duration, run func() probe.Summary, ok func(probe.Summary) bool) probe.Summary {
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

func served(s probe.Summary, names ...string) bool {
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

// With two equally likely backends, 40 connections all landing on one has
// probability 2 * 0.5^40 < 1e-11, so "both seen" never flakes.
const connections = 40

func TestServiceVIPReachableFromEveryNode(t *testing.T) {
	sel := map[string]string{"app": "reach"}
	a := addPod(t, "reach-a", "node-1", sel)
	b := addPod(t, "reach-b", "node-2", sel)
	svc := createService(t, "reach", sel)
	ctx := context.Background()
	var clients []string
	for _, n := range lab.Info().Nodes {
		c := addPod(t, "client-"+n.Name, n.Name, nil)
		clients = append(clients, c.NS, n.NS)
	}
	for _, from := range clients {
		for _, tg := range []probe.Target{
			{NS: from, Addr: vip(svc, 80), Proto: probe.TCP},
			{NS: from, Addr: vip(svc, 53), Proto: probe.UDP},
		} {
			eventually(t, "VIP serves both backends to "+tg.String(), 20*time.Second,
				func() probe.Summary { return lab.Probe(ctx, tg, connections, 2*time.Second) },
				func(s probe.Summary) bool { return served(s, a.Name, b.Name) })
		}
	}
}

func TestEndpointChangesAreReflected(t *testing.T) {
	sel := map[string]string{"app": "churn"}
	a := addPod(t, "churn-a", "node-1", sel)
	svc := createService(t, "churn", sel)
	from := lab.Info().Nodes[1].NS
	tg := probe.Target{NS: from, Addr: vip(svc, 80), Proto: probe.TCP}
	ctx := context.Background()
	run := func() probe.Summary { return lab.Probe(ctx, tg, connections, 2*time.Second) }
	eventually(t, "one endpoint", 20*time.Second, run, func(s probe.Summary) bool { return served(s, a.Name) })

	b := addPod(t, "churn-b", "node-2", sel)
	eventually(t, "endpoint added", 20*time.Second, run, func(s probe.Summary) bool { return served(s, a.Name, b.Name) })

	if err := lab.DeletePod(ctx, a.Namespace, a.Name); err != nil {
		t.Fatal(err)
	}
	eventually(t, "endpoint removed", 20*time.Second, run, func(s probe.Summary) bool { return served(s, b.Name) })
}

func TestDeletedServiceLeavesNoRules(t *testing.T) {
	sel := map[string]string{"app": "gone"}
	addPod(t, "gone-a", "node-1", sel)
	svc := createService(t, "gone", sel)
	ctx := context.Background()
	tg := probe.Target{NS: lab.Info().Nodes[0].NS, Addr: vip(svc, 80), Proto: probe.TCP}
	eventually(t, "service programmed", 20*time.Second,
		func() probe.Summary { return lab.Probe(ctx, tg, 1, 2*time.Second) },
		func(s probe.Summary) bool { return served(s, "gone-a") })

	// Everything that names the Service, on every node, before deletion.
	needles := []string{svc.Spec.ClusterIP, "default/gone:"}
	var chains []string
	for _, n := range lab.Info().Nodes {
		dump, err := lab.IPTables(context.Background(), n.NS)
		if err != nil {
			t.Fatal(err)
		}
		lines := rules.Matching(dump, needles...)
		if len(lines) == 0 {
			t.Fatalf("%s: no rule mentions %v while the Service exists, so absence proves nothing", n.Name, needles)
		}
		for _, l := range lines {
			for _, f := range strings.Fields(l) {
				if strings.HasPrefix(f, "PM-SVC-") || strings.HasPrefix(f, "PM-SEP-") || strings.HasPrefix(f, "PM-FW-") {
					chains = append(chains, f)
				}
			}
		}
	}
	if len(chains) == 0 {
		t.Fatal("found no per-service or per-endpoint chains for the Service")
	}
	if err := lab.Client().CoreV1().Services("default").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range lab.Info().Nodes {
		for {
			dump, err := lab.IPTables(context.Background(), n.NS)
			if err != nil {
				t.Fatal(err)
			}
			left := rules.Matching(dump, append(needles, chains...)...)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: 20s after the Service was deleted these rules remain:\n%s", n.Name, strings.Join(left, "\n"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// TestCleanupLeavesNoChain runs last: it stops a node's proxier and runs
// `proxier --cleanup` in that node's namespace.
func TestCleanupLeavesNoChain(t *testing.T) {
	n := lab.Info().Nodes[1]
	before, err := lab.IPTables(context.Background(), n.NS)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules.Matching(before, "PM-")) == 0 {
		t.Fatalf("%s has no PM- chains before cleanup, so the test proves nothing", n.Name)
	}
	if err := lab.StopProxier(n.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Exec(context.Background(), n.NS, lab.ProxierBinary(), "--cleanup"); err != nil {
		t.Fatal(err)
	}
	after, err := lab.IPTables(context.Background(), n.NS)
	if err != nil {
		t.Fatal(err)
	}
	if left := rules.Matching(after, "PM-", "proxymodes"); len(left) > 0 {
		t.Fatalf("after --cleanup, %s still has:\n%s", n.Name, strings.Join(left, "\n"))
	}
}
