package labtest

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/harness/rules"
)

// HostRules reads (never writes) the host namespace's iptables rules,
// legacy and nft, plus those of any extra savers (ip6tables-nft-save...),
// so that a test can prove a run left them alone.
func HostRules(t testing.TB, extra ...string) string {
	t.Helper()
	var b strings.Builder
	for _, saver := range append(rules.Savers(), extra...) {
		out, err := exec.Command(saver).Output()
		if err != nil {
			t.Fatalf("%s: %v", saver, err)
		}
		fmt.Fprintf(&b, "== %s\n%s", saver, rules.Normalize(string(out)))
	}
	return b.String()
}
