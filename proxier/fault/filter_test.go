package fault

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/proxymodes/proxymodes/proxier/core"
)

var spn = core.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "svc"}, Protocol: v1.ProtocolTCP}

func snapshot(affinity bool, timeout int32, ips ...string) *core.Snapshot {
	s := core.NewSnapshot()
	s.Services[spn] = &core.ServicePort{Name: spn, ClusterIP: netip.MustParseAddr("198.19.0.10"), Port: 80, Protocol: v1.ProtocolTCP,
		NodePort: 30080, ClientIPAffinity: affinity, StickyTimeoutSeconds: timeout}
	for _, ip := range ips {
		s.Endpoints[spn] = append(s.Endpoints[spn], core.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true})
	}
	return s
}

func ips(s *core.Snapshot) []string {
	var out []string
	for _, e := range s.Endpoints[spn] {
		out = append(out, e.IP.String())
	}
	return out
}

func TestFilterBreaksOnlyItsPromise(t *testing.T) {
	in := snapshot(true, 40, "198.18.1.2")
	in.Services[spn].InternalLocal = true
	in.Services[spn].ExternalLocal = true
	in.Services[spn].HealthCheckNodePort = 31000
	for _, c := range []struct {
		f                            Fault
		affinity                     bool
		timeout, nodePort            int32
		internalLocal, externalLocal bool
		healthCheck                  int32
	}{
		{AffinityIgnored, false, 0, 30080, true, true, 31000},
		{AffinityEarlyExpiry, true, 10, 30080, true, true, 31000},
		{AffinityNeverExpires, true, core.DefaultStickyTimeoutSeconds, 30080, true, true, 31000},
		{NodePortIgnored, true, 40, 0, true, true, 31000},
		{StaleConntrackKept, true, 40, 30080, true, true, 31000},
		{InternalPolicyIgnored, true, 40, 30080, false, true, 31000},
		{ExternalPolicyIgnored, true, 40, 30080, true, false, 31000},
		{HealthCheckIgnored, true, 40, 30080, true, true, 0},
	} {
		var f Filter
		out := f.Apply(c.f, in)
		sp := out.Services[spn]
		if sp.ClientIPAffinity != c.affinity || sp.StickyTimeoutSeconds != c.timeout || sp.NodePort != c.nodePort ||
			sp.InternalLocal != c.internalLocal || sp.ExternalLocal != c.externalLocal || sp.HealthCheckNodePort != c.healthCheck {
			t.Errorf("%s: got affinity %t timeout %d nodePort %d internalLocal %t externalLocal %t healthCheck %d, want %t %d %d %t %t %d", c.f,
				sp.ClientIPAffinity, sp.StickyTimeoutSeconds, sp.NodePort, sp.InternalLocal, sp.ExternalLocal, sp.HealthCheckNodePort,
				c.affinity, c.timeout, c.nodePort, c.internalLocal, c.externalLocal, c.healthCheck)
		}
		if in.Services[spn].StickyTimeoutSeconds != 40 || in.Services[spn].NodePort != 30080 || !in.Services[spn].ClientIPAffinity {
			t.Fatalf("%s modified the tracker's snapshot", c.f)
		}
	}
}

func TestFilterExternalAddressFaults(t *testing.T) {
	in := snapshot(false, 0, "198.18.1.2")
	sp := in.Services[spn]
	sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("198.18.16.1")}
	sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.18.17.1")}
	sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}
	for _, c := range []struct {
		f                Fault
		ext, lb, sources int
	}{
		{ExternalIPsIgnored, 0, 1, 1},
		{LoadBalancerIgnored, 1, 0, 0},
		{SourceRangesIgnored, 1, 1, 0},
		{NodePortIgnored, 1, 1, 1},
	} {
		var f Filter
		got := f.Apply(c.f, in).Services[spn]
		if len(got.ExternalIPs) != c.ext || len(got.LoadBalancerIPs) != c.lb || len(got.LoadBalancerSourceRanges) != c.sources {
			t.Errorf("%s: %d external IPs, %d load balancer IPs, %d source ranges; want %d, %d, %d", c.f,
				len(got.ExternalIPs), len(got.LoadBalancerIPs), len(got.LoadBalancerSourceRanges), c.ext, c.lb, c.sources)
		}
	}
	if len(sp.ExternalIPs) != 1 || len(sp.LoadBalancerIPs) != 1 || len(sp.LoadBalancerSourceRanges) != 1 {
		t.Fatal("the filter modified the tracker's snapshot")
	}
}

func TestFilterEndpointFaults(t *testing.T) {
	one := snapshot(false, 0, "198.18.1.2")
	two := snapshot(false, 0, "198.18.1.2", "198.18.1.3")
	moved := snapshot(false, 0, "198.18.1.3")
	var kept Filter
	kept.Apply(RemovedEndpointKept, two)
	if got := ips(kept.Apply(RemovedEndpointKept, moved)); len(got) != 2 {
		t.Errorf("removed-endpoint-kept: got %v, want both", got)
	}
	// A pod being deleted first turns not ready, then leaves the slice.
	var terminating Filter
	terminating.Apply(RemovedEndpointKept, two)
	notReady := snapshot(false, 0, "198.18.1.2", "198.18.1.3")
	notReady.Endpoints[spn][0].Ready = false
	if out := terminating.Apply(RemovedEndpointKept, notReady); len(core.UsableEndpoints(out.Endpoints[spn])) != 2 {
		t.Errorf("removed-endpoint-kept: a terminating endpoint stopped being used: %+v", out.Endpoints[spn])
	}
	if got := ips(terminating.Apply(RemovedEndpointKept, moved)); len(got) != 2 {
		t.Errorf("removed-endpoint-kept: after terminating, then removed: got %v, want both", got)
	}
	if notReady.Endpoints[spn][0].Ready {
		t.Error("the filter modified the tracker's snapshot")
	}
	var ignored Filter
	ignored.Apply(EndpointAddIgnored, one)
	if got := ips(ignored.Apply(EndpointAddIgnored, two)); len(got) != 1 || got[0] != "198.18.1.2" {
		t.Errorf("endpoint-add-ignored: got %v, want only the first", got)
	}
	var first Filter
	if got := ips(first.Apply(EndpointAddIgnored, two)); len(got) != 2 {
		t.Errorf("endpoint-add-ignored: a Service's first endpoints are taken, got %v", got)
	}
	var deleted Filter
	deleted.Apply(ServiceDeleteIgnored, two)
	if out := deleted.Apply(ServiceDeleteIgnored, core.NewSnapshot()); out.Services[spn] == nil || len(out.Endpoints[spn]) != 2 {
		t.Errorf("service-delete-ignored: the deleted Service is gone: %v", out.Services)
	}
	var none Filter
	none.Apply(AffinityIgnored, two)
	if out := none.Apply(AffinityIgnored, core.NewSnapshot()); len(out.Services) != 0 {
		t.Errorf("affinity-ignored kept a deleted Service")
	}
}

func TestParse(t *testing.T) {
	if _, err := Parse("affinity-ignored"); err != nil {
		t.Error(err)
	}
	if _, err := Parse("nope"); err == nil {
		t.Error("an unknown fault was accepted")
	}
}

func TestFilterAPIFaults(t *testing.T) {
	one := snapshot(false, 0, "198.18.1.2")
	two := snapshot(false, 0, "198.18.1.2", "198.18.1.3")

	var flush Filter
	flush.Apply(APILossFlushes, one)
	flush.APIDown, flush.APILost = true, true
	if out := flush.Apply(APILossFlushes, one); len(out.Services) != 0 || len(out.Endpoints) != 0 {
		t.Errorf("api-loss-flushes: while the API is down, got %d Services, want none", len(out.Services))
	}
	flush.APIDown = false
	if got := ips(flush.Apply(APILossFlushes, two)); len(got) != 2 {
		t.Errorf("api-loss-flushes: once the API answers, got %v, want both endpoints", got)
	}

	var missed Filter
	missed.Apply(APIChangesMissed, one)
	if got := ips(missed.Apply(APIChangesMissed, two)); len(got) != 2 {
		t.Errorf("api-changes-missed: before the API was lost, got %v, want both endpoints", got)
	}
	missed.APILost = true
	if got := ips(missed.Apply(APIChangesMissed, one)); len(got) != 2 {
		t.Errorf("api-changes-missed: after the API was lost, got %v, want the state from before (both)", got)
	}
	if out := missed.Apply(APIChangesMissed, core.NewSnapshot()); len(out.Services) != 1 {
		t.Errorf("api-changes-missed: a Service deleted after the API was lost is gone")
	}
}

func TestTerminatingFaults(t *testing.T) {
	in := snapshot(false, 0, "198.18.1.2", "198.18.1.3", "198.18.1.4")
	eps := in.Endpoints[spn]
	eps[1].Ready, eps[1].Serving, eps[1].Terminating = false, true, true
	eps[2].Ready, eps[2].Serving, eps[2].Terminating = false, false, true
	for _, c := range []struct {
		f    Fault
		want string // ready endpoints, then all
	}{
		{TerminatingAsReady, "198.18.1.2 198.18.1.3 / 198.18.1.2 198.18.1.3 198.18.1.4"},
		{TerminatingDropped, "198.18.1.2 / 198.18.1.2"},
		{NodePortIgnored, "198.18.1.2 / 198.18.1.2 198.18.1.3 198.18.1.4"},
	} {
		var f Filter
		out := f.Apply(c.f, in)
		var ready []string
		for _, e := range out.Endpoints[spn] {
			if e.Ready {
				ready = append(ready, e.IP.String())
			}
		}
		if got := strings.Join(ready, " ") + " / " + strings.Join(ips(out), " "); got != c.want {
			t.Errorf("%s: %s, want %s", c.f, got, c.want)
		}
	}
	if !in.Endpoints[spn][1].Terminating || in.Endpoints[spn][1].Ready {
		t.Errorf("the input snapshot was modified")
	}
}
