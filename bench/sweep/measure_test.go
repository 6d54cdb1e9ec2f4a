package sweep

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/harness/load"
)

func TestDispatchPositions(t *testing.T) {
	a, b, c := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2"), netip.MustParseAddr("198.19.0.3")
	// kube-proxy's layout: each Service chain also names its VIP (the
	// masquerade rule), and the dispatch chain comes after them.
	dump := `*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SVC-B ! -s 198.18.64.0/18 -d 198.19.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-B -j KUBE-SEP-1
-A KUBE-SERVICES -d 198.19.0.9/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SERVICES -d 198.19.0.2/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-B
-A KUBE-SERVICES -d 198.19.0.2/32 -p udp -m udp --dport 53 -j KUBE-SVC-B2
-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A ! -s 198.18.64.0/18 -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
`
	got := dispatchPositions(dump, []netip.Addr{a, b, c})
	if len(got) != 2 || got[b] != 1 || got[a] != 3 {
		t.Errorf("positions %v, want %s at 1 and %s at 3 in KUBE-SERVICES, and no %s", got, b, a, c)
	}
}

// nft -j output as nft 1.0.6 prints it: rules are counted, chains and the
// table are not, and set and map elements are counted apart.
func TestParseNFTCounts(t *testing.T) {
	text := `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
{"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
{"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 3, "map": "verdict",
  "elem": [[{"concat": ["198.19.0.1", "tcp", 80]}, {"goto": {"target": "service-A"}}], [{"concat": ["198.19.0.2", "tcp", 80]}, {"goto": {"target": "service-B"}}]]}},
{"set": {"family": "ip", "name": "cluster-ips", "table": "kube-proxy", "type": "ipv4_addr", "handle": 4, "elem": ["198.19.0.1", "198.19.0.2"]}},
{"set": {"family": "ip", "name": "empty", "table": "kube-proxy", "type": "ipv4_addr", "handle": 5}},
{"chain": {"family": "ip", "table": "kube-proxy", "name": "services", "handle": 6}},
{"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 7, "expr": [{"vmap": {}}]}},
{"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-A", "handle": 8, "expr": [{"counter": null}]}}]}`
	rules, elems, err := parseNFTCounts(text)
	if err != nil || rules != 2 || elems != 4 {
		t.Errorf("parseNFTCounts = %d rules, %d elements, %v; want 2 and 4", rules, elems, err)
	}
	if _, _, err := parseNFTCounts("Error: No such file or directory"); err == nil {
		t.Error("no error for output that is not JSON")
	}
	if nftTable("kube-proxy") != "kube-proxy" || nftTable("reference") != "proxymodes" {
		t.Errorf("tables %q and %q", nftTable("kube-proxy"), nftTable("reference"))
	}
}

// A run that lost a request among answered ones is measured (the loss is
// a figure); a target that answered nothing fails the point.
func TestUnansweredTargetFailsThePoint(t *testing.T) {
	some := load.Result{Requests: 300, Errors: 1, ErrorKinds: map[string]int{"context deadline exceeded": 1},
		Targets: []load.Target{{URL: "http://a/", Requests: 150, Errors: 1}, {URL: "http://b/", Requests: 150}}}
	if err := unanswered(some); err != nil {
		t.Errorf("one lost request failed the point: %v", err)
	}
	dead := some
	dead.Targets = []load.Target{{URL: "http://a/", Requests: 150}, {URL: "http://b/", Requests: 150, Errors: 150}}
	dead.ErrorKinds = map[string]int{"connection refused": 150}
	if err := unanswered(dead); err == nil || !strings.Contains(err.Error(), "http://b/") || !strings.Contains(err.Error(), "150 × connection refused") {
		t.Errorf("a target that answered nothing: %v, want an error naming it and why", err)
	}
}
