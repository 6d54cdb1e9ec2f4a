package local

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/netlab"
)

// Interface names inside lab namespaces. Host-side names all carry the lab
// prefix, so leftovers are easy to find.
const (
	fabricBridge = "br0"
	nodeFabric   = "eth0"
	nodeMgmt     = "mgmt0"
	podBridge    = "cbr0"
	podIface     = "eth0"
)

func (l *Lab) fabricNS() string      { return l.prefix + "fabric" }
func nodeName(k int) string          { return "node-" + strconv.Itoa(k+1) }
func (l *Lab) nodeNS(k int) string   { return l.prefix + nodeName(k) }
func (l *Lab) mgmtLink(k int) string { return l.prefix + "m" + strconv.Itoa(k+1) }

// buildNetwork lays out the fabric, the nodes, their pod bridges and their
// management links. No namespace gets a default route: every route points
// into 198.18.0.0/15, so the lab cannot reach anything outside it.
func (l *Lab) buildNetwork() error {
	fab := l.fabricNS()
	if err := netlab.CreateNS(fab); err != nil {
		return err
	}
	if err := netlab.Bridge(fab, fabricBridge, netip.Prefix{}); err != nil {
		return err
	}
	for k := 0; k < l.opts.Nodes; k++ {
		if err := l.buildNode(k); err != nil {
			return fmt.Errorf("%s: %w", nodeName(k), err)
		}
		l.st.Nodes = append(l.st.Nodes, cluster.Node{
			Name: nodeName(k), IP: addrplan.NodeIP(k).Addr(), PodCIDR: addrplan.PodCIDR(k), NS: l.nodeNS(k),
		})
	}
	return nil
}

func (l *Lab) buildNode(k int) error {
	ns := l.nodeNS(k)
	if err := netlab.CreateNS(ns); err != nil {
		return err
	}
	fabPort := "n" + strconv.Itoa(k+1)
	if err := netlab.Veth(netlab.End{NS: ns, Name: nodeFabric, Addr: addrplan.NodeIP(k)},
		netlab.End{NS: l.fabricNS(), Name: fabPort}); err != nil {
		return err
	}
	if err := netlab.Enslave(l.fabricNS(), fabPort, fabricBridge); err != nil {
		return err
	}
	if err := netlab.Bridge(ns, podBridge, addrplan.PodGateway(k)); err != nil {
		return err
	}
	if err := netlab.Veth(netlab.End{NS: ns, Name: nodeMgmt, Addr: addrplan.MgmtNode(k)},
		netlab.End{NS: netlab.HostNS, Name: l.mgmtLink(k), Addr: addrplan.MgmtHost(k)}); err != nil {
		return err
	}
	// Nodes forward between pods, the fabric and the management link.
	if err := netlab.Sysctl(ns, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	for j := 0; j < l.opts.Nodes; j++ {
		if j == k {
			continue
		}
		if err := netlab.Route(ns, addrplan.PodCIDR(j), addrplan.NodeIP(j).Addr(), ""); err != nil {
			return err
		}
	}
	if k != 0 {
		api := netip.PrefixFrom(addrplan.APIServer(), 32)
		if err := netlab.Route(ns, api, addrplan.MgmtHost(k).Addr(), ""); err != nil {
			return err
		}
	}
	// Locally generated packets to a ClusterIP need a route before the
	// proxier's NAT rewrites them; the fabric is where they would go.
	return netlab.Route(ns, addrplan.Services, netip.Addr{}, nodeFabric)
}

// registerNodes creates a Ready Node object per node: the endpointslice
// controller ignores pods on nodes it does not know.
func (l *Lab) registerNodes(ctx context.Context) error {
	for _, n := range l.st.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux",
			}},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		}
		created, err := l.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		created.Status = corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IP.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "LabNodeReady",
				LastHeartbeatTime: now, LastTransitionTime: now,
			}},
		}
		if _, err := l.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}
