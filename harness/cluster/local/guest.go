package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
	"github.com/proxymodes/proxymodes/harness/logs"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/uml"
)

// guest is a data plane inside a user-mode Linux guest. The control plane
// stays on the host (Go runs 20-50x slower in UML); the guest's only
// network is a tap link in a lab namespace, which reaches the API server
// over a management veth and masquerades there, so the host needs no route
// into the guest.
type guest struct {
	*plane.Remote
	kernel  *uml.Kernel
	started *uml.Started
	ns      string

	statsMu sync.Mutex
	lastAt  time.Time
	lastCPU time.Duration
}

const (
	guestUplink = "up0"  // in the guest's lab namespace, towards the host
	guestTap    = "tap0" // in the guest's lab namespace, towards the guest
)

func startGuest(ctx context.Context, l *Lab) (*guest, error) {
	k, err := uml.Ensure(ctx, l.log)
	if err != nil {
		return nil, err
	}
	ns := l.prefix + "uml"
	if err := netlab.CreateNS(ns); err != nil {
		return nil, err
	}
	// The host end of block 0 is the API server's address, as in a
	// host-kernel lab.
	if err := netlab.Veth(netlab.End{NS: ns, Name: guestUplink, Addr: addrplan.MgmtNode(0)},
		netlab.End{NS: netlab.HostNS, Name: l.prefix + "u", Addr: addrplan.MgmtHost(0)}); err != nil {
		return nil, err
	}
	err = netlab.Do(ns, func() error {
		// A tap device must be created from inside its namespace.
		return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: guestTap}, Mode: netlink.TUNTAP_MODE_TAP})
	})
	if err != nil {
		return nil, fmt.Errorf("tap in %s: %w", ns, err)
	}
	if err := netlab.LinkUp(ns, guestTap, plane.UplinkHost()); err != nil {
		return nil, err
	}
	// Replies from the API server come back de-masqueraded to the nodes'
	// management addresses, which live behind the guest.
	if err := netlab.Route(ns, addrplan.Mgmt, plane.UplinkGuest().Addr(), ""); err != nil {
		return nil, err
	}
	if err := netlab.Sysctl(ns, "net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	err = plane.IPTablesIn(ns, func(ipt *iptables.IPTables) error {
		return ipt.Append("nat", "POSTROUTING", "-o", guestUplink, "-m", "comment", "--comment", "proxymodes guest uplink", "-j", "MASQUERADE")
	})
	if err != nil {
		return nil, fmt.Errorf("masquerade in %s: %w", ns, err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	s, err := k.Start(ctx, uml.RunOptions{
		Argv:  []string{self},
		Env:   agent.Env(l.opts.Name, plane.AgentRole),
		NetNS: ns, Tap: guestTap, Lab: l.opts.Name,
		MemMB: 2048,
	})
	if err != nil {
		return nil, err
	}
	g := &guest{Remote: plane.NewRemote(ns), kernel: k, started: s, ns: ns}
	if err := g.waitAgent(ctx, 2*time.Minute); err != nil {
		g.kill()
		return nil, err
	}
	l.log.Logf("lab %s: %s booted, agent up in %s", l.opts.Name, k, time.Since(start).Round(time.Millisecond))
	return g, nil
}

func (g *guest) waitAgent(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := g.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		exited := false
		select {
		case <-g.started.Done():
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			return fmt.Errorf("the lab agent in the UML guest did not come up (%v); its log:\n%s\nconsole:\n%s", err,
				logs.Tail(filepath.Join(g.started.RunDir(), "stderr"), 20), logs.Tail(filepath.Join(g.started.RunDir(), "console.log"), 10))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Kernel names the guest kernel.
func (g *guest) Kernel() string { return g.kernel.String() }

// stateDir is where the guest writes logs: the run directory is shared.
func (g *guest) stateDir() string { return filepath.Join(g.started.RunDir(), "state") }

// share copies a host file into the shared run directory and returns the
// path the guest sees it at (the same path).
func (g *guest) share(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(g.started.RunDir(), filepath.Base(path))
	return dst, os.WriteFile(dst, b, 0o600)
}

// Close stops the agent's processes, lets the guest power off and removes
// its run directory.
func (g *guest) Close() error {
	err := g.Remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, werr := g.started.Wait(ctx, 30*time.Second); werr != nil && err == nil {
		err = werr
	}
	g.kill()
	return err
}

func (g *guest) kill() {
	g.started.Kill()
	g.started.Remove()
}

// stats is one line for a run's sync log: the guest's host CPU use since
// the previous call (a one-vCPU guest saturates at 100%) and its clock's
// offset from the host's.
func (g *guest) stats(ctx context.Context) string {
	now, cpu := time.Now(), g.started.CPU()
	g.statsMu.Lock()
	var use string
	if !g.lastAt.IsZero() {
		use = fmt.Sprintf("cpu %.0f%% of one core over %s", 100*float64(cpu-g.lastCPU)/float64(now.Sub(g.lastAt)), now.Sub(g.lastAt).Round(100*time.Millisecond))
	} else {
		use = fmt.Sprintf("cpu %s so far", cpu.Round(time.Second))
	}
	g.lastAt, g.lastCPU = now, cpu
	g.statsMu.Unlock()
	off, rtt, err := g.ClockOffset(ctx)
	if err != nil {
		return use + "; clock: " + err.Error()
	}
	return fmt.Sprintf("%s; clock %+.1fms from the host's (+/- %.1fms)", use, float64(off)/1e6, float64(rtt)/2e6)
}

// GuestStats is the guest's CPU use and clock offset, or "" when the
// nodes run in the host kernel.
func (l *Lab) GuestStats(ctx context.Context) string {
	if g, ok := l.plane.(*guest); ok {
		return g.stats(ctx)
	}
	return ""
}
