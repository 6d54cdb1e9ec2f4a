package docker_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/docker"
	"github.com/proxymodes/proxymodes/harness/labtest"
)

func TestMain(m *testing.M) { os.Exit(labtest.Run(m)) }

const testImage = "proxymodes/test-busybox:1"

// need skips unless this machine can run the daemon.
func need(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := docker.Installed(); err != nil {
		t.Skip(err)
	}
}

func start(t *testing.T, ctx context.Context, log docker.Logger) *docker.Daemon {
	t.Helper()
	d, err := docker.Start(ctx, docker.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	unreg := labtest.OnInterrupt(d.Stop)
	t.Cleanup(func() { unreg(); d.Stop(context.Background()) })
	if d.HasImage(ctx, testImage) {
		return d
	}
	if err := d.Import(ctx, testImage, []docker.File{
		{Path: "/bin/busybox", Src: "/bin/busybox", Mode: 0o755},
		{Path: "/bin/sh", Link: "busybox"},
		{Path: "/tmp", Mode: 0o1777 | os.ModeSticky},
	}, `ENV PATH=/bin`); err != nil {
		t.Fatal(err)
	}
	return d
}

// hostState reads (never writes) the host namespace's rules and the
// forwarding switches Docker is known to flip.
func hostState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(labtest.HostRules(t, "ip6tables-legacy-save", "ip6tables-nft-save"))
	for _, k := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding",
		"/proc/sys/net/bridge/bridge-nf-call-iptables"} {
		v, err := os.ReadFile(k)
		fmt.Fprintf(&b, "%s=%s(%v)\n", k, strings.TrimSpace(string(v)), err)
	}
	return b.String()
}

func TestDaemonLeavesHostAlone(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // includes waiting for another run's daemon
	defer cancel()
	before := hostState(t)
	d := start(t, ctx, labtest.Logger(t))
	// A privileged container on the kind network with a published port
	// exercises the runc wrapper, the bridge and docker-proxy.
	id, err := d.Output(ctx, "run", "-d", "--privileged", "--network", docker.NetworkName,
		"-p", "127.0.0.1::8080", testImage, "busybox", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	id = strings.TrimSpace(id)
	out, err := d.Output(ctx, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}} {{.State.Running}}", id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "198.18.232.") || !strings.Contains(out, "true") {
		t.Fatalf("container on the kind network: got %q, want a running container at 198.18.232.x", out)
	}
	if during := hostState(t); during != before {
		t.Fatalf("the host namespace changed while the daemon ran:\nbefore:\n%s\nduring:\n%s", before, during)
	}
	if len(docker.Leftovers()) == 0 {
		t.Fatal("Leftovers sees nothing of a running daemon, so it cannot prove a clean stop")
	}
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if left := docker.Leftovers(); len(left) > 0 {
		t.Fatalf("after Stop: %v", left)
	}
	if after := hostState(t); after != before {
		t.Fatalf("the host namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestImagesSurviveRestart(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // includes waiting for another run's daemon
	defer cancel()
	d := start(t, ctx, labtest.Logger(t))
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := docker.Start(ctx, docker.Options{Logger: labtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop(ctx)
	if !d.HasImage(ctx, testImage) {
		t.Fatalf("%s is gone after a restart: the data root is not persistent", testImage)
	}
}

const holderRole = "test-docker-holder"

func init() { agent.Register(holderRole, holderMain) }

// holderMain starts a daemon with a running container and waits to be
// killed, as a run that dies without cleaning up.
func holderMain([]string) int {
	ctx := context.Background()
	d, err := docker.Start(ctx, docker.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := d.Import(ctx, testImage+"-holder", []docker.File{{Path: "/bin/busybox", Src: "/bin/busybox", Mode: 0o755}}, `ENV PATH=/bin`); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := d.Output(ctx, "run", "-d", "--privileged", "--network", docker.NetworkName, testImage+"-holder", "busybox", "sleep", "600"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("up")
	select {}
}

func TestKilledRunIsCleanedUp(t *testing.T) {
	need(t)
	cmd, err := agent.Command("", holderRole)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
	}()
	select {
	case l := <-line:
		if l != "up" {
			t.Fatalf("holder failed (printed %q)", l)
		}
	case <-time.After(30 * time.Minute):
		cmd.Process.Kill()
		t.Fatal("holder not up after 30 minutes")
	}
	cmd.Process.Kill()
	cmd.Wait()
	left := docker.Leftovers()
	var container bool
	for _, l := range left {
		container = container || strings.HasPrefix(l, "container process")
	}
	if !container {
		t.Fatalf("a SIGKILLed run left no container process, so this test proves nothing: %v", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := docker.Cleanup(ctx, labtest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	if left := docker.Leftovers(); len(left) > 0 {
		if lockedByOther(t) {
			t.Skipf("another run started its daemon as soon as the holder died (it cleared the holder's leftovers itself); what is left is that run's: %v", left)
		}
		t.Fatalf("after Cleanup: %v", left)
	}
}

func lockedByOther(t *testing.T) bool {
	f, err := os.Open(docker.LockPath)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
