package suite

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/suites/report"
)

// execCluster answers Info and Exec; every other method panics (nil
// embedded interface), which is what a snapshot must never call.
type execCluster struct {
	cluster.Cluster
	calls []string
}

func (c *execCluster) Info() cluster.Info {
	return cluster.Info{Nodes: []cluster.Node{{Name: "node-1", NS: "ns-1"}, {Name: "node-2", NS: "ns-2"}}}
}

func (c *execCluster) Exec(_ context.Context, ns string, argv ...string) (string, error) {
	c.calls = append(c.calls, ns+" "+strings.Join(argv, " "))
	if argv[0] == "ipvsadm" {
		return "", errors.New("exec: \"ipvsadm\": not in this node")
	}
	return "out of " + argv[0] + " in " + ns + "\n", nil
}

func TestFailureWritesTheNodesStateOnce(t *testing.T) {
	c := &execCluster{}
	run := &Run{Settings: Settings{ResultsDir: t.TempDir()},
		clients: []cluster.Pod{{Name: "client-00", NS: "ns-client"}}}
	a := &A{T: t, Ctx: context.Background(), Cluster: c, Run: run, feature: "round-robin",
		rec: &report.Assessment{Name: "a fixed cyclic order"}}

	msg := a.failure("served by %d backends", 2)
	path := a.snapshotPath
	if path == "" || !strings.HasSuffix(msg, "[node state at the failure: "+path+"]") {
		t.Fatalf("failure message %q does not name the snapshot (%q)", msg, path)
	}
	if !strings.HasSuffix(path, "snapshots/round-robin--a-fixed-cyclic-order.txt") {
		t.Errorf("snapshot path %s", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{
		"=== node node-1 (ns-1): conntrack -L\nout of conntrack in ns-1",
		"=== node node-2 (ns-2): iptables-save -c\nout of iptables-save in ns-2",
		"=== client (ns-client): ss -tanoi\nout of ss in ns-client",
		"(error: exec: \"ipvsadm\": not in this node)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("snapshot lacks %q:\n%s", want, text)
		}
	}
	n := len(c.calls)
	if want := 2*len(nodeSnapshot) + len(clientSnapshot); n != want {
		t.Errorf("%d commands run, want %d", n, want)
	}
	a.failure("a second failure")
	if len(c.calls) != n {
		t.Errorf("a second failure ran %d more commands; the first failure's state is the one that explains it", len(c.calls)-n)
	}
	if len(a.rec.Failures) != 2 {
		t.Errorf("failures recorded: %q", a.rec.Failures)
	}
}

func TestCapLines(t *testing.T) {
	if got := capLines("a\nb\nc\n", 2); got != "a\nb\n... (1 more lines)\n" {
		t.Errorf("capLines: %q", got)
	}
	if got := capLines("a\nb\n", 2); got != "a\nb\n" {
		t.Errorf("capLines: %q", got)
	}
}
