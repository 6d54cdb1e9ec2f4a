package local_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/leak"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// Two isolated labs run at once on the same address plan: each has its
// own API server at the same address, its own proxiers and Services, and
// neither puts anything into the host namespace. This is what lets make
// test run labs side by side.
func TestIsolatedLabsRunSideBySide(t *testing.T) {
	names := []string{"liso1", "liso2"}
	labs := make([]*local.Lab, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			labs[i], errs[i] = local.Up(ctx, local.Options{Name: name, Nodes: 2, Isolated: true, Logger: labtest.Logger(t),
				Proxier: &local.ProxierOptions{Mode: "iptables"}})
		}()
	}
	wg.Wait()
	for i, l := range labs {
		if l != nil {
			t.Cleanup(func() {
				if err := l.Down(context.Background()); err != nil {
					t.Errorf("down %s: %v", names[i], err)
				}
				if left := leak.Check(names[i]); len(left) > 0 {
					t.Errorf("lab %s left behind: %v", names[i], left)
				}
			})
			labtest.OnInterrupt(l.Down)
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("lab %s: %v", names[i], err)
		}
	}

	for i, l := range labs {
		if links, err := netlab.ListLinks(netlab.HostNS, leak.Prefix(names[i])); err != nil || len(links) > 0 {
			t.Errorf("isolated lab %s has links in the host namespace: %v (%v)", names[i], links, err)
		}
		if want := fmt.Sprintf("https://%s:6443", addrplan.APIServer()); l.Info().APIServer != want {
			t.Errorf("lab %s: API server %s, want %s like every lab", names[i], l.Info().APIServer, want)
		}
	}
	// The same pod and Service names in both labs, each served by its own
	// lab's pods only.
	for i, l := range labs {
		sel := map[string]string{"app": "iso"}
		a := labtest.AddPod(t, l, "iso-a", "node-1", sel)
		b := labtest.AddPod(t, l, "iso-b", "node-2", sel)
		client := labtest.AddPod(t, l, "iso-client", "node-1", nil)
		svc := labtest.Service(t, l, "iso", sel)
		labtest.Eventually(t, names[i]+": the Service reaches both of its pods", time.Minute, func() probe.Summary {
			return probe.Run(context.Background(), probe.Target{NS: client.NS, Addr: labtest.VIP(svc, 80), Proto: probe.TCP}, 20, 2*time.Second)
		}, func(s probe.Summary) bool { return labtest.Served(s, a.Name, b.Name) })
		pods, err := l.Client().CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatalf("%s: listing pods through its API server: %v", names[i], err)
		}
		if len(pods.Items) != 3 {
			t.Errorf("%s: its API server has %d pods, want its own 3", names[i], len(pods.Items))
		}
	}
}
