// Package addrplan is the project's address plan (DESIGN.md): every address
// the lab uses lies in 198.18.0.0/15, the range reserved for network
// benchmarking, so lab traffic can never be mistaken for real traffic.
package addrplan

import (
	"fmt"
	"net/netip"
)

var (
	// Lab is the whole range; nothing the project creates lies outside it.
	Lab = netip.MustParsePrefix("198.18.0.0/15")
	// Fabric holds the node addresses.
	Fabric = netip.MustParsePrefix("198.18.0.0/24")
	// Pods is the cluster (pod) CIDR; each node gets one /24 of it.
	Pods = netip.MustParsePrefix("198.18.64.0/18")
	// Services is the Service ClusterIP range.
	Services = netip.MustParsePrefix("198.19.0.0/16")
	// Mgmt holds the management /30 links from the host to each node.
	Mgmt = netip.MustParsePrefix("198.18.255.0/24")
	// External holds the addresses the suites give Services as
	// externalIPs and load balancer ingress IPs. No node owns them: a
	// node sends them out its fabric interface (where nothing answers)
	// unless its proxier takes them, and the outside client reaches them
	// through a node it routes them to, as a router or a VIP-style load
	// balancer in front of a cluster does.
	External = netip.MustParsePrefix("198.18.16.0/24")
)

// Outside is the address of the lab's outside client on the fabric, as a
// prefix of Fabric: a namespace that is no node and runs no proxier, the
// way a client beyond the cluster's router is.
func Outside() netip.Prefix { return netip.PrefixFrom(at(Fabric, 250), Fabric.Bits()) }

// ExternalIP is the i-th address of External (0 <= i < 254).
func ExternalIP(i int) netip.Addr {
	if i < 0 || i >= 254 {
		panic(fmt.Sprintf("addrplan: external address index %d outside 0..253", i))
	}
	return at(External, 1+i)
}

// MaxNodes is how many nodes fit the plan: one pod /24 and one management
// /30 per node.
const MaxNodes = 63

// MaxPodsPerNode leaves .0, the gateway .1 and broadcast .255 out of a /24.
const MaxPodsPerNode = 253

func at(base netip.Prefix, offset int) netip.Addr {
	b := base.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(offset)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func checkNode(k int) {
	if k < 0 || k >= MaxNodes {
		panic(fmt.Sprintf("addrplan: node index %d outside 0..%d", k, MaxNodes-1))
	}
}

// NodeIP is node k's fabric address (k counts from 0, so node-1 is .11), as a /24 prefix.
func NodeIP(k int) netip.Prefix {
	checkNode(k)
	return netip.PrefixFrom(at(Fabric, 11+k), Fabric.Bits())
}

// PodCIDR is node k's pod /24.
func PodCIDR(k int) netip.Prefix {
	checkNode(k)
	return netip.PrefixFrom(at(Pods, 256*k), 24)
}

// PodGateway is the address of node k's pod bridge, as a /24 prefix.
func PodGateway(k int) netip.Prefix {
	return netip.PrefixFrom(at(PodCIDR(k), 1), 24)
}

// PodIP is the address of the j-th pod (from 0) on node k, as a /24 prefix.
func PodIP(k, j int) netip.Prefix {
	if j < 0 || j >= MaxPodsPerNode {
		panic(fmt.Sprintf("addrplan: pod index %d outside 0..%d", j, MaxPodsPerNode-1))
	}
	return netip.PrefixFrom(at(PodCIDR(k), 2+j), 24)
}

// MgmtHost is the host end of node k's management /30.
func MgmtHost(k int) netip.Prefix {
	checkNode(k)
	return netip.PrefixFrom(at(Mgmt, 4*k+1), 30)
}

// MgmtNode is the node end of node k's management /30.
func MgmtNode(k int) netip.Prefix {
	checkNode(k)
	return netip.PrefixFrom(at(Mgmt, 4*k+2), 30)
}

// APIServer is where the local lab's kube-apiserver listens and what it
// advertises: the host end of node 0's management link. Every node reaches
// it over its own management link.
func APIServer() netip.Addr { return MgmtHost(0).Addr() }

// User-mode Linux guests take management /30s from the top down: guest i
// (from 0) links to its lab namespace on the host over block MaxNodes-i,
// the last one (198.18.255.252/30) for the first guest. Nodes inside
// guests start at block 1, so nodes and guests together fit MaxNodes+1
// blocks: see MaxGuestNodes.

// MaxGuestNodes is how many nodes a lab of one guest per node holds.
const MaxGuestNodes = MaxNodes / 2

func checkGuest(i int) {
	if i < 0 || i >= MaxGuestNodes {
		panic(fmt.Sprintf("addrplan: guest index %d outside 0..%d", i, MaxGuestNodes-1))
	}
}

// GuestUplinkHost is the host-side (tap) address of guest i's uplink.
func GuestUplinkHost(i int) netip.Prefix {
	checkGuest(i)
	return netip.PrefixFrom(at(Mgmt, 4*(MaxNodes-i)+1), 30)
}

// GuestUplinkGuest is guest i's own address on its uplink.
func GuestUplinkGuest(i int) netip.Prefix {
	checkGuest(i)
	return netip.PrefixFrom(at(Mgmt, 4*(MaxNodes-i)+2), 30)
}

// The private Docker daemon's ranges (kind clusters): its address pools,
// the `kind` network inside them, and docker0.
var (
	DockerPools = netip.MustParsePrefix("198.18.224.0/20")
	KindNet     = netip.MustParsePrefix("198.18.232.0/24")
	Docker0     = netip.MustParsePrefix("198.18.240.1/24")
)

// KindOutside is the address of a kind cluster's outside client on the
// kind network (see Outside).
func KindOutside() netip.Addr { return at(KindNet, 250) }
