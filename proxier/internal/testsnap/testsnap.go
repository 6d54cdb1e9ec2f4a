// Package testsnap builds core.Snapshots for tests and benchmarks. All
// addresses are inside the lab's 198.18.0.0/15 plan: nodes 198.18.0.0/24,
// pods 198.18.64.0/18, services 198.19.0.0/16.
package testsnap

import (
	"fmt"
	"math/rand"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/proxymodes/proxymodes/proxier/core"
)

// ClusterCIDR is the pod range used in tests.
var ClusterCIDR = netip.MustParsePrefix("198.18.64.0/18")

// Builder adds services to a snapshot.
type Builder struct{ Snap *core.Snapshot }

// Node is the node the snapshots are for; endpoints are on it unless a
// Port says otherwise.
const Node = "node-1"

// OtherNode holds Port.Remote endpoints.
const OtherNode = "node-2"

// New starts an empty snapshot for Node.
func New() *Builder {
	b := &Builder{Snap: core.NewSnapshot()}
	b.Snap.NodeName = Node
	return b
}

// Port describes one service port to add.
type Port struct {
	Namespace, Name, PortName string
	Protocol                  v1.Protocol // default TCP
	ClusterIP                 string
	Port                      int32
	NodePort                  int32
	ExternalIPs               []string
	LoadBalancerIPs           []string
	SourceRanges              []string // loadBalancerSourceRanges, CIDRs
	Affinity                  bool
	Timeout                   int32    // default 10800 when Affinity
	Endpoints                 []string // "ip:port"; all ready, on Node
	Remote                    []string // "ip:port"; all ready, on OtherNode
	InternalLocal             bool     // internalTrafficPolicy: Local
	ExternalLocal             bool     // externalTrafficPolicy: Local
	HealthCheckNodePort       int32
}

// Add adds a service port and its endpoints and returns its name.
func (b *Builder) Add(p Port) core.ServicePortName {
	if p.Protocol == "" {
		p.Protocol = v1.ProtocolTCP
	}
	if p.Namespace == "" {
		p.Namespace = "ns"
	}
	name := core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, Port: p.PortName, Protocol: p.Protocol}
	sp := &core.ServicePort{
		Name: name, ClusterIP: netip.MustParseAddr(p.ClusterIP), Port: p.Port, Protocol: p.Protocol,
		NodePort: p.NodePort, ClientIPAffinity: p.Affinity, InternalLocal: p.InternalLocal,
		ExternalLocal: p.ExternalLocal, HealthCheckNodePort: p.HealthCheckNodePort,
	}
	for _, e := range p.ExternalIPs {
		sp.ExternalIPs = append(sp.ExternalIPs, netip.MustParseAddr(e))
	}
	for _, e := range p.LoadBalancerIPs {
		sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, netip.MustParseAddr(e))
	}
	for _, r := range p.SourceRanges {
		sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges, netip.MustParsePrefix(r).Masked())
	}
	if p.Affinity {
		sp.StickyTimeoutSeconds = p.Timeout
		if sp.StickyTimeoutSeconds == 0 {
			sp.StickyTimeoutSeconds = core.DefaultStickyTimeoutSeconds
		}
	}
	b.Snap.Services[name] = sp
	var eps []core.Endpoint
	seen := map[string]bool{}
	for i, e := range append(append([]string(nil), p.Endpoints...), p.Remote...) {
		if seen[e] {
			continue
		}
		seen[e] = true
		node := Node
		if i >= len(p.Endpoints) {
			node = OtherNode
		}
		ap := netip.MustParseAddrPort(e)
		eps = append(eps, core.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true, NodeName: node})
	}
	if len(eps) > 0 {
		core.SortEndpoints(eps)
		b.Snap.Endpoints[name] = eps
	}
	return name
}

// ServiceIP returns the i-th address in 198.19.0.0/16 (i < 65534).
func ServiceIP(i int) string {
	i++
	return fmt.Sprintf("198.19.%d.%d", i/256, i%256)
}

// PodIP returns the i-th address in 198.18.64.0/18 (i < 16382).
func PodIP(i int) string {
	i = i%16382 + 1
	return fmt.Sprintf("198.18.%d.%d", 64+i/256, i%256)
}

// Synthetic returns n TCP services with eps endpoints each, named
// svc-00000.., with cluster IPs and pod IPs from the lab plan.
func Synthetic(n, eps int) *core.Snapshot {
	b := New()
	pod := 0
	for i := 0; i < n; i++ {
		p := Port{Name: fmt.Sprintf("svc-%05d", i), PortName: "http", ClusterIP: ServiceIP(i), Port: 80}
		for j := 0; j < eps; j++ {
			p.Endpoints = append(p.Endpoints, PodIP(pod)+":8080")
			pod++
		}
		b.Add(p)
	}
	return b.Snap
}

// Random returns a randomized snapshot from seed: a mix of protocols,
// NodePorts, external IPs, load balancer IPs with and without source
// ranges, affinity, both traffic policies Local and 0..5
// endpoints per port on either node, with some endpoints not ready or
// terminating.
func Random(seed int64) *core.Snapshot {
	r := rand.New(rand.NewSource(seed))
	b := New()
	protos := []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}
	nSvc := 1 + r.Intn(12)
	usedIP := map[int]bool{}
	usedNodePort := map[int32]bool{}
	for i := 0; i < nSvc; i++ {
		ipIdx := r.Intn(60000)
		for usedIP[ipIdx] {
			ipIdx = r.Intn(60000)
		}
		usedIP[ipIdx] = true
		nPorts := 1 + r.Intn(3)
		affinity := r.Intn(3) == 0
		var ext []string
		if r.Intn(5) == 0 {
			ext = []string{ServiceIP(60000 + i)}
		}
		var lb, ranges []string
		if r.Intn(5) == 0 {
			lb = []string{ServiceIP(61000 + i)}
			for k := r.Intn(3); k > 0; k-- {
				ranges = append(ranges, fmt.Sprintf("198.18.%d.0/%d", r.Intn(256), 16+r.Intn(17)))
			}
		}
		nodePortSvc := r.Intn(3) == 0
		internalLocal := r.Intn(4) == 0
		externalLocal := (nodePortSvc || ext != nil || lb != nil) && r.Intn(3) == 0
		usedPort := map[int32]bool{}
		for pi := 0; pi < nPorts; pi++ {
			port := int32(1 + r.Intn(65535))
			for usedPort[port] {
				port = int32(1 + r.Intn(65535))
			}
			usedPort[port] = true
			p := Port{
				Namespace: fmt.Sprintf("ns%d", r.Intn(3)), Name: fmt.Sprintf("svc%d", i), PortName: fmt.Sprintf("p%d", pi),
				Protocol: protos[r.Intn(len(protos))], ClusterIP: ServiceIP(ipIdx), Port: port,
				ExternalIPs: ext, LoadBalancerIPs: lb, SourceRanges: ranges, Affinity: affinity, Timeout: int32(r.Intn(86400)), InternalLocal: internalLocal,
				ExternalLocal: externalLocal,
			}
			if nodePortSvc {
				np := int32(30000 + r.Intn(2768))
				for usedNodePort[np] {
					np = int32(30000 + r.Intn(2768))
				}
				usedNodePort[np] = true
				p.NodePort = np
			}
			for e := r.Intn(6); e > 0; e-- {
				p.Endpoints = append(p.Endpoints, fmt.Sprintf("%s:%d", PodIP(r.Intn(16000)), 1+r.Intn(65535)))
			}
			name := b.Add(p)
			// Knock some endpoints out of ready.
			eps := b.Snap.Endpoints[name]
			for k := range eps {
				if r.Intn(2) == 0 {
					eps[k].NodeName = OtherNode
				}
				switch r.Intn(6) {
				case 0:
					eps[k].Ready = false
				case 1:
					eps[k].Ready, eps[k].Terminating = false, true
				}
			}
		}
	}
	return b.Snap
}
