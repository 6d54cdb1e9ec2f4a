package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestExternalAddresses(t *testing.T) {
	testenv.Test(t, externalAddresses())
}

// externalAddresses: upstream's "should be possible to connect to a
// service via ExternalIP when the external IP is not assigned to a node"
// (service.go) connects from one pod until one attempt succeeds, and its
// load balancer tests (loadbalancer.go, including "should only allow
// access from service loadbalancer source ranges") need a cloud provider
// and check one allowed and one denied pod with a few requests. Here no
// cloud is needed: the harness writes the Service's ingress status itself,
// and an outside client (cluster.OutsideClient: no node, no proxier)
// reaches the address through each node in turn, as a router or a
// VIP-style load balancer delivers it. Every path, from a pod and from
// outside, over TCP and UDP, must reach every backend with no failure
// (waitServedByAll: 60 connections, a backend of 3 missed with
// probability < 1e-10 per try; it retries until Converge); a denied source
// must reach no backend with noLocalN connections once the proxiers are
// quiet, after the same address was seen serving an allowed one, so the
// drop is the firewall's and not a Service that was never programmed.
func externalAddresses() types.Feature {
	return suite.NewFeature("external IPs and load balancer IPs", "external-addresses",
		"a Service's externalIPs and its load balancer's ingress IPs reach every backend, from pods and from outside through any node, and loadBalancerSourceRanges admit only the sources they list").
		Assess("an external IP reaches every backend from a pod and, through each node, from outside the cluster", func(ctx context.Context, a *suite.A) {
			names := suite.Names(a.Fixture.Backends(a, 3))
			ip := suite.ExternalIP()
			a.Fixture.Service(a, suite.ServiceOptions{Name: "ext-ip", ExternalIPs: []netip.Addr{ip}})
			reachesEveryBackend(a, "external IP", ip, names)
		}).
		Assess("a load balancer ingress IP reaches every backend from a pod and, through each node, from outside the cluster", func(ctx context.Context, a *suite.A) {
			names := suite.Names(a.Fixture.BackendGroup(a, 3, "lb"))
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "lb-ip", Selector: a.Fixture.GroupSelector("lb"), LoadBalancer: true})
			ip := suite.ExternalIP()
			a.Fixture.SetIngress(a, svc.Name, ip)
			reachesEveryBackend(a, "load balancer IP", ip, names)
		}).
		Assess("loadBalancerSourceRanges let the listed sources reach the load balancer IP and drop every other, as they change", func(ctx context.Context, a *suite.A) {
			if !a.Promise.SourceRanges {
				a.Skipf("not promised by %s: upstream's userspace proxy opened a portal on each load balancer IP but never implemented loadBalancerSourceRanges", a.Promise.Mode)
			}
			oc := outside(a)
			outNS, outAddr := oc.Outside()
			names := suite.Names(a.Fixture.BackendGroup(a, 2, "lbsr"))
			pod := clients(a, 1)[0]
			ip := suite.ExternalIP()
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "lb-ranges", Selector: a.Fixture.GroupSelector("lbsr"), LoadBalancer: true,
				SourceRanges: []string{netip.PrefixFrom(outAddr, 32).String()}})
			a.Fixture.SetIngress(a, svc.Name, ip)
			via := a.Cluster.Info().Nodes[0]
			routeOutside(a, oc, ip, via)
			lb := netip.AddrPortFrom(ip, suite.TCPPort)
			fromOutside := probe.Target{NS: outNS, Addr: lb, Proto: probe.TCP}
			fromPod := probe.Target{NS: pod.NS, Addr: lb, Proto: probe.TCP}

			waitServedByAll(a, fmt.Sprintf("ranges %v: outside client %s (listed) -> %s through %s", svc.Spec.LoadBalancerSourceRanges, outAddr, lb, via.Name), fromOutside, names)
			reachesNone(a, fromPod, fmt.Sprintf("ranges %v: pod %s (not listed) reaches no backend at %s", svc.Spec.LoadBalancerSourceRanges, pod.Name, lb),
				"source ranges exclude the pod", fmt.Sprintf("pod %s (%s) -> %s", pod.Name, pod.IP, lb),
				fmt.Sprintf("loadBalancerSourceRanges %v do not list pod %s (%s), yet its connections to %s reached", svc.Spec.LoadBalancerSourceRanges, pod.Name, pod.IP, lb))
			// The ranges restrict only the load balancer IP.
			waitServedByAll(a, fmt.Sprintf("pod %s -> the ClusterIP, which no range restricts", pod.Name), tcpTo(pod.NS, svc), names)

			flipped := []string{netip.PrefixFrom(pod.IP, 32).String()}
			a.Fixture.UpdateService(a, svc.Name, func(s *corev1.Service) { s.Spec.LoadBalancerSourceRanges = flipped })
			waitServedByAll(a, fmt.Sprintf("ranges changed to %v: pod %s (now listed) -> %s", flipped, pod.Name, lb), fromPod, names)
			reachesNone(a, fromOutside, fmt.Sprintf("ranges %v: outside client %s (no longer listed) reaches no backend", flipped, outAddr),
				"source ranges changed to the pod", fmt.Sprintf("outside %s -> %s through %s", outAddr, lb, via.Name),
				fmt.Sprintf("loadBalancerSourceRanges changed to %v, yet the outside client %s still reached", flipped, outAddr))
		}).Feature()
}

// reachesEveryBackend checks an external or load balancer address of a
// Service from a client pod, then from the outside client through each
// node, over TCP and UDP: every path must reach every named backend.
func reachesEveryBackend(a *suite.A, what string, ip netip.Addr, names []string) {
	a.Helper()
	pod := clients(a, 1)[0]
	for _, tg := range toAddress(pod.NS, ip) {
		waitServedByAll(a, fmt.Sprintf("pod %s -> %s %s (%s)", pod.Name, what, tg.Addr, tg.Proto), tg, names)
	}
	oc := outside(a)
	ns, addr := oc.Outside()
	for _, n := range a.Cluster.Info().Nodes {
		routeOutside(a, oc, ip, n)
		for _, tg := range toAddress(ns, ip) {
			waitServedByAll(a, fmt.Sprintf("outside client %s -> %s %s (%s) through %s", addr, what, tg.Addr, tg.Proto, n.Name), tg, names)
		}
	}
	a.Evidence("%s %s: reached %v from pod %s and from outside through every node, TCP and UDP", what, ip, names, pod.Name)
}

// toAddress returns a TCP and a UDP target for the suites' Service ports
// on an external or load balancer address.
func toAddress(from string, ip netip.Addr) []probe.Target {
	return []probe.Target{
		{NS: from, Addr: netip.AddrPortFrom(ip, suite.TCPPort), Proto: probe.TCP},
		{NS: from, Addr: netip.AddrPortFrom(ip, suite.UDPPort), Proto: probe.UDP},
	}
}

// outside returns the provider's outside client, or skips what is left of
// the assessment where the provider has none.
func outside(a *suite.A) cluster.OutsideClient {
	a.Helper()
	oc, ok := a.Cluster.(cluster.OutsideClient)
	if !ok {
		a.Skipf("the %s provider has no client outside the cluster that it can route to a node (cluster.OutsideClient)", a.Cluster.Info().Provider)
	}
	return oc
}

func routeOutside(a *suite.A, oc cluster.OutsideClient, ip netip.Addr, via cluster.Node) {
	a.Helper()
	if err := oc.RouteOutside(a.Ctx, netip.PrefixFrom(ip, 32), via.Name); err != nil {
		a.Fatalf("routing %s from the outside client through %s: %v", ip, via.Name, err)
	}
}
