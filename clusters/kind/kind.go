// Package kind renders kind cluster configurations for each proxy mode and
// implementation, and the bridge CNI configuration each node uses instead
// of kindnet. The rendered configs for the default options are committed
// beside this file as <mode>-<impl>.yaml.
//
// Every address is in the project's plan (harness/addrplan): pods in
// 198.18.64.0/18, a /24 per node, and Services in 198.19.0.0/16.
package kind

import (
	"bytes"
	"fmt"
	"path/filepath"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
)

// Proxier implementations, as every provider names them.
const (
	// ImplReference is this project's proxier, deployed by
	// clusters/manifests; kind then runs no kube-proxy.
	ImplReference = cluster.ImplReference
	// ImplKubeProxy is the kube-proxy kubeadm deploys.
	ImplKubeProxy = cluster.ImplKubeProxy
)

// CNIConfDir is where the node's container runtime reads CNI
// configurations.
const CNIConfDir = "/etc/cni/net.d"

// DefaultName is the cluster name when Options.Name is empty.
const DefaultName = "proxymodes"

// Options describe a cluster.
type Options struct {
	// Mode is the proxy mode, Impl the implementation (default
	// ImplReference).
	Mode, Impl string
	// Name is the cluster's name (default DefaultName).
	Name string
	// Nodes counts every node: one control plane and Nodes-1 workers
	// (default 2).
	Nodes int
	// Image is the node image for every node; empty leaves kind's default.
	Image string
	// CNIDir is a host directory holding one subdirectory per node (see
	// Node.CNIDir), mounted at /etc/cni/net.d in that node; default
	// /var/cache/proxymodes/kind/<Name>/cni. kindnet is not used, so each
	// node needs its own bridge conflist there (Conflist renders it).
	CNIDir string
}

// Node is a node of the rendered cluster, in the order of the config.
type Node struct {
	// Name is kind's name for the node (container and Node object):
	// <cluster>-control-plane, <cluster>-worker, <cluster>-worker2, ...
	Name string
	Role v1alpha4.NodeRole
	// CNIDir is the host directory mounted at /etc/cni/net.d in this node.
	// Files written there (atomically, by rename) appear in the node at
	// once, before or after the cluster is created.
	CNIDir string
	// PodCIDR is the /24 of addrplan.Pods this node's conflist should hand
	// out: node k of the config gets addrplan.PodCIDR(k).
	PodCIDR string
}

func (o Options) complete() (Options, error) {
	if o.Impl == "" {
		o.Impl = ImplReference
	}
	if err := cluster.CheckImpl(o.Impl, o.Mode); err != nil {
		return o, err
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > addrplan.MaxNodes {
		return o, fmt.Errorf("%d nodes: the address plan has pod /24s for 1 to %d", o.Nodes, addrplan.MaxNodes)
	}
	if o.CNIDir == "" {
		o.CNIDir = filepath.Join("/var/cache/proxymodes/kind", o.Name, "cni")
	}
	if !filepath.IsAbs(o.CNIDir) {
		// kind would resolve it against its own working directory.
		return o, fmt.Errorf("CNI directory %q must be absolute", o.CNIDir)
	}
	return o, nil
}

// Nodes lists the nodes Render puts in the config.
func Nodes(o Options) ([]Node, error) {
	o, err := o.complete()
	if err != nil {
		return nil, err
	}
	return o.nodes(), nil
}

func (o Options) nodes() []Node {
	nodes := make([]Node, o.Nodes)
	for k := range nodes {
		role, suffix := v1alpha4.WorkerRole, ""
		if k == 0 {
			role = v1alpha4.ControlPlaneRole
		}
		// kind numbers the second and later nodes of a role.
		if k > 1 {
			suffix = fmt.Sprint(k)
		}
		dir := string(role) + suffix
		nodes[k] = Node{
			Name: o.Name + "-" + dir, Role: role,
			CNIDir:  filepath.Join(o.CNIDir, dir),
			PodCIDR: addrplan.PodCIDR(k).String(),
		}
	}
	return nodes
}

// Render returns the kind configuration as YAML.
func Render(o Options) ([]byte, error) {
	o, err := o.complete()
	if err != nil {
		return nil, err
	}
	c := v1alpha4.Cluster{
		TypeMeta: v1alpha4.TypeMeta{Kind: "Cluster", APIVersion: "kind.x-k8s.io/v1alpha4"},
		Name:     o.Name,
		Networking: v1alpha4.Networking{
			IPFamily:         v1alpha4.IPv4Family,
			APIServerAddress: "127.0.0.1",
			PodSubnet:        addrplan.Pods.String(),
			ServiceSubnet:    addrplan.Services.String(),
			// kindnet's image is not available offline; every node gets a
			// static bridge conflist through its mount instead.
			DisableDefaultCNI: true,
			KubeProxyMode:     v1alpha4.ProxyMode(o.Mode),
		},
		KubeadmConfigPatches: []string{kubeletPatch},
	}
	if o.Impl == ImplReference {
		// kind's "none" skips kubeadm's kube-proxy addon.
		c.Networking.KubeProxyMode = "none"
	} else {
		c.KubeadmConfigPatches = append(c.KubeadmConfigPatches, kubeProxyPatch)
	}
	for _, n := range o.nodes() {
		c.Nodes = append(c.Nodes, v1alpha4.Node{
			Role:  n.Role,
			Image: o.Image,
			ExtraMounts: []v1alpha4.Mount{{
				ContainerPath: CNIConfDir, HostPath: n.CNIDir, Readonly: true,
			}},
		})
	}
	body, err := yaml.Marshal(c)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, header, o.Mode, o.Impl, deployHint(o))
	out.Write(body)
	return out.Bytes(), nil
}

const header = `# kind cluster: proxy mode %s, %s proxier. Rendered by clusters/kind;
# "go test ./clusters/kind -update" rewrites it.
# No kindnet: each node mounts its own subdirectory of the CNI dir at
# /etc/cni/net.d, which must hold a bridge conflist for the node's pod /24
# (kind.Nodes says which, kind.Conflist renders it).
# %s
`

func deployHint(o Options) string {
	if o.Impl == ImplReference {
		return "No kube-proxy: apply clusters/manifests for mode " + o.Mode + " once the cluster is up."
	}
	return "kubeadm deploys kube-proxy in " + o.Mode + " mode, its metrics on 0.0.0.0:10249."
}

// The cluster's kubeadm patches. apiVersions are the ones kind v0.33
// generates for Kubernetes 1.36 and later (kubeadm v1beta4, kubelet
// v1beta1, kubeproxy v1alpha1); a patch whose apiVersion does not match is
// silently skipped, so the tests decode them with the pinned types.
const (
	// The pinned kubelet refuses to start on cgroup v1 hosts by default
	// (failCgroupV1 defaults to true), and some machines this runs on,
	// the project's own VMs included, are cgroup v1.
	kubeletPatch = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
`
	// kube-proxy serves metrics on 127.0.0.1 by default; the harness
	// scrapes them from outside the node.
	kubeProxyPatch = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
metricsBindAddress: 0.0.0.0:10249
`
)
