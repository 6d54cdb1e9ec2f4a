package local

import (
	"context"
	"errors"
	"fmt"

	"github.com/proxymodes/proxymodes/harness/cluster"
)

// StopAPIServer implements cluster.APIServerRestarter: it stops the
// control plane (API server, etcd and the endpointslice controller, one
// process) and starts a stand-in API server on its storage, on a port
// that no proxier's kubeconfig names. Client() then reaches the stand-in.
func (l *Lab) StopAPIServer(ctx context.Context) (bool, error) {
	if l.standIn != nil {
		return false, errors.New("the API server is already stopped")
	}
	if err := l.cp.Stop(); err != nil {
		return false, fmt.Errorf("stopping the control plane: %w", err)
	}
	s, err := l.cp.StandIn(ctx)
	if err != nil {
		// Back to the lab as it was, so that the features after this
		// one still have an API.
		if rerr := l.cp.Resume(context.Background()); rerr != nil {
			err = errors.Join(err, fmt.Errorf("resuming the control plane: %w", rerr))
		}
		return false, err
	}
	c, err := cluster.NewClient(s.RESTConfig())
	if err != nil {
		s.Stop()
		return false, err
	}
	l.mu.Lock()
	l.standIn, l.client = s, c
	l.mu.Unlock()
	l.log.Logf("lab %s: control plane stopped; a stand-in API server at %s takes the changes meanwhile", l.opts.Name, s.URL())
	return true, nil
}

// StartAPIServer implements cluster.APIServerRestarter: the stand-in
// stops (it shares etcd) and the control plane resumes on its port.
func (l *Lab) StartAPIServer(ctx context.Context) error {
	if l.standIn != nil {
		if err := l.standIn.Stop(); err != nil {
			return fmt.Errorf("stopping the stand-in API server: %w", err)
		}
	}
	l.mu.Lock()
	l.standIn, l.client = nil, l.cpClient
	l.mu.Unlock()
	if l.cp.Healthy() {
		return nil
	}
	if err := l.cp.Resume(ctx); err != nil {
		return fmt.Errorf("resuming the control plane: %w", err)
	}
	return nil
}

var _ cluster.APIServerRestarter = (*Lab)(nil)
