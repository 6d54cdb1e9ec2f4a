package existing

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/proxymodes/proxymodes/harness/cluster/kube"
)

// agentShell is kube.Shell over pods/exec into the agent pod on each node:
// hostNetwork, so a command runs in the node's network namespace, and
// privileged with the node's /var/run/netns, so `ip netns exec` reaches
// the pods' namespaces.
type agentShell struct {
	rest      *rest.Config
	client    kubernetes.Interface
	namespace string
	pods      map[string]string // node name -> agent pod
}

func (s agentShell) executor(node string, env []string, stdin bool, argv []string) (remotecommand.Executor, error) {
	pod, ok := s.pods[node]
	if !ok {
		return nil, fmt.Errorf("no agent pod on node %s", node)
	}
	// env(1) sets the variables: pods/exec has no environment of its own.
	cmd := append(append([]string{"env"}, env...), argv...)
	return kube.PodExecutor(s.rest, s.client, s.namespace, pod, agentContainer, cmd, stdin)
}

func (s agentShell) Run(ctx context.Context, node string, env []string, argv ...string) (string, error) {
	ex, err := s.executor(node, env, false, argv)
	if err != nil {
		return "", err
	}
	var out, stderr bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &stderr}); err != nil {
		return out.String(), fmt.Errorf("%s on %s: %w: %s", strings.Join(argv, " "), node, err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

func (s agentShell) Start(node string, env []string, argv ...string) (kube.Process, error) {
	ex, err := s.executor(node, env, true, argv)
	if err != nil {
		return nil, err
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p := &streamProcess{in: inW, out: outR, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = ex.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdin: inR, Stdout: outW, Stderr: &p.stderr})
		outW.CloseWithError(io.EOF)
		inR.Close()
	}()
	return p, nil
}

type streamProcess struct {
	in     *io.PipeWriter
	out    *io.PipeReader
	done   chan struct{}
	err    error
	stderr bytes.Buffer
}

func (p *streamProcess) Stdin() io.WriteCloser { return p.in }
func (p *streamProcess) Stdout() io.Reader     { return p.out }
func (p *streamProcess) Wait() error {
	<-p.done
	p.out.Close()
	if p.err != nil {
		return fmt.Errorf("%w: %s", p.err, strings.TrimSpace(p.stderr.String()))
	}
	return nil
}
