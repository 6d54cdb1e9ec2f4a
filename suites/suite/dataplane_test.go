package suite

import (
	"reflect"
	"testing"
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
