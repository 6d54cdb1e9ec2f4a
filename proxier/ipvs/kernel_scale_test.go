package ipvs

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
)

// TestKernelSyncScale records how long syncs take against the real kernel
// (inside the UML guest on hosts without ip_vs): a first full sync of n
// Services with 2 endpoints each, a converged full sync, and a partial sync
// after one endpoint changed. It measures; it asserts only that syncs
// succeed. Opt in with PM_IPVS_SCALE=1000,10000 (it takes minutes in UML).
func TestKernelSyncScale(t *testing.T) {
	sizes := os.Getenv("PM_IPVS_SCALE")
	if sizes == "" {
		t.Skip("set PM_IPVS_SCALE=1000,10000 to measure IPVS sync times in the real kernel")
	}
	inNode(t, func(n *node) {
		for _, f := range strings.Split(sizes, ",") {
			size, err := strconv.Atoi(f)
			if err != nil {
				t.Errorf("PM_IPVS_SCALE: %v", err)
				return
			}
			p, ok := n.newProxier("rr")
			if !ok {
				return
			}
			snap := testsnap.Synthetic(size, 2)
			timed := func(what string, c core.ChangeSet) {
				start := time.Now()
				if n.sync(p, snap, c) {
					t.Logf("services=%d %s: %s", size, what, time.Since(start).Round(time.Millisecond))
				}
			}
			timed("first full sync", fullSync())
			timed("converged full sync", fullSync())
			for name := range snap.Services {
				snap.Endpoints[name][1].Ready = false
				timed("one endpoint changed (partial sync)", partialSync(name.Name))
				break
			}
			start := time.Now()
			if err := p.Cleanup(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
			t.Logf("services=%d cleanup: %s", size, time.Since(start).Round(time.Millisecond))
		}
	})
}
