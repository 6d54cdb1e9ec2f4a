package conntrack

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// table is a fake conntrack table of UDP flows.
type table struct {
	flows []Flow
	calls int
}

func (t *table) Delete(match func(Flow) bool) (uint, error) {
	t.calls++
	before := len(t.flows)
	t.flows = slices.DeleteFunc(t.flows, match)
	return uint(before - len(t.flows)), nil
}

func flow(dst, replySrc string) Flow {
	return Flow{OrigDst: netip.MustParseAddrPort(dst), ReplySrc: netip.MustParseAddrPort(replySrc)}
}

func TestChangeSetFilters(t *testing.T) {
	vip := netip.MustParseAddr("198.19.0.53")
	ep := netip.MustParseAddr("198.18.64.53")
	changes := core.ChangeSet{
		StaleUDPEndpoints:  []core.StaleUDPEndpoint{{ServiceIP: vip, Port: 53, NodePort: 30053, Endpoint: ep}},
		StaleUDPServiceIPs: []netip.Addr{netip.MustParseAddr("198.19.0.54")},
	}
	keep := []Flow{
		flow("198.19.0.53:53", "198.18.64.54:5353"), // another backend
		flow("198.19.0.99:53", "198.18.64.53:5353"), // the backend, another service
	}
	tb := &table{flows: append([]Flow{
		flow("198.19.0.53:53", "198.18.64.53:5353"),    // service IP -> removed backend
		flow("198.18.0.11:30053", "198.18.64.53:5353"), // NodePort -> removed backend
		flow("198.19.0.54:53", "198.19.0.54:53"),       // never DNATed, service just got a backend
	}, keep...)}
	if err := (&UDPCleaner{Deleter: tb}).ClearStale(nil, changes); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tb.flows, keep) {
		t.Errorf("left %v, want %v", tb.flows, keep)
	}
}

func TestReconcileAgainstSnapshot(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "dns", PortName: "dns", Protocol: v1.ProtocolUDP, ClusterIP: "198.19.0.53", Port: 53, NodePort: 30053,
		ExternalIPs: []string{"198.19.200.53"}, Endpoints: []string{"198.18.64.53:5353", "198.18.65.53:5353"}})
	b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.80", Port: 80, Endpoints: []string{"198.18.64.80:8080"}})
	b.Add(testsnap.Port{Name: "empty", PortName: "dns", Protocol: v1.ProtocolUDP, ClusterIP: "198.19.0.54", Port: 53})
	keep := []Flow{
		flow("198.19.0.53:53", "198.18.64.53:5353"),    // served by a serving endpoint
		flow("198.19.200.53:53", "198.18.65.53:5353"),  // external IP, serving endpoint
		flow("198.18.0.11:30053", "198.18.65.53:5353"), // NodePort, serving endpoint
		flow("198.19.0.80:80", "198.18.99.1:8080"),     // not a UDP Service: not ours to judge
		flow("198.19.0.54:53", "198.19.0.54:53"),       // no endpoints: nothing to move the flow to
		flow("198.19.0.53:54", "198.19.0.53:54"),       // another port of the IP
	}
	stale := []Flow{
		flow("198.19.0.53:53", "198.19.0.53:53"),      // never DNATed (formed mid-change)
		flow("198.19.0.53:53", "198.18.66.1:5353"),    // a backend that is gone
		flow("198.19.0.53:53", "198.18.64.53:9999"),   // right IP, wrong port
		flow("198.19.200.53:53", "198.19.200.53:53"),  // external IP, never DNATed
		flow("198.18.0.12:30053", "198.18.66.1:5353"), // NodePort to a gone backend
	}
	tb := &table{flows: append(append([]Flow{}, stale...), keep...)}
	if err := (&UDPCleaner{Deleter: tb}).ClearStale(b.Snap, core.ChangeSet{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tb.flows, keep) {
		t.Errorf("left %v\nwant %v", tb.flows, keep)
	}
}

func TestNothingToJudgeMakesNoNetlinkCall(t *testing.T) {
	b := testsnap.New()
	b.Add(testsnap.Port{Name: "web", PortName: "http", ClusterIP: "198.19.0.80", Port: 80, Endpoints: []string{"198.18.64.80:8080"}})
	tb := &table{}
	if err := (&UDPCleaner{Deleter: tb}).ClearStale(b.Snap, core.ChangeSet{}); err != nil || tb.calls != 0 {
		t.Errorf("calls=%d err=%v, want no call: no UDP Service has endpoints", tb.calls, err)
	}
}
