package local

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/proc"
	"github.com/proxymodes/proxymodes/harness/rules"
)

// ProxierOptions start the reference proxier on every node.
type ProxierOptions struct {
	// Mode is the proxy mode (userspace, iptables, ipvs).
	Mode string
	// Binary overrides the proxier binary; by default it is built from
	// this checkout.
	Binary string
	// Args are extra flags for every proxier.
	Args []string
}

// Ports the proxier serves inside each node's namespace.
const (
	ProxierMetricsPort = 10249
	ProxierHealthzPort = 10256
)

type proxierProc struct {
	node   string
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *proxierProc) stop() {
	proc.Stop([]int{p.cmd.Process.Pid}, 10*time.Second)
	<-p.exited
}

func (l *Lab) proxierLog(node string) string {
	return filepath.Join(l.dir, "proxier", node+".log")
}

// startProxiers runs one proxier per node, inside the node's namespace,
// talking to the API server over the node's management link, and waits
// until each reports healthy (it has synced its rules once).
func (l *Lab) startProxiers(ctx context.Context, bin string) error {
	po := l.opts.Proxier
	if err := os.MkdirAll(filepath.Join(l.dir, "proxier"), 0o700); err != nil {
		return err
	}
	for k, n := range l.st.Nodes {
		args := append([]string{
			bin,
			"--proxy-mode=" + po.Mode,
			"--kubeconfig=" + l.st.Kubeconfig,
			"--hostname-override=" + n.Name,
			"--cluster-cidr=" + addrplan.Pods.String(),
			fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", ProxierMetricsPort),
			fmt.Sprintf("--healthz-bind-address=127.0.0.1:%d", ProxierHealthzPort),
		}, po.Args...)
		cmd := exec.Command("ip", append([]string{"netns", "exec", l.nodeNS(k)}, args...)...)
		cmd.Env = append(os.Environ(), agent.LabEnv+"="+l.opts.Name)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		logf, err := os.OpenFile(l.proxierLog(n.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		err = cmd.Start()
		logf.Close()
		if err != nil {
			return fmt.Errorf("start proxier on %s: %w", n.Name, err)
		}
		p := &proxierProc{node: n.Name, cmd: cmd, exited: make(chan struct{})}
		go func() { cmd.Wait(); close(p.exited) }()
		l.mu.Lock()
		l.proxiers = append(l.proxiers, p)
		l.mu.Unlock()
	}
	for k, p := range l.proxiers {
		if err := l.waitProxierHealthy(ctx, k, p); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) waitProxierHealthy(ctx context.Context, k int, p *proxierProc) error {
	ns := l.nodeNS(k)
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netlab.Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	client := &http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.After(60 * time.Second)
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", ProxierHealthzPort)
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.exited:
			return fmt.Errorf("proxier on %s exited (%v):\n%s", p.node, p.cmd.ProcessState, tailFile(l.proxierLog(p.node), 20))
		case <-deadline:
			return fmt.Errorf("proxier on %s not healthy after 60s:\n%s", p.node, tailFile(l.proxierLog(p.node), 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// SaveLogs copies the control plane's, the proxiers' and the pods' logs
// into dst, so they survive Down; tests call it when they fail.
func (l *Lab) SaveLogs(dst string) error {
	return filepath.Walk(l.dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.HasSuffix(path, ".log") {
			return err
		}
		rel, _ := filepath.Rel(l.dir, path)
		target := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// StopProxier stops the proxier of one node and leaves its rules in place,
// as a crashed or upgraded proxier would.
func (l *Lab) StopProxier(node string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, p := range l.proxiers {
		if p.node == node {
			p.stop()
			l.proxiers = append(l.proxiers[:i], l.proxiers[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("no proxier runs on %q", node)
}

// ProxierBinary is the proxier the lab runs ("" without one).
func (l *Lab) ProxierBinary() string {
	if l.opts.Proxier == nil {
		return ""
	}
	return l.opts.Proxier.Binary
}

// Probe runs a probe from one of the lab's namespaces.
func (l *Lab) Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary {
	return probe.Run(ctx, t, n, timeout)
}

// IPTables dumps the rules of one of the lab's namespaces.
func (l *Lab) IPTables(ctx context.Context, ns string) (string, error) {
	return rules.IPTables(ns)
}
