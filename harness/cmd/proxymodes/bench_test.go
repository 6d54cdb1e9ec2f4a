package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/harness/cluster/local"
)

// --backend takes one backend or both; the default is the host's own
// iptables, and the default modes include nftables.
func TestBenchBackendFlag(t *testing.T) {
	c, out, err := benchConfig([]string{"--backend", "legacy,nft", "--modes", "iptables,nftables", "--out", "/tmp/x"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Backends, []string{"legacy", "nft"}) || !slices.Equal(c.Modes, []string{"iptables", "nftables"}) || out != "/tmp/x" {
		t.Errorf("backends %q, modes %q, out %q", c.Backends, c.Modes, out)
	}
	c, _, err = benchConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backends) != 0 || !slices.Contains(c.Modes, "nftables") {
		t.Errorf("defaults: backends %q (want none: the host's iptables), modes %q (want nftables among them)", c.Backends, c.Modes)
	}
	_, _, err = benchConfig([]string{"--backend", "iptables-nft"})
	if err == nil || !strings.Contains(err.Error(), `--backend "iptables-nft": use legacy, nft, or both (--backend legacy,nft)`) {
		t.Errorf("--backend iptables-nft: %v, want an error naming the values", err)
	}
}

// The lab's name comes from --lab, else $PROXYMODES_LAB_NAME (as for the
// suites), else the sweep's default.
func TestBenchLabName(t *testing.T) {
	t.Setenv(local.EnvLabName, "")
	if c, _, _ := benchConfig(nil); c.LabName != "bench" {
		t.Errorf("default lab %q, want bench", c.LabName)
	}
	t.Setenv(local.EnvLabName, "hbench")
	if c, _, _ := benchConfig(nil); c.LabName != "hbench" {
		t.Errorf("lab with $%s=hbench: %q", local.EnvLabName, c.LabName)
	}
	if c, _, _ := benchConfig([]string{"--lab", "b2"}); c.LabName != "b2" {
		t.Errorf("--lab b2: %q", c.LabName)
	}
}
