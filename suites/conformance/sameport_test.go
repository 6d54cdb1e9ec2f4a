package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestSamePort(t *testing.T) {
	testenv.Test(t, samePort())
}

// samePort: one port number on TCP and UDP, and UDP taken away. Upstream
// (service.go, Conformance since v1.29) passes when UDP stops within 30 s.
// Here TCP must also keep serving every connection while the change is
// applied and after it, and once the proxier is quiet no UDP datagram may
// get an answer from a backend.
//
// Stale conntrack entries are the cleanup feature's business, so the UDP
// datagrams measured after the change must not meet one: before the change
// UDP is only probed by settling probes, whose source ports
// (probe.SettlingPorts) no measured datagram uses.
func samePort() types.Feature {
	const udpN, tcpN = 10, 40
	return suite.NewFeature("same port on TCP and UDP", "same-port",
		"a port number served on TCP and UDP; removing UDP stops only UDP").
		Assess("removing UDP from a port number that TCP shares stops UDP, and TCP serves throughout", func(ctx context.Context, a *suite.A) {
			names := suite.Names(a.Fixture.Backends(a, 2))
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "same-port", UDPPort: suite.TCPPort})
			from := clients(a, 1)[0].NS
			tcp := tcpTo(from, svc)
			udp := probe.Target{NS: from, Addr: tcp.Addr, Proto: probe.UDP}
			waitServedByAll(a, fmt.Sprintf("TCP on %s reaches both backends", tcp.Addr), tcp, names)
			waitServedByAll(a, fmt.Sprintf("UDP on the same %s reaches both backends", udp.Addr), udp, names)

			start := time.Now()
			a.Fixture.UpdateService(a, svc.Name, func(s *corev1.Service) {
				var keep []corev1.ServicePort
				for _, p := range s.Spec.Ports {
					if p.Protocol != corev1.ProtocolUDP {
						keep = append(keep, p)
					}
				}
				s.Spec.Ports = keep
			})
			var during probe.Summary
			a.EventuallyTrue("UDP gets no answer once the Service drops it", a.Converge(), func() (bool, string) {
				t := a.Probe(tcp, 5, quick)
				during.Results = append(during.Results, t.Results...)
				u := a.Probe(udp, 5, time.Second)
				return len(u.Counts()) == 0, "last UDP probe: " + u.String()
			})
			a.Evidence("UDP dropped within %s; TCP while it changed: %d connections, %d failed", a.ConvergedSince(start).Round(10*time.Millisecond), len(during.Results), len(during.Errors()))
			if e := during.Errors(); len(e) > 0 {
				a.Fatalf("TCP on the same port failed %d of %d connections while UDP was being removed (first: %v)", len(e), len(during.Results), e[0])
			}

			u := a.Probe(udp, udpN, time.Second)
			kinds, _ := suite.ErrorKinds(u)
			a.Evidence("after: %d UDP datagrams, answered by %v; errors %v", udpN, u.Counts(), kinds)
			if c := u.Counts(); len(c) > 0 {
				a.Fatalf("after UDP was removed from the Service and the proxiers were quiet, backends still answered UDP on %s: %s", udp.Addr, tally(c))
			}
			t := a.Probe(tcp, tcpN, quick)
			a.Evidence("after: TCP %s", suite.Distribution(t, names))
			if e := t.Errors(); len(e) > 0 {
				a.Fatalf("TCP on %s failed %d of %d connections after UDP was removed (first: %v)", tcp.Addr, len(e), tcpN, e[0])
			}
			if !suite.ServedBy(t, names...) {
				a.Fatalf("TCP on %s no longer reaches both backends after UDP was removed: %s", tcp.Addr, suite.Distribution(t, names))
			}
		}).Feature()
}
