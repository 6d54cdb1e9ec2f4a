package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// Proxier implementations every provider can run.
const (
	// ImplReference is this project's proxier (proxier/cmd/proxier).
	ImplReference = "reference"
	// ImplKubeProxy is upstream kube-proxy v1.37.2 (built from the pinned
	// module for the local lab; kubeadm's DaemonSet on kind).
	ImplKubeProxy = "kube-proxy"
)

// implModes lists the modes each implementation has. Upstream removed
// userspace in v1.26.
var implModes = map[string][]string{
	ImplReference: {"userspace", "iptables", "ipvs", "nftables"},
	ImplKubeProxy: {"iptables", "ipvs", "nftables"},
}

// CheckImpl reports, as an error naming the fix, whether impl is known and
// has mode.
func CheckImpl(impl, mode string) error {
	modes, ok := implModes[impl]
	if !ok {
		return fmt.Errorf("proxier implementation %q is unknown: use %q or %q", impl, ImplReference, ImplKubeProxy)
	}
	if !slices.Contains(modes, mode) {
		why := ""
		if impl == ImplKubeProxy && mode == "userspace" {
			why = " (upstream removed it in v1.26)"
		}
		return fmt.Errorf("%s has no %q mode%s: use one of %s, or the %s implementation", impl, mode, why, strings.Join(modes, ", "), ImplReference)
	}
	return nil
}
