// Package iptables_test runs the reference proxier's iptables mode in the
// local lab: real control plane, real endpointslice controller, real kernel
// rules in node namespaces, real TCP and UDP through them.
package iptables_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/rules"
)

var lab *local.Lab

func TestMain(m *testing.M) {
	os.Exit(labtest.WithLab(m, local.Options{Name: "itest", Nodes: 2, Proxier: &local.ProxierOptions{Mode: "iptables"}},
		func(l *local.Lab) { lab = l }))
}

// With two equally likely backends, 40 connections all landing on one has
// probability 2 * 0.5^40 < 1e-11, so "both seen" never flakes.
const connections = 40

func TestServiceVIPReachableFromEveryNode(t *testing.T) {
	sel := map[string]string{"app": "reach"}
	a := labtest.AddPod(t, lab, "reach-a", "node-1", sel)
	b := labtest.AddPod(t, lab, "reach-b", "node-2", sel)
	svc := labtest.Service(t, lab, "reach", sel)
	ctx := context.Background()
	var clients []string
	for _, n := range lab.Info().Nodes {
		c := labtest.AddPod(t, lab, "client-"+n.Name, n.Name, nil)
		clients = append(clients, c.NS, n.NS)
	}
	for _, from := range clients {
		for _, tg := range []probe.Target{
			{NS: from, Addr: labtest.VIP(svc, 80), Proto: probe.TCP},
			{NS: from, Addr: labtest.VIP(svc, 53), Proto: probe.UDP},
		} {
			labtest.Eventually(t, "VIP serves both backends to "+tg.String(), 20*time.Second,
				func() probe.Summary { return lab.Probe(ctx, tg, connections, 2*time.Second) },
				func(s probe.Summary) bool { return labtest.Served(s, a.Name, b.Name) })
		}
	}
}

func TestEndpointChangesAreReflected(t *testing.T) {
	sel := map[string]string{"app": "churn"}
	a := labtest.AddPod(t, lab, "churn-a", "node-1", sel)
	svc := labtest.Service(t, lab, "churn", sel)
	from := lab.Info().Nodes[1].NS
	tg := probe.Target{NS: from, Addr: labtest.VIP(svc, 80), Proto: probe.TCP}
	ctx := context.Background()
	run := func() probe.Summary { return lab.Probe(ctx, tg, connections, 2*time.Second) }
	labtest.Eventually(t, "one endpoint", 20*time.Second, run, func(s probe.Summary) bool { return labtest.Served(s, a.Name) })

	b := labtest.AddPod(t, lab, "churn-b", "node-2", sel)
	labtest.Eventually(t, "endpoint added", 20*time.Second, run, func(s probe.Summary) bool { return labtest.Served(s, a.Name, b.Name) })

	if err := lab.DeletePod(ctx, a.Namespace, a.Name); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, "endpoint removed", 20*time.Second, run, func(s probe.Summary) bool { return labtest.Served(s, b.Name) })
}

func TestDeletedServiceLeavesNoRules(t *testing.T) {
	sel := map[string]string{"app": "gone"}
	labtest.AddPod(t, lab, "gone-a", "node-1", sel)
	svc := labtest.Service(t, lab, "gone", sel)
	ctx := context.Background()
	tg := probe.Target{NS: lab.Info().Nodes[0].NS, Addr: labtest.VIP(svc, 80), Proto: probe.TCP}
	labtest.Eventually(t, "service programmed", 20*time.Second,
		func() probe.Summary { return lab.Probe(ctx, tg, 1, 2*time.Second) },
		func(s probe.Summary) bool { return labtest.Served(s, "gone-a") })

	// Everything that names the Service, on every node, before deletion.
	needles := []string{svc.Spec.ClusterIP, "default/gone:"}
	var chains []string
	for _, n := range lab.Info().Nodes {
		// Nodes sync on their own schedule; wait for this one's rules.
		var lines []string
		for deadline := time.Now().Add(20 * time.Second); len(lines) == 0; time.Sleep(200 * time.Millisecond) {
			dump, err := lab.IPTables(context.Background(), n.NS)
			if err != nil {
				t.Fatal(err)
			}
			lines = rules.Matching(dump, needles...)
			if len(lines) == 0 && time.Now().After(deadline) {
				t.Fatalf("%s: no rule mentions %v 20s after the Service was created", n.Name, needles)
			}
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
