package local

import (
	"io"
	"time"

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

// GuestSyncPeriod is the periodic resync of every proxier in a UML guest,
// instead of the default 30 s. A kube-proxy ipvs sync takes 20-38 s there
// (each of its ~40 ipset and iptables processes costs about a second to
// start under UML), so with two nodes' 30 s resyncs the guest's one vCPU
// was 88-92% busy with resyncs nobody asked for, and probes competed with
// them. Syncs on changes are untouched; the resync is the proxies' safety
// net, which no assessment relies on.
const GuestSyncPeriod = 5 * time.Minute

// guestArgs are the flags a proxier gets in a UML guest, the same setting
// for both implementations.
func (p *ProxierOptions) guestArgs() []string {
	period := GuestSyncPeriod.String()
	if p.Impl == ImplKubeProxy {
		// kube-proxy reads --ipvs-sync-period in ipvs mode and
		// --iptables-sync-period in every other mode, and ignores the other.
		if p.Mode == "ipvs" {
			return []string{"--ipvs-sync-period=" + period}
		}
		return []string{"--iptables-sync-period=" + period}
	}
	return []string{"--sync-period=" + period}
}
