// Package ipvs_test runs the reference proxier's IPVS mode in the local lab,
// whose nodes live in a user-mode Linux guest when the host has no ip_vs.
package ipvs_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/probe"
)

var lab *local.Lab

func TestMain(m *testing.M) {
	os.Exit(labtest.WithLab(m, local.Options{Name: "ipvst", Nodes: 2, Proxier: &local.ProxierOptions{Mode: "ipvs"}},
		func(l *local.Lab) { lab = l }))
}

// backends starts three selected pods and a client pod, and waits until
// the Service's VIP serves all three from the client.
func backends(t *testing.T, name string) (cluster.Pod, probe.Target, []string) {
	sel := map[string]string{"app": name}
	var names []string
	for i, node := range []string{"node-1", "node-2", "node-2"} {
		p := labtest.AddPod(t, lab, name+"-"+string(rune('a'+i)), node, sel)
		names = append(names, p.Name)
	}
	client := labtest.AddPod(t, lab, name+"-client", "node-1", nil)
	svc := labtest.Service(t, lab, name, sel)
	tg := probe.Target{NS: client.NS, Addr: labtest.VIP(svc, 80), Proto: probe.TCP}
	labtest.Eventually(t, "VIP serves all backends", 30*time.Second,
		func() probe.Summary { return lab.Probe(context.Background(), tg, 30, 2*time.Second) },
		func(s probe.Summary) bool { return labtest.Served(s, names...) })
	return client, tg, names
}

// cyclic reports whether seq repeats its first len(names) entries.
func cyclic(seq []string, n int) bool {
	for i := n; i < len(seq); i++ {
		if seq[i] != seq[i%n] {
			return false
		}
	}
	return len(seq) >= n
}

func TestSchedulerSwitchTakesEffect(t *testing.T) {
	_, tg, names := backends(t, "sched")
	ctx := context.Background()
	s := lab.Probe(ctx, tg, 30, 2*time.Second)
	if len(s.Errors()) > 0 || !cyclic(s.Sequence(), len(names)) || len(s.Counts()) != len(names) {
		t.Fatalf("rr (the default) should cycle through %v: %v", names, s.Sequence())
	}
	// Source hashing sends every connection from one client to one backend.
	if err := lab.RestartProxiers(ctx, "--ipvs-scheduler=sh"); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, "sh pins the client", 30*time.Second,
		func() probe.Summary { return lab.Probe(ctx, tg, 30, 2*time.Second) },
		func(s probe.Summary) bool { return len(s.Errors()) == 0 && len(s.Counts()) == 1 })
	if out, err := lab.Exec(ctx, lab.Info().Nodes[0].NS, "ipvsadm", "-Ln", "-t", tg.Addr.String()); err != nil || !strings.Contains(out, " sh") {
		t.Errorf("virtual server after the switch (want scheduler sh): %v\n%s", err, out)
	}
	if err := lab.RestartProxiers(ctx); err != nil {
		t.Fatal(err)
	}
	labtest.Eventually(t, "rr again", 30*time.Second,
		func() probe.Summary { return lab.Probe(ctx, tg, 30, 2*time.Second) },
		func(s probe.Summary) bool {
			return len(s.Errors()) == 0 && cyclic(s.Sequence(), len(names)) && len(s.Counts()) == len(names)
		})
}

func TestDeletedServiceLeavesNoVirtualServer(t *testing.T) {
	_, tg, _ := backends(t, "gone")
	ctx := context.Background()
	vip := tg.Addr.Addr().String()
	// Nodes sync on their own schedule: wait until every node has the
	// virtual server, or its absence later proves nothing.
	for _, n := range lab.Info().Nodes {
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := lab.Exec(ctx, n.NS, "ipvsadm", "-Ln")
			if err == nil && strings.Contains(out, vip) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no virtual server for %s 30s after the Service was created (%v):\n%s", n.Name, vip, err, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	if err := lab.Client().CoreV1().Services("default").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range lab.Info().Nodes {
		for {
			vs, err1 := lab.Exec(ctx, n.NS, "ipvsadm", "-Ln")
			addrs, err2 := lab.Exec(ctx, n.NS, "ip", "-o", "addr", "show", "dev", "kube-ipvs0")
			rules, err3 := lab.IPTables(ctx, n.NS)
			if err1 == nil && err2 == nil && err3 == nil &&
				!strings.Contains(vs, vip) && !strings.Contains(addrs, vip+"/") && !strings.Contains(rules, vip+"/") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: 30s after delete, %s is still in IPVS, on kube-ipvs0 or in a rule (%v %v %v):\n%s\n%s\n%s", n.Name, vip, err1, err2, err3, vs, addrs, rules)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}
