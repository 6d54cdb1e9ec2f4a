// Package docker runs a private Docker daemon for kind clusters and image
// builds: Debian's docker.io (dockerd 20.10 with its own containerd) on its
// own socket, data root, exec root and cgroup, told to leave the host
// namespace's iptables and ip_forward alone. Images survive in the data
// root between runs (the kind node image cache); containers, networks,
// bridges, mounts and processes do not survive Stop, nor a killed run once
// Cleanup has run.
package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
)

// Logger receives progress lines; the package never prints on its own.
type Logger interface {
	Logf(format string, args ...any)
}

type discard struct{}

func (discard) Logf(string, ...any) {}

const (
	// StateDir holds the socket, pidfiles, exec roots, logs and the runc
	// wrapper. It lives on /run so a reboot clears it, but not under
	// /run/proxymodes: the local lab takes every directory there for a
	// lab's and removes stale ones, which would pull the socket out from
	// under a running daemon.
	StateDir = "/run/proxymodes-docker"
	// Tag is the value of agent.LabEnv on dockerd, containerd and
	// everything they spawn (shims, docker-proxy), so leak checks and
	// Cleanup find them after the run that started them died.
	// It is not a valid lab name, so no lab's leak check claims them.
	Tag = "pm-docker"
	// CgroupParent is where every container's cgroup goes, so Cleanup can
	// find container processes whose shim was killed.
	CgroupParent = "/proxymodes-docker"
	// NetworkName is the network kind attaches its nodes to; kind uses an
	// existing one as it is.
	NetworkName = "kind"
)

// DefaultDataRoot is the persistent data root under the cache directory.
func DefaultDataRoot() string {
	c := os.Getenv("PROXYMODES_CACHE")
	if c == "" {
		c = "/var/cache/proxymodes"
	}
	return filepath.Join(c, "docker")
}

// Options for Start.
type Options struct {
	// DataRoot keeps images between runs; default DefaultDataRoot().
	DataRoot string
	Logger   Logger
}

// Daemon is a running private dockerd.
type Daemon struct {
	engine   Engine
	dataRoot string
	log      Logger
	lock     *os.File
	dockerd  *exec.Cmd
	ctrd     *exec.Cmd
	exited   chan struct{} // closed when dockerd exits
}

func paths() (sock, ctrdSock, binDir string) {
	return filepath.Join(StateDir, "docker.sock"), filepath.Join(StateDir, "containerd", "containerd.sock"), filepath.Join(StateDir, "bin")
}

// Start runs dockerd and its containerd, waits until the daemon answers
// and creates the `kind` network. Only one daemon runs at a time on a
// machine: Start waits for another run's daemon to stop (ctx bounds the
// wait), and clears leftovers of a killed run first.
func Start(ctx context.Context, o Options) (_ *Daemon, err error) {
	if o.Logger == nil {
		o.Logger = discard{}
	}
	if o.DataRoot == "" {
		o.DataRoot = DefaultDataRoot()
	}
	engine, err := Installed()
	if err != nil {
		return nil, err
	}
	lock, err := acquire(ctx, o.Logger)
	if err != nil {
		return nil, err
	}
	d := &Daemon{engine: engine, dataRoot: o.DataRoot, log: o.Logger, lock: lock, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			d.Stop(context.WithoutCancel(ctx))
		}
	}()
	if err := cleanupLocked(ctx, o.Logger); err != nil {
		return nil, fmt.Errorf("clearing a killed run's docker daemon: %w", err)
	}
	sock, ctrdSock, binDir := paths()
	for _, dir := range []string{StateDir, binDir, filepath.Dir(ctrdSock), o.DataRoot} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, err
		}
	}
	if err := writeFiles(binDir, o.DataRoot, engine); err != nil {
		return nil, err
	}
	// Cleanup of a killed run must find mounts under a non-default root.
	if err := os.WriteFile(filepath.Join(StateDir, "data-root"), []byte(o.DataRoot+"\n"), 0o644); err != nil {
		return nil, err
	}
	env := append(os.Environ(), agent.LabEnv+"="+Tag)
	env = append(env, "PATH="+binDir+":"+os.Getenv("PATH"))

	ctrdLog, err := os.Create(filepath.Join(StateDir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	defer ctrdLog.Close()
	d.ctrd = exec.Command(engine.Containerd, "--config", filepath.Join(StateDir, "containerd.toml"))
	d.ctrd.Env, d.ctrd.Stdout, d.ctrd.Stderr = env, ctrdLog, ctrdLog
	// Its own process group: a Ctrl-C in the terminal must reach the
	// harness, which stops the daemon in order, not the daemon directly.
	d.ctrd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.ctrd.Start(); err != nil {
		return nil, fmt.Errorf("starting containerd: %w", err)
	}
	os.WriteFile(filepath.Join(StateDir, "containerd.pid"), []byte(strconv.Itoa(d.ctrd.Process.Pid)), 0o644)
	go d.ctrd.Wait()
	if err := waitSocket(ctx, ctrdSock, 30*time.Second); err != nil {
		return nil, fmt.Errorf("containerd did not open %s: %w (see %s)", ctrdSock, err, ctrdLog.Name())
	}

	dLog, err := os.Create(filepath.Join(StateDir, "dockerd.log"))
	if err != nil {
		return nil, err
	}
	defer dLog.Close()
	d.dockerd = exec.Command(engine.Dockerd, dockerdArgs(o.DataRoot)...)
	d.dockerd.Env, d.dockerd.Stdout, d.dockerd.Stderr = env, dLog, dLog
	d.dockerd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.dockerd.Start(); err != nil {
		return nil, fmt.Errorf("starting dockerd: %w", err)
	}
	go func() { d.dockerd.Wait(); close(d.exited) }()
	if err := d.waitReady(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("%w (see %s)", err, dLog.Name())
	}
	// A killed run's containers are still recorded in the data root, and
	// dockerd may even have restarted them (kind nodes restart on failure).
	if err := d.removeAll(ctx); err != nil {
		return nil, err
	}
	if err := d.ensureNetwork(ctx); err != nil {
		return nil, err
	}
	d.log.Logf("proxymodes: private docker daemon up on %s (data root %s; %s)", sock, o.DataRoot, engine.Source)
	return d, nil
}

// Installed returns the machine's container engine (LocalEngine) once it
// and the wrapper's jq are there, or the fix when they are not.
func Installed() (Engine, error) {
	e, ok := LocalEngine()
	if !ok {
		return e, errors.New("no container engine (dockerd, containerd, runc and a docker CLI beside dockerd): run `make kind-deps` (proxymodes preflight --install --kind), which installs Debian's docker.io, containerd and runc, or install Docker Engine")
	}
	if _, err := os.Stat("/usr/bin/jq"); err != nil {
		return e, errors.New("/usr/bin/jq missing: run `make kind-deps` or `apt-get install -y jq`")
	}
	return e, nil
}

func dockerdArgs(dataRoot string) []string {
	sock, ctrdSock, binDir := paths()
	return []string{
		"--config-file", filepath.Join(StateDir, "daemon.json"), // never /etc/docker/daemon.json
		"--data-root", dataRoot,
		"--exec-root", filepath.Join(StateDir, "exec"),
		"--pidfile", filepath.Join(StateDir, "dockerd.pid"),
		"-H", "unix://" + sock,
		"--containerd", ctrdSock,
		// The host namespace's rules and forwarding are not ours to touch.
		"--iptables=false", "--ip6tables=false", "--ip-forward=false",
		"--bip", addrplan.Docker0.String(),
		"--default-address-pool", "base=" + addrplan.DockerPools.String() + ",size=24",
		"--cgroup-parent", CgroupParent,
		"--add-runtime", "pm-runc=" + filepath.Join(binDir, "pm-runc"),
		"--default-runtime", "pm-runc",
		"--storage-driver", "overlay2",
	}
}

// runcWrapper drops CAP_SYS_RESOURCE from what runc is asked to grant:
// these VMs lack it in their bounding set, so any --privileged container
// (every kind node) fails with "unable to apply caps" otherwise.
const runcWrapper = `#!/bin/sh
# Written by proxymodes (harness/docker): strips CAP_SYS_RESOURCE, which
# this machine's bounding set lacks, from runc's container and exec specs.
strip() {
	[ -f "$1" ] || return 0
	jq -c "$2 |= (if . == null then . else with_entries(.value |= map(select(. != \"CAP_SYS_RESOURCE\"))) end)" "$1" >"$1.pm" && mv "$1.pm" "$1"
}
bundle= process= prev=
for a in "$@"; do
	case "$prev" in
	--bundle|-b) bundle=$a ;;
	--process|-p) process=$a ;;
	esac
	case "$a" in
	--bundle=*) bundle=${a#--bundle=} ;;
	--process=*) process=${a#--process=} ;;
	esac
	prev=$a
done
if [ -n "$bundle" ]; then strip "$bundle/config.json" .process.capabilities || exit 1; fi
if [ -n "$process" ]; then strip "$process" .capabilities || exit 1; fi
exec %s "$@"
`

func runcWrapperFor(e Engine) string { return fmt.Sprintf(runcWrapper, e.Runc) }

func writeFiles(binDir, dataRoot string, engine Engine) error {
	files := map[string]string{
		filepath.Join(binDir, "pm-runc"): runcWrapperFor(engine),
		// kind and scripts run `docker` from PATH; this one comes first.
		filepath.Join(StateDir, "daemon.json"): "{}\n",
		filepath.Join(StateDir, "containerd.toml"): fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
`, filepath.Join(dataRoot, "containerd"), filepath.Join(StateDir, "containerd", "state"),
			filepath.Join(StateDir, "containerd", "containerd.sock"), filepath.Join(StateDir, "containerd", "containerd.sock.ttrpc")),
	}
	for p, s := range files {
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			return err
		}
	}
	link := filepath.Join(binDir, "docker")
	os.Remove(link)
	return os.Symlink(engine.CLI, link)
}

func waitSocket(ctx context.Context, path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *Daemon) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-d.exited:
			return errors.New("dockerd exited while starting")
		default:
		}
		if _, err := d.Output(ctx, "version", "--format", "{{.Server.Version}}"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("dockerd did not answer within %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Daemon) ensureNetwork(ctx context.Context) error {
	out, err := d.Output(ctx, "network", "ls", "--filter", "name=^"+NetworkName+"$", "--format", "{{.Name}}")
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) == NetworkName {
		return nil
	}
	gw := addrplan.KindNet.Addr().Next()
	_, err = d.Output(ctx, "network", "create", NetworkName, "--driver", "bridge",
		"--subnet", addrplan.KindNet.String(), "--gateway", gw.String(),
		"-o", "com.docker.network.bridge.enable_ip_masquerade=false")
	return err
}

// Host is the DOCKER_HOST value that reaches this daemon.
func (d *Daemon) Host() string {
	sock, _, _ := paths()
	return "unix://" + sock
}

// BinDir holds a `docker` that is the daemon's own CLI; put it first in
// PATH for programs that run `docker` from PATH (kind does).
func (d *Daemon) BinDir() string {
	_, _, b := paths()
	return b
}

// Env is what a child process needs to use this daemon: DOCKER_HOST and a
// PATH whose `docker` matches the daemon.
func (d *Daemon) Env() []string {
	return []string{"DOCKER_HOST=" + d.Host(), "PATH=" + d.BinDir() + ":" + os.Getenv("PATH")}
}

// Setenv points this process at the daemon (for in-process users such as
// kind's Go API, which reads DOCKER_HOST and runs `docker` from PATH) and
// returns a function that restores the previous environment.
func (d *Daemon) Setenv() (restore func()) {
	oldHost, hadHost := os.LookupEnv("DOCKER_HOST")
	oldPath := os.Getenv("PATH")
	os.Setenv("DOCKER_HOST", d.Host())
	os.Setenv("PATH", d.BinDir()+":"+oldPath)
	return func() {
		if hadHost {
			os.Setenv("DOCKER_HOST", oldHost)
		} else {
			os.Unsetenv("DOCKER_HOST")
		}
		os.Setenv("PATH", oldPath)
	}
}

// Command prepares a docker CLI call against this daemon.
func (d *Daemon) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.engine.CLI, args...)
	cmd.Env = append(os.Environ(), d.Env()...)
	return cmd
}

// Output runs the docker CLI and returns its stdout; the error carries
// stderr.
func (d *Daemon) Output(ctx context.Context, args ...string) (string, error) {
	cmd := d.Command(ctx, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Run runs the docker CLI with its output going to w (nil: dropped, but
// stderr still lands in the error).
func (d *Daemon) Run(ctx context.Context, w io.Writer, args ...string) error {
	cmd := d.Command(ctx, args...)
	var stderr bytes.Buffer
	if w == nil {
		w = io.Discard
	}
	cmd.Stdout = w
	cmd.Stderr = io.MultiWriter(w, &tail{b: &stderr})
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// tail keeps the last 4 KiB written to it.
type tail struct{ b *bytes.Buffer }

func (t *tail) Write(p []byte) (int, error) {
	t.b.Write(p)
	if t.b.Len() > 4096 {
		rest := t.b.Bytes()[t.b.Len()-4096:]
		nb := bytes.NewBuffer(append([]byte(nil), rest...))
		*t.b = *nb
	}
	return len(p), nil
}

// HasImage reports whether the daemon holds ref.
func (d *Daemon) HasImage(ctx context.Context, ref string) bool {
	return d.Command(ctx, "image", "inspect", "--format", "{{.Id}}", ref).Run() == nil
}

// Stop removes every container (the daemon is private, so all of them are
// ours) and the `kind` network, stops dockerd and containerd, and removes
// what they leave: bridges, mounts, processes and the state directory.
// Images stay in the data root.
func (d *Daemon) Stop(ctx context.Context) error {
	if d.lock == nil {
		return nil
	}
	var errs []error
	if d.dockerd != nil && d.dockerd.Process != nil {
		select {
		case <-d.exited:
		default:
			errs = append(errs, d.removeAll(ctx))
		}
		stopProcess(d.dockerd.Process.Pid, d.exited, 30*time.Second)
	}
	if d.ctrd != nil && d.ctrd.Process != nil {
		d.ctrd.Process.Signal(syscall.SIGTERM)
	}
	errs = append(errs, cleanupLocked(ctx, d.log))
	release(d.lock)
	d.lock = nil
	return errors.Join(errs...)
}

func (d *Daemon) removeAll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := d.Output(ctx, "ps", "-aq")
	if err != nil {
		return err
	}
	var errs []error
	if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := d.Output(ctx, append([]string{"rm", "-f", "-v"}, ids...)...); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := d.Output(ctx, "network", "prune", "-f"); err != nil {
		errs = append(errs, err)
	}
	// The kind network has no containers left; prune removes it too.
	if _, err := d.Output(ctx, "volume", "prune", "-f"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func stopProcess(pid int, exited <-chan struct{}, grace time.Duration) {
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
}

// inPools reports whether a is one of the daemon's addresses.
func inPools(a netip.Addr) bool {
	return addrplan.DockerPools.Contains(a) || addrplan.Docker0.Contains(a)
}
