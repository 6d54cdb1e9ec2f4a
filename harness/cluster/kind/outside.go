package kind

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/kube"
	"github.com/proxymodes/proxymodes/harness/docker"
)

var _ cluster.OutsideClient = (*Cluster)(nil)

// outsideName names the container that is the cluster's outside client.
func (c *Cluster) outsideName() string { return c.name + "-outside" }

// startOutside runs the outside client: a container of the node image on
// the kind network that runs no proxier (only sleep), so what it sends
// reaches a node as traffic from beyond the cluster. It carries the probe
// binary like the nodes, and goes with the daemon's other containers.
func (c *Cluster) startOutside(ctx context.Context, probeBin string) error {
	name := c.outsideName()
	_, err := c.d.Output(ctx, "run", "--detach", "--name", name, "--hostname", name,
		"--network", docker.NetworkName, "--ip", addrplan.KindOutside().String(),
		"--cap-add", "NET_ADMIN", "--entrypoint", "sleep", c.nodeImage, "infinity")
	if err != nil {
		return fmt.Errorf("outside client container: %w", err)
	}
	return c.d.CopyTo(ctx, name, []docker.File{{Path: kube.NodeBinary, Src: probeBin, Mode: 0o755}})
}

// Outside implements cluster.OutsideClient: probes and commands run in the
// outside container as they do in a node's.
func (c *Cluster) Outside() (string, netip.Addr) {
	return c.outsideName(), addrplan.KindOutside()
}

// RouteOutside implements cluster.OutsideClient.
func (c *Cluster) RouteOutside(ctx context.Context, dst netip.Prefix, node string) error {
	if !addrplan.External.Contains(dst.Addr()) || dst.Bits() < addrplan.External.Bits() {
		return fmt.Errorf("route %s from the outside client: only addresses in %s (addrplan.External) are routed to nodes", dst, addrplan.External)
	}
	for _, n := range c.info.Nodes {
		if n.Name == node {
			_, err := c.Exec(ctx, c.outsideName(), "ip", "route", "replace", dst.String(), "via", n.IP.String())
			return err
		}
	}
	return fmt.Errorf("route %s from the outside client: no node %q in kind cluster %s", dst, node, c.name)
}
