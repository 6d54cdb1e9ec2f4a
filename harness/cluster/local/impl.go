package local

import (
	"fmt"
	"io"

	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/cluster"
)

// Proxier implementations a lab can run on its nodes.
const (
	ImplReference = cluster.ImplReference
	ImplKubeProxy = cluster.ImplKubeProxy
)

// resolve checks Impl against Mode and finds (building if needed) the
// binary. It is idempotent.
func (p *ProxierOptions) resolve(progress io.Writer) error {
	if p.Impl == "" {
		p.Impl = ImplReference
	}
	if err := cluster.CheckImpl(p.Impl, p.Mode); err != nil {
		return err
	}
	if p.Fault != "" && p.Impl != ImplReference {
		return fmt.Errorf("a fault (%s) can only be injected into the reference proxier, not %s", p.Fault, p.Impl)
	}
	if p.Binary != "" {
		return nil
	}
	var err error
	switch {
	case p.Impl == ImplKubeProxy:
		p.Binary, err = binaries.Kubernetes("kube-proxy", progress)
	case p.Fault != "":
		p.Binary, err = binaries.Selftest("proxier/cmd/proxier", progress)
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
		if p.Fault != "" {
			return []string{"--v=2", "--selftest-fault=" + p.Fault}
		}
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
