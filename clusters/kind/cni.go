package kind

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/proxymodes/proxymodes/harness/addrplan"
)

// ConflistName is the file name to write Conflist's output to in a node's
// CNI directory.
const ConflistName = "10-proxymodes-bridge.conflist"

// ConflistOptions describe one node's pod network.
type ConflistOptions struct {
	// PodCIDR is the node's pod /24 (Node.PodCIDR).
	PodCIDR netip.Prefix
	// Portmap adds the portmap plugin, for pods with hostPort.
	Portmap bool
}

// Conflist renders a node's CNI configuration: a bridge whose address is
// the first of PodCIDR and is every pod's gateway, with host-local
// addresses from the rest. Routes to other nodes' pod CIDRs are the
// provider's to add in each node.
func Conflist(o ConflistOptions) ([]byte, error) {
	p := o.PodCIDR
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30 || p != p.Masked() {
		return nil, fmt.Errorf("pod CIDR %s: want an IPv4 network such as %s", p, addrplan.PodCIDR(0))
	}
	if !addrplan.Pods.Contains(p.Addr()) || p.Bits() < addrplan.Pods.Bits() {
		return nil, fmt.Errorf("pod CIDR %s lies outside the cluster's pod CIDR %s", p, addrplan.Pods)
	}
	plugins := []any{bridgePlugin{
		Type:      "bridge",
		Bridge:    "cni0",
		IsGateway: true,
		// Nothing in the lab leaves it, and masquerading pod traffic would
		// hide the client addresses the suites check (ClientIP affinity).
		IPMasq: false,
		// A pod that reaches a Service which picks the pod itself sends
		// the packet back out of the port it came in by.
		HairpinMode: true,
		IPAM: hostLocal{
			Type:   "host-local",
			Ranges: [][]ipRange{{{Subnet: p.String(), Gateway: p.Addr().Next().String()}}},
			Routes: []route{{Dst: "0.0.0.0/0"}},
		},
	}}
	if o.Portmap {
		plugins = append(plugins, portmapPlugin{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}})
	}
	b, err := json.MarshalIndent(conflist{
		// 1.0.0: what containerd 1.6 and Debian's containernetworking-
		// plugins 1.1 both speak.
		CNIVersion: "1.0.0",
		Name:       "proxymodes",
		Plugins:    plugins,
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// The CNI types, as structs so that the JSON keeps a readable key order.
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

type bridgePlugin struct {
	Type        string    `json:"type"`
	Bridge      string    `json:"bridge"`
	IsGateway   bool      `json:"isGateway"`
	IPMasq      bool      `json:"ipMasq"`
	HairpinMode bool      `json:"hairpinMode"`
	IPAM        hostLocal `json:"ipam"`
}

type hostLocal struct {
	Type   string      `json:"type"`
	Ranges [][]ipRange `json:"ranges"`
	Routes []route     `json:"routes"`
}

type ipRange struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
}

type route struct {
	Dst string `json:"dst"`
}

type portmapPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
}
