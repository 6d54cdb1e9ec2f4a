// Package plane is the local lab's data plane: the namespaces, links and
// processes that make nodes and pods. The lab's API side (Pod and Node
// objects) drives it through the Plane interface, so the same nodes can be
// built in the host kernel (Host) or inside a user-mode Linux guest, where
// an agent runs Host and the lab talks to it over a link (Remote).
package plane

import (
	"context"
	"net/netip"
	"strconv"
	"time"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// Plane builds and runs a lab's nodes and pods.
type Plane interface {
	// Build creates the fabric, the nodes, their pod bridges, management
	// links and routes.
	Build(ctx context.Context, t Topology) error
	AddPod(ctx context.Context, s PodSlot) error
	RemovePod(ctx context.Context, p cluster.Pod) error
	Break(ctx context.Context, p cluster.Pod, f cluster.Fault) error
	Restore(ctx context.Context, p cluster.Pod, f cluster.Fault) error
	// StartProxiers runs one proxier per node and waits until each is healthy.
	StartProxiers(ctx context.Context, s ProxierSpec) error
	StopProxier(ctx context.Context, node string) error
	// ProxierMetrics returns a node's proxier metrics in the Prometheus
	// text format (they are served on the node's loopback only).
	ProxierMetrics(ctx context.Context, node string) (string, error)
	Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary
	IPTables(ctx context.Context, ns string) (string, error)
	// OpenFlow opens a flow (probe.Flow) from a lab namespace: a UDP
	// socket that keeps its source port, or an established TCP connection.
	OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (cluster.Flow, error)
	// Exec runs a command inside a lab namespace and returns its combined
	// output.
	Exec(ctx context.Context, ns string, argv []string) (string, error)
	// Kernel names the kernel the data plane runs in.
	Kernel() string
	// Close stops every process; namespaces go with the lab.
	Close() error
}

// Topology is the shape of a lab's network.
type Topology struct {
	Lab    string `json:"lab"`
	Prefix string `json:"prefix"`
	// StateDir receives logs (backends, proxiers).
	StateDir string `json:"stateDir"`
	Nodes    int    `json:"nodes"`
	// MgmtOffset shifts the nodes' management /30s. In the host kernel node
	// k uses block k, and block 0's host end is the API server's address.
	// In a guest the API server is reached through the guest's uplink, so
	// nodes start at block 1.
	MgmtOffset int `json:"mgmtOffset"`
	// Local lists the nodes this plane builds and runs (nil: all). A
	// guest per node builds one node and reaches the others' over a
	// fabric outside it.
	Local []int `json:"local,omitempty"`
	// FabricLink, if set, is an existing link that becomes the local
	// node's fabric interface (a guest's vec1, bridged on the host), and
	// no fabric bridge is built here. It needs exactly one local node.
	FabricLink string `json:"fabricLink,omitempty"`
	// Outer is the namespace that holds the host ends of the management
	// links (and the API server): "" for the namespace the plane runs in,
	// or an isolated lab's own (SandboxNS), which keeps the lab out of
	// the host namespace and lets labs run side by side.
	Outer string `json:"outer,omitempty"`
}

// OuterNS is where the host ends of the management links live.
func (t Topology) OuterNS() string {
	if t.Outer == "" {
		return netlab.HostNS
	}
	return t.Outer
}

// LocalNodes is the index of every node the plane builds.
func (t Topology) LocalNodes() []int {
	if t.Local != nil {
		return t.Local
	}
	all := make([]int, t.Nodes)
	for k := range all {
		all[k] = k
	}
	return all
}

// PodSlot places a pod: node index and address index on that node.
type PodSlot struct {
	Pod   cluster.Pod `json:"pod"`
	Node  int         `json:"node"`
	Index int         `json:"index"`
}

// ProxierSpec says how to run the proxier on every node.
type ProxierSpec struct {
	Binary     string   `json:"binary"`
	Mode       string   `json:"mode"`
	Kubeconfig string   `json:"kubeconfig"`
	Args       []string `json:"args"`
	// Env is added to the proxier's environment (KEY=value, later
	// entries winning).
	Env []string `json:"env,omitempty"`
	// StartTimeout bounds the wait for each proxier's first healthy
	// answer, which comes after its first full sync (default 90s; an
	// iptables-nft sync of 10k Services takes minutes).
	StartTimeout time.Duration `json:"startTimeout,omitempty"`
}

// Ports the proxier serves inside each node's namespace.
const (
	ProxierMetricsPort = 10249
	ProxierHealthzPort = 10256
)

// NodeName is the Kubernetes name of node k (from 0).
func NodeName(k int) string { return "node-" + strconv.Itoa(k+1) }

// NodeNS is the namespace of node k.
func NodeNS(prefix string, k int) string { return prefix + NodeName(k) }

// SandboxNS is an isolated lab's stand-in for the host namespace: the
// control plane and the host ends of the management links live there.
func SandboxNS(prefix string) string { return prefix + "host" }

// FabricNS holds the bridge that joins the nodes.
func FabricNS(prefix string) string { return prefix + "fabric" }

// PodNS is the namespace of a pod.
func PodNS(prefix, namespace, name string) string { return prefix + "pod-" + namespace + "." + name }
