package sweep

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/proxymodes/proxymodes/bench/result"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
)

// iptablesNames are the commands kube-proxy runs from its PATH: it has no
// flag for the backend, and takes whatever `iptables` it finds.
var iptablesNames = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// backendPaths makes, under root, a directory per backend whose iptables
// commands are symlinks to that backend's multi-call binary
// (xtables-legacy-multi, xtables-nft-multi: each acts as the command its
// name says). With one of them first in its PATH, kube-proxy uses that
// backend, while the host's alternatives stay as they are. look finds
// the binaries (exec.LookPath).
func backendPaths(root string, backends []string, look func(string) (string, error)) (map[string]string, error) {
	dirs := map[string]string{}
	for _, b := range backends {
		multi := "xtables-" + b + "-multi"
		target, err := look(multi)
		if err != nil {
			return nil, fmt.Errorf("kube-proxy's iptables-%s points need %s, which is not installed (%v): install Debian's iptables package, or leave %s out of --backend", b, multi, err, b)
		}
		dir := filepath.Join(root, b)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		for _, name := range iptablesNames {
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				return nil, err
			}
		}
		dirs[b] = dir
	}
	return dirs, nil
}

// kubeProxyBackends are the backends kube-proxy runs with in a plan.
func kubeProxyBackends(ps []proxier) []string {
	var out []string
	for _, p := range ps {
		if p.backend != "" && p.labImpl() == result.ImplKubeProxy && !slices.Contains(out, p.backend) {
			out = append(out, p.backend)
		}
	}
	return out
}

// proxierOptions are how the lab runs p. The reference proxier takes its
// backend as a flag; kube-proxy gets a PATH whose iptables is the
// backend's (paths, from backendPaths), for its runs and its --cleanup
// alike. In a UML guest legacy is the only backend, and what the guest
// runs already.
func proxierOptions(p proxier, kernel string, paths map[string]string, limit time.Duration) (*local.ProxierOptions, error) {
	// A proxier is healthy after its first full sync, which for
	// iptables-nft at 10k Services takes minutes.
	po := &local.ProxierOptions{Mode: p.mode, Impl: p.labImpl(), StartTimeout: limit}
	if p.backend == "" {
		return po, nil
	}
	switch {
	case po.Impl == result.ImplReference:
		po.Args = []string{"--iptables-backend=" + p.backend}
	case kernel == local.KernelHost:
		dir, ok := paths[p.backend]
		if !ok {
			return nil, fmt.Errorf("no iptables-%s directory was made for %s", p.backend, p)
		}
		po.Env = []string{"PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")}
	}
	return po, nil
}
