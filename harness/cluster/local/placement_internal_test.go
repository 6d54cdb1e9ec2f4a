package local

import (
	"testing"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
)

// TestDeletedPodsAddressIsNotReusedAtOnce: as with host-local IPAM, a new
// pod gets the next free address after the last one handed out, so a
// deleted pod's address comes back only once the node's range wraps.
func TestDeletedPodsAddressIsNotReusedAtOnce(t *testing.T) {
	l := &Lab{st: state{Nodes: []cluster.Node{{Name: plane.NodeName(0)}}}}
	place := func(name string) int {
		t.Helper()
		k, j, err := l.placePod(cluster.PodSpec{Namespace: "default", Name: name})
		if err != nil {
			t.Fatal(err)
		}
		l.st.Pods = append(l.st.Pods, podState{Pod: cluster.Pod{Namespace: "default", Name: name, Node: plane.NodeName(k)}, Index: j})
		return j
	}
	remove := func(name string) {
		for i, p := range l.st.Pods {
			if p.Name == name {
				l.st.Pods = append(l.st.Pods[:i], l.st.Pods[i+1:]...)
				return
			}
		}
		t.Fatalf("no pod %s", name)
	}
	if a, b := place("a"), place("b"); a != 0 || b != 1 {
		t.Fatalf("first two pods got indexes %d and %d, want 0 and 1", a, b)
	}
	remove("a")
	if c := place("c"); c != 2 {
		t.Fatalf("after a (index 0) was deleted, c got index %d, want 2: a deleted pod's address came back at once", c)
	}
	// Fill the rest of the range: the walk wraps and finds a's old index
	// only when nothing after it is free.
	for i := 3; i < addrplan.MaxPodsPerNode; i++ {
		if j := place("fill-" + string(rune('a'+i%26)) + string(rune('a'+i/26))); j != i {
			t.Fatalf("fill pod %d got index %d", i, j)
		}
	}
	if j := place("wrapped"); j != 0 {
		t.Fatalf("after the range was used up, the next pod got index %d, want the freed 0", j)
	}
	if _, _, err := l.placePod(cluster.PodSpec{Namespace: "default", Name: "one-too-many"}); err == nil {
		t.Fatal("a full node took another pod")
	}
}
