package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
	"github.com/proxymodes/proxymodes/proxier/internal/testsnap"
	"github.com/proxymodes/proxymodes/proxier/iptables"
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
		saved := newExec
		newExec = func() iptables.Exec { return ex }
		defer func() { newExec = saved }()
		var out bytes.Buffer
		if code := run([]string{"--cleanup"}, &out); code != 0 {
			t.Errorf("--cleanup exit %d: %s", code, out.String())
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
