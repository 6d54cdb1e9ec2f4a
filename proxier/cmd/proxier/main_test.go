package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
	"github.com/proxymodes/proxymodes/proxier/ipvs"
	"github.com/proxymodes/proxymodes/proxier/nftables"
)

func TestUnknownModeListsValidModes(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--proxy-mode=kernelspace"}, &out); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	for _, m := range Modes {
		if !strings.Contains(out.String(), m) {
			t.Errorf("error %q does not list mode %s", out.String(), m)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--min-sync-period=1m", "--sync-period=1s"},
		{"--no-such-flag"},
		{"stray-argument"},
	} {
		var out bytes.Buffer
		if code := run(args, &out); code == 0 {
			t.Errorf("%v accepted", args)
		}
	}
	var out bytes.Buffer
	_, err := buildMode(options{mode: "iptables", clusterCIDR: "not-a-cidr", iptablesBackend: "nft"}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "--cluster-cidr") {
		t.Errorf("bad --cluster-cidr: %v", err)
	}
	_ = out
}

// TestCleanupFlag creates rules with both iptables flavours in a scratch
// network namespace, then runs "proxier --cleanup" there.
func TestCleanupFlag(t *testing.T) {
	netnstest.Run(t, iptables.OSExec{}, func(ex *netnstest.Guarded) {
		for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
			be, err := iptables.NewBackend(ex, v)
			if err != nil {
				t.Error(err)
				return
			}
			p, err := iptables.New(iptables.Config{Backend: be})
			if err != nil {
				t.Error(err)
				return
			}
			if err := p.Sync(testsnap.Synthetic(3, 2), fullChanges()); err != nil {
				t.Errorf("%s: sync: %v", v, err)
				return
			}
		}
		// And the nftables mode's table, built as --proxy-mode=nftables
		// builds it.
		mode, err := buildMode(options{mode: "nftables", clusterCIDR: "198.18.64.0/18"}, nil, ex)
		if err != nil {
			t.Error(err)
			return
		}
		if err := mode.Sync(testsnap.Synthetic(3, 2), fullChanges()); err != nil || mode.Name() != "nftables" {
			t.Errorf("nftables mode %q: sync: %v", mode.Name(), err)
			return
		}
		saved := newExec
		newExec = func() iptables.Exec { return ex }
		defer func() { newExec = saved }()
		var out bytes.Buffer
		if code := run([]string{"--cleanup"}, &out); code != 0 {
			t.Errorf("--cleanup exit %d: %s", code, out.String())
		}
		if tables, err := exec.Command("nft", "list", "tables").CombinedOutput(); err != nil || strings.Contains(string(tables), nftables.TableName) {
			t.Errorf("nftables after --cleanup: %s (%v)", tables, err)
		}
		for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
			be, _ := iptables.NewBackend(ex, v)
			data, err := be.Save()
			if err != nil {
				t.Error(err)
				continue
			}
			if strings.Contains(string(data), iptables.ChainPrefix) {
				t.Errorf("%s: rules left after --cleanup:\n%s", v, data)
			}
		}
	})
}

func TestInitOnly(t *testing.T) {
	saved := newSysctl
	defer func() { newSysctl = saved }()
	for _, tc := range []struct {
		mode     string
		code     int
		wantSets bool
	}{
		{"ipvs", 0, true},
		{"iptables", 0, false},
		{"userspace", 0, false},
		{"nftables", 0, false},
		{"kernelspace", 1, false},
	} {
		fake := ipvs.NewFakeSysctl()
		newSysctl = func() ipvs.Sysctl { return fake }
		var out bytes.Buffer
		if code := run([]string{"--init-only", "--proxy-mode=" + tc.mode}, &out); code != tc.code {
			t.Errorf("%s: exit code %d, want %d: %s", tc.mode, code, tc.code, out.String())
		}
		// The running ipvs proxier only reads these when they are right;
		// --init-only must leave exactly that state behind.
		if tc.wantSets {
			if err := ipvs.EnsureSysctls(readOnlySysctl{fake}); err != nil {
				t.Errorf("%s: after --init-only the proxier would still need to write: %v", tc.mode, err)
			}
			if fake.Values["net/ipv4/vs/conntrack"] != "1" {
				t.Errorf("%s: net.ipv4.vs.conntrack not set: %v", tc.mode, fake.Values)
			}
		} else if len(fake.Values) != 0 {
			t.Errorf("%s: --init-only wrote sysctls it does not need: %v", tc.mode, fake.Values)
		}
	}
}

// readOnlySysctl fails every write, as /proc/sys does in an unprivileged
// container.
type readOnlySysctl struct{ ipvs.Sysctl }

func (readOnlySysctl) Set(name, _ string) error { return fmt.Errorf("%s: %w", name, syscall.EROFS) }

func TestEnsureSysctlsReadOnlyNamesTheFix(t *testing.T) {
	err := ipvs.EnsureSysctls(readOnlySysctl{ipvs.NewFakeSysctl()})
	if err == nil || !strings.Contains(err.Error(), "--init-only") {
		t.Errorf("error %v does not point to --init-only", err)
	}
}
