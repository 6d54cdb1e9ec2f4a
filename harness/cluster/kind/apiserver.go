package kind

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/cluster"
)

// The kubelet runs kube-apiserver from this static pod manifest: moved
// away, the pod stops; moved back, it starts again (the kubelet looks
// every 20 s).
const (
	apiServerManifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
	apiServerParked   = "/etc/kubernetes/kube-apiserver.yaml.proxymodes-stopped"
)

// StopAPIServer implements cluster.APIServerRestarter. kind's control
// plane has one API server, so there is no stand-in: Client() fails until
// StartAPIServer.
func (c *Cluster) StopAPIServer(ctx context.Context) (bool, error) {
	cp, err := c.controlPlaneNode()
	if err != nil {
		return false, err
	}
	if _, err := c.Exec(ctx, cp, "mv", apiServerManifest, apiServerParked); err != nil {
		return false, fmt.Errorf("moving kube-apiserver's static pod manifest away on %s: %w", cp, err)
	}
	return false, c.waitAPIServer(ctx, false, 2*time.Minute)
}

// StartAPIServer implements cluster.APIServerRestarter.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	cp, err := c.controlPlaneNode()
	if err != nil {
		return err
	}
	if _, err := c.Exec(ctx, cp, "test", "-e", apiServerParked); err == nil {
		if _, err := c.Exec(ctx, cp, "mv", apiServerParked, apiServerManifest); err != nil {
			return fmt.Errorf("moving kube-apiserver's static pod manifest back on %s: %w", cp, err)
		}
	}
	return c.waitAPIServer(ctx, true, 3*time.Minute)
}

func (c *Cluster) controlPlaneNode() (string, error) {
	for _, n := range c.info.Nodes {
		if strings.HasSuffix(n.Name, "-control-plane") {
			return n.Name, nil
		}
	}
	return "", fmt.Errorf("cluster %s has no control-plane node", c.name)
}

// waitAPIServer waits until /readyz answers 200 (ready) or nothing answers
// it at all (!ready).
func (c *Cluster) waitAPIServer(ctx context.Context, ready bool, limit time.Duration) error {
	rc := c.client.Discovery().RESTClient()
	deadline := time.Now().Add(limit)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := rc.Get().AbsPath("/readyz").Do(rctx).Error()
		cancel()
		if (err == nil) == ready {
			return nil
		}
		if time.Now().After(deadline) {
			if ready {
				return fmt.Errorf("kube-apiserver not ready %s after its manifest went back (last: %v); see the kubelet's log in the saved logs", limit, err)
			}
			return fmt.Errorf("kube-apiserver still answers %s after its manifest was moved away", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

var _ cluster.APIServerRestarter = (*Cluster)(nil)
