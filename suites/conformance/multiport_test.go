package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestMultiPort(t *testing.T) {
	testenv.Test(t, multiPort())
}

// Each pod serves the named port on its own number.
var altPorts = []uint16{9101, 9102}

// multiPortN connections per Service port must all succeed and reach both
// pods: a random proxy misses one with probability 2*2^-60 = 1.7e-18.
const multiPortN = 60

// multiPort: a Service with a numbered and a named targetPort, where the
// name resolves to a different container port on each pod. Upstream
// (service.go "should serve multiport endpoints from pods" [Conformance])
// passes on any reply per port. Here every connection to either port must
// succeed and both pods must serve on both; a proxy that sends the named
// port's traffic to one pod's number (or to the Service port) fails, since
// each pod refuses the other's number, which the check proves first. The
// two port sets also make the endpointslice controller write one slice per
// pod.
func multiPort() types.Feature {
	return suite.NewFeature("multi-port, named targetPort", "multiport",
		"a Service with a numbered and a named targetPort; the name resolves to a different container port on each pod").
		Assess("a named targetPort reaches each pod on its own container port, beside a numbered one", func(ctx context.Context, a *suite.A) {
			var pods []cluster.Pod
			for _, p := range altPorts {
				pods = append(pods, a.Fixture.BackendWithAltPort(a, "multi", p))
			}
			names := suite.Names(pods)
			from := clients(a, 1)[0].NS
			for i, p := range pods {
				other := altPorts[1-i]
				own := a.Probe(probe.Target{NS: from, Addr: netip.AddrPortFrom(p.IP, altPorts[i]), Proto: probe.TCP}, 1, quick)
				wrong := a.Probe(probe.Target{NS: from, Addr: netip.AddrPortFrom(p.IP, other), Proto: probe.TCP}, 1, quick)
				if !suite.ServedBy(own, p.Name) || len(wrong.Errors()) == 0 {
					a.Fatalf("%s must answer on its own %d and refuse %d, or this check cannot tell the ports apart: %s; %s", p.Name, altPorts[i], other, own, wrong)
				}
			}
			const namedPort = 81
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "multi", Selector: a.Fixture.GroupSelector("multi"),
				ExtraPorts: []corev1.ServicePort{{Name: cluster.AltPortName, Port: namedPort, TargetPort: intstr.FromString(cluster.AltPortName), Protocol: corev1.ProtocolTCP}}})
			for _, port := range []uint16{suite.TCPPort, namedPort} {
				tg := probe.Target{NS: from, Addr: suite.VIP(svc, port), Proto: probe.TCP}
				waitServedByAll(a, fmt.Sprintf("port %d reaches both pods", port), tg, names)
				s := a.Probe(tg, multiPortN, quick)
				a.Evidence("port %d: %s", port, suite.Distribution(s, names))
				if e := s.Errors(); len(e) > 0 {
					a.Fatalf("port %d: %d of %d connections failed (first: %v)", port, len(e), multiPortN, e[0])
				}
				if !suite.ServedBy(s, names...) {
					a.Fatalf("port %d: %d connections did not reach both pods: %s", port, multiPortN, suite.Distribution(s, names))
				}
			}
		}).Feature()
}
