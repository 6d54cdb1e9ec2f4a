package suite

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRefersFindsIPSetMembers(t *testing.T) {
	dump := `-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 198.19.78.221,tcp:80
add KUBE-CLUSTER-IP 198.19.78.2,tcp:80
add KUBE-NODE-PORT-TCP 31170
add KUBE-NODE-PORT-TCP 31171
-A KUBE-NODEPORTS -p tcp -m tcp --dport 31170 -j KUBE-EXT-X`
	got := Refers(dump, []string{"198.19.78.221"}, nil, []string{"31170"}, nil)
	want := []string{"add KUBE-CLUSTER-IP 198.19.78.221,tcp:80", "add KUBE-NODE-PORT-TCP 31170",
		"-A KUBE-NODEPORTS -p tcp -m tcp --dport 31170 -j KUBE-EXT-X"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Refers:\n got %q\nwant %q", got, want)
	}
	if got := Refers(dump, []string{"198.19.78.22"}, nil, []string{"3117"}, nil); len(got) != 0 {
		t.Errorf("prefixes of an address or port matched: %q", got)
	}
}

func TestAssuredUDPTTL(t *testing.T) {
	assured := "udp      17 117 src=198.18.1.10 dst=198.19.0.12 sport=40000 dport=53 src=198.18.2.11 dst=198.18.1.10 sport=8080 dport=40000 [ASSURED] mark=0 use=1"
	replied := "udp      17 28 src=198.18.1.10 dst=198.19.0.12 sport=40000 dport=53 src=198.18.2.11 dst=198.18.1.10 sport=8080 dport=40000 mark=0 use=1"
	for _, c := range []struct {
		name, out string
		ttl       time.Duration
		err       string
	}{
		{"assured", assured + "\nconntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n", 117 * time.Second, ""},
		{"replied, not yet a stream", replied + "\n", 0, "not ASSURED"},
		{"none", "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n", 0, "found 0"},
		{"two", assured + "\n" + assured + "\n", 0, "found 2"},
		{"garbled", "udp 17 soon\n", 0, "cannot parse the TTL"},
	} {
		ttl, _, err := AssuredUDPTTL(c.out)
		if c.err == "" && (err != nil || ttl != c.ttl) {
			t.Errorf("%s: got %s, %v; want %s", c.name, ttl, err, c.ttl)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: got %s, %v; want an error with %q", c.name, ttl, err, c.err)
		}
	}
}

func TestIPVSPersistence(t *testing.T) {
	dump := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.19.0.12:80 rr persistent 45
  -> 198.18.1.2:8080              Masq    1      0          0
TCP  198.19.0.13:80 rr
UDP  198.19.0.12:53 rr persistent 45`
	for _, c := range []struct {
		proto, vip string
		secs       int
		found      bool
	}{
		{"tcp", "198.19.0.12:80", 45, true},
		{"udp", "198.19.0.12:53", 45, true},
		{"tcp", "198.19.0.13:80", 0, true},
		{"tcp", "198.19.0.14:80", 0, false},
	} {
		secs, found := IPVSPersistence(dump, c.proto, netip.MustParseAddrPort(c.vip))
		if secs != c.secs || found != c.found {
			t.Errorf("%s %s: got %d %t, want %d %t", c.proto, c.vip, secs, found, c.secs, c.found)
		}
	}
}

func TestParseAddrs(t *testing.T) {
	out := `1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host noprefixroute \       valid_lft forever preferred_lft forever
2: mgmt0    inet 198.18.0.2/24 brd 198.18.0.255 scope global mgmt0\       valid_lft forever preferred_lft forever
3: br0    inet 198.18.64.1/24 scope global br0\       valid_lft forever preferred_lft forever
4: kube-ipvs0    inet 198.19.0.10/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
`
	got := fmt.Sprint(ParseAddrs(out))
	if want := "[198.18.0.2 198.18.64.1 198.19.0.10]"; got != want {
		t.Errorf("ParseAddrs = %s, want %s", got, want)
	}
}
