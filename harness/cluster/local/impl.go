package local

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/proxymodes/proxymodes/harness/binaries"
)

// Proxier implementations a lab can run on its nodes.
const (
	// ImplReference is this project's proxier (proxier/cmd/proxier).
	ImplReference = "reference"
	// ImplKubeProxy is upstream kube-proxy v1.37.2, built from the pinned
	// module by clusters/k8s/build.sh.
	ImplKubeProxy = "kube-proxy"
)

// implModes lists the modes each implementation has.
var implModes = map[string][]string{
	ImplReference: {"userspace", "iptables", "ipvs"},
	// Upstream removed userspace in v1.26; nftables is not in the suites'
	// promise table yet.
	ImplKubeProxy: {"iptables", "ipvs"},
}

// resolve checks Impl against Mode and finds (building if needed) the
// binary. It is idempotent.
func (p *ProxierOptions) resolve(progress io.Writer) error {
	if p.Impl == "" {
		p.Impl = ImplReference
	}
	modes, ok := implModes[p.Impl]
	if !ok {
		return fmt.Errorf("proxier implementation %q is unknown: use %q or %q", p.Impl, ImplReference, ImplKubeProxy)
	}
	if !slices.Contains(modes, p.Mode) {
		why := ""
		if p.Impl == ImplKubeProxy && p.Mode == "userspace" {
			why = " (upstream removed it in v1.26)"
		}
		return fmt.Errorf("%s has no %q mode%s: use one of %s, or the %s implementation", p.Impl, p.Mode, why, strings.Join(modes, ", "), ImplReference)
	}
	if p.Binary != "" {
		return nil
	}
	var err error
	switch p.Impl {
	case ImplKubeProxy:
		p.Binary, err = binaries.Kubernetes("kube-proxy", progress)
	default:
		p.Binary, err = binaries.Project("proxier/cmd/proxier", progress)
	}
	return err
}

// implArgs are the flags an implementation needs in a lab node, on top of
// the ones every proxier gets (mode, kubeconfig, node name, addresses).
func (p *ProxierOptions) implArgs() []string {
	// Level 2 logs every sync and conntrack cleanup: the logs a failed run
	// keeps should explain it.
	if p.Impl != ImplKubeProxy {
		return []string{"--v=2"}
	}
	return []string{"--v=2",
		// nf_conntrack_max is global, and a node is only a namespace:
		// kube-proxy must not resize the host's table (it fails trying).
		"--conntrack-max-per-core=0",
		// kube-proxy would lower the whole lab's OOM score to -999.
		"--oom-score-adj=0",
	}
}
