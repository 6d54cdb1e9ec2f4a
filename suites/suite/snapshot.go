package suite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/cluster"
)

// A failing assessment's cause is usually in state that is gone a minute
// later (a conntrack entry that expires, a neighbour that resolves, an IPVS
// connection that times out). So the first failure of an assessment writes
// what every node and the probing client hold at that moment into
// snapshots/ of the results directory. Commands that a provider or mode
// lacks leave their error in the file, never a failure of their own.

// nodeSnapshot is read in every node's namespace.
var nodeSnapshot = [][]string{
	{"ipvsadm", "-Ln"}, // weights and each destination's connections
	{"ipvsadm", "-Ln", "--stats"},
	{"ipvsadm", "-Lnc"},
	{"conntrack", "-S"},
	{"conntrack", "-L"},
	{"ip", "-o", "addr", "show"},
	{"ip", "-s", "neigh", "show"},
	{"ip", "route", "show"},
	{"bridge", "fdb", "show"},
	{"nstat", "-asz"},
	{"iptables-save", "-c"},
}

// clientSnapshot is read in the namespaces of the run's client pods.
var clientSnapshot = [][]string{
	{"ss", "-tanoi"},
	{"ip", "-s", "neigh", "show"},
	{"nstat", "-asz"},
}

// backendSnapshot is read in the namespaces of the feature's backends:
// whether a backend saw the connections that failed, and what it answered
// (CI, 2026-12-07: connections to a new endpoint were refused, and
// neither node's conntrack showed them).
var backendSnapshot = [][]string{
	{"ss", "-tanoi"},
	{"nstat", "-asz"},
}

// snapshotLines caps each command's output: a bench-sized conntrack table
// would otherwise fill the disk.
const snapshotLines = 4000

// snapshot writes the state at a failure once per assessment and returns
// the file's path ("" when the provider cannot run commands in its
// namespaces or the file cannot be written).
func (a *A) snapshot() string {
	if a.snapshotPath != "" || a.Run == nil || a.Cluster == nil {
		return a.snapshotPath
	}
	e, ok := a.Cluster.(Execer)
	if !ok {
		return ""
	}
	dir := filepath.Join(a.Run.Settings.ResultsDir, "snapshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	path := filepath.Join(dir, slug(a.feature)+"--"+slug(a.rec.Name)+".txt")
	// The assessment's own context may be what ran out.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "# %s / %s: state at the first failure, %s\n", a.feature, a.rec.Name, time.Now().Format(time.RFC3339Nano))
	for _, n := range a.Cluster.Info().Nodes {
		dumpInto(ctx, &b, e, "node "+n.Name, n.NS, nodeSnapshot)
	}
	a.Run.clientsMu.Lock()
	clients := namespacesOf(a.Run.clients)
	a.Run.clientsMu.Unlock()
	for _, ns := range clients {
		dumpInto(ctx, &b, e, "client", ns, clientSnapshot)
	}
	if a.Fixture != nil {
		for _, p := range a.Fixture.livePods() {
			dumpInto(ctx, &b, e, "backend "+p.Name+" "+p.IP.String()+" on "+p.Node, p.NS, backendSnapshot)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return ""
	}
	a.snapshotPath = path
	return path
}

func dumpInto(ctx context.Context, b *strings.Builder, e Execer, who, ns string, cmds [][]string) {
	for _, argv := range cmds {
		fmt.Fprintf(b, "\n=== %s (%s): %s\n", who, ns, strings.Join(argv, " "))
		out, err := e.Exec(ctx, ns, argv...)
		b.WriteString(capLines(out, snapshotLines))
		if err != nil {
			fmt.Fprintf(b, "(error: %v)\n", err)
		}
	}
}

func capLines(s string, n int) string {
	lines := strings.SplitAfter(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "") + fmt.Sprintf("... (%d more lines)\n", len(lines)-n)
}

func namespacesOf(pods []cluster.Pod) []string {
	var ns []string
	for _, p := range pods {
		ns = append(ns, p.NS)
	}
	return ns
}
