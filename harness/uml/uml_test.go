package uml_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/uml"
)

func TestMain(m *testing.M) {
	agent.Init() // the guest launcher is this binary re-executed
	os.Exit(m.Run())
}

func kernel(t *testing.T) *uml.Kernel {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root")
	}
	k, err := uml.Ensure(context.Background(), labtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGuestRunsHostCommandWithIPVS(t *testing.T) {
	k := kernel(t)
	start := time.Now()
	r, err := k.Run(context.Background(), uml.RunOptions{
		Argv:    []string{"/bin/sh", "-c", "uname -r; test -e /proc/net/ip_vs && echo ipvs; exit 7"},
		Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot, run, power-off cycle: %s", time.Since(start))
	lines := strings.Fields(r.Stdout)
	if len(lines) != 2 || lines[0] != k.Version || lines[1] != "ipvs" {
		t.Errorf("guest printed %q (stderr %q), want kernel %s and ipvs", r.Stdout, r.Stderr, k.Version)
	}
	if r.ExitCode != 7 {
		t.Errorf("exit code %d, want 7 (the command's own)", r.ExitCode)
	}
	if _, err := os.Stat(r.RunDir); !os.IsNotExist(err) {
		t.Errorf("run directory %s left behind", r.RunDir)
	}
}

// TestGuestDoesNotAutoloadModules: stage 2 loads every module the lab
// needs and then turns autoloading off, so that iptables calls do not each
// start a modprobe for bpfilter; the tables must still work.
func TestGuestDoesNotAutoloadModules(t *testing.T) {
	k := kernel(t)
	r, err := k.Run(context.Background(), uml.RunOptions{
		Argv:    []string{"/bin/sh", "-c", "printf '[%s]\\n' \"$(cat /proc/sys/kernel/modprobe)\"; iptables -t nat -A POSTROUTING -j ACCEPT && iptables-save -t nat | grep -c -- '-A POSTROUTING -j ACCEPT'"},
		Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(r.Stdout); len(got) != 2 || got[0] != "[]" || got[1] != "1" {
		t.Errorf("guest printed %q (stderr %q): want an empty modprobe path ([]) and a working nat table (1)", r.Stdout, r.Stderr)
	}
}

func TestRunTestInGuest(t *testing.T) {
	if uml.RunTestInGuest(t, 2*time.Minute) {
		return
	}
	// Inside the guest: the kernel must be the UML one, with IPVS.
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Fatalf("no ip_vs in the guest: %v", err)
	}
}

func TestTimeoutKillsGuest(t *testing.T) {
	k := kernel(t)
	_, err := k.Run(context.Background(), uml.RunOptions{Argv: []string{"/bin/sleep", "600"}, Timeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("want a timeout error, got %v", err)
	}
}
