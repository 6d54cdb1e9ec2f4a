// Package cluster defines what every cluster provider offers the suites and
// benchmarks: a Kubernetes API, nodes that run a proxier, and pods whose
// backends the harness can probe and break on purpose. Providers live in
// sub-packages (local now; kind and an existing kubeconfig later).
package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/proxymodes/proxymodes/harness/probe"
)

// Logger receives progress lines; providers never print on their own.
type Logger interface {
	Logf(format string, args ...any)
}

// Discard is a Logger that drops everything.
var Discard Logger = discard{}

type discard struct{}

func (discard) Logf(string, ...any) {}

// Info describes a running cluster.
type Info struct {
	Name       string
	Provider   string
	APIServer  string // URL
	Kubeconfig string // path
	// APINetNS is the network namespace the API server is reachable from,
	// when it is not the host's (an isolated local lab).
	APINetNS string
	// Namespace is where the suites create their objects ("default" when
	// empty: the whole cluster is the run's).
	Namespace string
	Nodes     []Node
	// Kernel is the kernel the nodes' data plane runs in; results record it.
	Kernel string
}

// Node is one cluster node.
type Node struct {
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix
	// NS is where a probe runs to act as this node (a netns name for the
	// local lab).
	NS string
}

// PodSpec asks for a pod running the echo backend.
type PodSpec struct {
	Namespace string
	Name      string
	// Node pins the pod; empty spreads pods over the nodes.
	Node   string
	Labels map[string]string
	// AltTCPPort, when not 0, is a second raw TCP port the backend serves,
	// declared as the container port named AltPortName.
	AltTCPPort uint16
	// Drain makes the backend keep serving after SIGTERM until it is
	// killed, so that a graceful deletion (PodTerminator) leaves it
	// serving for its grace period, where a kubelet signals it.
	Drain bool
}

// AltPortName names a pod's AltTCPPort among its container ports.
const AltPortName = "alt"

// Pod is a running pod.
type Pod struct {
	Namespace string
	Name      string
	Node      string
	IP        netip.Addr
	NS        string
	// AltTCPPort is the spec's (a restarted backend serves it again).
	AltTCPPort uint16 `json:",omitempty"`
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Fault is how a backend misbehaves while its Pod stays Ready.
type Fault string

const (
	// Refuse stops the backend process: connections are refused (TCP RST,
	// ICMP port unreachable for UDP).
	Refuse Fault = "refuse"
	// Blackhole drops every packet that reaches the pod: connections time out.
	Blackhole Fault = "blackhole"
)

// Cluster is a running cluster.
type Cluster interface {
	Info() Info
	RESTConfig() *rest.Config
	Client() kubernetes.Interface
	// AddPod creates the Pod object, starts its backend and marks it Ready.
	AddPod(ctx context.Context, spec PodSpec) (Pod, error)
	// DeletePod stops the backend and deletes the Pod object.
	DeletePod(ctx context.Context, namespace, name string) error
	Pods() []Pod
	// Break makes a pod's backend fail in the given way; Restore undoes it.
	Break(ctx context.Context, pod Pod, f Fault) error
	Restore(ctx context.Context, pod Pod) error
	// Probe opens n fresh connections from t.NS (a pod's or a node's NS)
	// to t.Addr, wherever that namespace lives (host kernel or a guest).
	Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary
	// IPTables returns the normalized iptables rules (nft and legacy) of a
	// node's or pod's namespace.
	IPTables(ctx context.Context, ns string) (string, error)
	// SaveLogs copies the component logs into a directory that outlives
	// Down (call it when a test fails).
	SaveLogs(dst string) error
	// Down tears everything down; it is safe to call more than once.
	Down(ctx context.Context) error
}

// Flow is one connection that lives across exchanges (see probe.Flow): a
// UDP socket that keeps its source port, or an established TCP connection.
type Flow interface {
	// Exchange sends a datagram or a line and returns the backend that
	// answered.
	Exchange(ctx context.Context, timeout time.Duration) (backendName string, err error)
	Close() error
}

// FlowOpener is what a provider implements to let the checks that follow
// one connection (stale UDP conntrack, a proxier restart under traffic)
// run wherever its namespaces live.
type FlowOpener interface {
	OpenFlow(ctx context.Context, ns string, proto probe.Proto, dst netip.AddrPort) (Flow, error)
}

// PodTerminator is what a provider implements to delete a pod gracefully,
// as `kubectl delete` does: the Pod object gets its deletionTimestamp, so
// its endpoints turn Ready=false, Serving=true, Terminating=true, while
// its backend goes on serving (a PodSpec.Drain backend, where a kubelet
// signals it) until the grace period ends or DeletePod removes it.
type PodTerminator interface {
	TerminatePod(ctx context.Context, namespace, name string, grace time.Duration) error
}

// ProxierRestarter is what a provider implements to let the disruptive
// checks stop every node's proxier, leaving its rules in place as a
// crashed or upgrading proxier does, and start it again.
type ProxierRestarter interface {
	// StopProxiers returns once no node runs a proxier.
	StopProxiers(ctx context.Context) error
	// StartProxiers returns once every node's proxier is up again (its
	// health or readiness check passes), not once it has synced.
	StartProxiers(ctx context.Context) error
}

// APIServerRestarter is what a provider implements to let the disruptive
// checks stop the API server that the proxiers watch and start it again.
type APIServerRestarter interface {
	// StopAPIServer returns once the proxiers' API server no longer
	// answers. With standIn true, Client() meanwhile reaches a stand-in
	// on the same storage that no proxier knows of (as another replica
	// of an HA control plane would), so a check can change objects that
	// the proxiers see only once theirs is back; with false, Client()
	// fails until StartAPIServer.
	StopAPIServer(ctx context.Context) (standIn bool, err error)
	// StartAPIServer returns once the proxiers' API server is ready again
	// and Client() reaches it.
	StartAPIServer(ctx context.Context) error
}

// OutsideClient is what a provider implements to let checks reach a
// Service the way a client beyond the cluster does: from a namespace on
// the nodes' network that is no node and runs no proxier, through a node
// that a router (for external IPs) or a VIP-style load balancer (for its
// ingress IPs) delivers the packets to with the Service's address as
// their destination.
type OutsideClient interface {
	// Outside returns the namespace a probe runs in to be that client
	// (probe.Target.NS) and its address.
	Outside() (ns string, addr netip.Addr)
	// RouteOutside makes the outside client send packets for dst through
	// node, replacing the route it had for dst.
	RouteOutside(ctx context.Context, dst netip.Prefix, node string) error
}

// NewClient is a helper for providers.
func NewClient(rc *rest.Config) (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}
