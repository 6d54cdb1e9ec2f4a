package iptables

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// recordingExec records commands instead of running them.
type recordingExec struct {
	cmds    []string
	stdin   [][]byte
	outputs map[string]string // command line -> stdout
	paths   map[string]bool
}

func (r *recordingExec) Run(_ context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	line := strings.TrimSpace(name + " " + strings.Join(args, " "))
	r.cmds = append(r.cmds, line)
	r.stdin = append(r.stdin, stdin)
	if out, ok := r.outputs[line]; ok {
		return []byte(out), nil
	}
	return nil, fmt.Errorf("%s: not found", name)
}

func (r *recordingExec) LookPath(name string) (string, error) {
	if r.paths[name] {
		return "/usr/sbin/" + name, nil
	}
	return "", fmt.Errorf("%s not found", name)
}

func TestBackendCommandLines(t *testing.T) {
	for _, tc := range []struct {
		v       Variant
		restore string
	}{
		{VariantNFT, "iptables-nft-restore --noflush"},
		{VariantLegacy, "iptables-legacy-restore --noflush -w 5"},
	} {
		ex := &recordingExec{outputs: map[string]string{
			tc.restore: "",
			fmt.Sprintf("iptables-%s-save -t filter", tc.v): "*filter\nCOMMIT\n",
			fmt.Sprintf("iptables-%s-save -t nat", tc.v):    "*nat\nCOMMIT\n",
		}}
		b, err := NewBackend(ex, tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Restore([]byte("*nat\nCOMMIT\n")); err != nil {
			t.Errorf("%s: %v", tc.v, err)
		}
		if out, err := b.Save(); err != nil || string(out) != "*filter\nCOMMIT\n*nat\nCOMMIT\n" {
			t.Errorf("%s: save %q %v", tc.v, out, err)
		}
		if ex.cmds[0] != tc.restore || string(ex.stdin[0]) != "*nat\nCOMMIT\n" {
			t.Errorf("%s: ran %q with %q", tc.v, ex.cmds[0], ex.stdin[0])
		}
	}
	if _, err := NewBackend(&recordingExec{}, VariantAuto); err == nil {
		t.Error("NewBackend accepted auto")
	}
}

func TestDetect(t *testing.T) {
	t.Setenv(EnvVariant, "")
	ex := &recordingExec{outputs: map[string]string{"iptables --version": "iptables v1.8.9 (legacy)\n"}}
	if v, err := Detect(ex, VariantAuto); err != nil || v != VariantLegacy {
		t.Errorf("legacy system: %v %v", v, err)
	}
	ex = &recordingExec{outputs: map[string]string{"iptables --version": "iptables v1.8.9 (nf_tables)\n"}}
	if v, _ := Detect(ex, VariantAuto); v != VariantNFT {
		t.Errorf("nft system: %v", v)
	}
	ex = &recordingExec{paths: map[string]bool{"iptables-legacy-restore": true}}
	if v, _ := Detect(ex, VariantAuto); v != VariantLegacy {
		t.Errorf("only legacy installed: %v", v)
	}
	if v, _ := Detect(ex, VariantNFT); v != VariantNFT {
		t.Errorf("explicit variant not kept: %v", v)
	}
	t.Setenv(EnvVariant, "legacy")
	ex = &recordingExec{outputs: map[string]string{"iptables --version": "iptables v1.8.9 (nf_tables)\n"}}
	if v, _ := Detect(ex, VariantAuto); v != VariantLegacy {
		t.Errorf("$%s=legacy ignored: %v", EnvVariant, v)
	}
	t.Setenv(EnvVariant, "bogus")
	if _, err := Detect(ex, VariantAuto); err == nil {
		t.Errorf("bad $%s accepted", EnvVariant)
	}
	if _, err := ParseVariant("iptables"); err == nil || !strings.Contains(err.Error(), "legacy") {
		t.Errorf("ParseVariant error should list valid values: %v", err)
	}
}

func TestFakeRejectsWhatIptablesWould(t *testing.T) {
	for name, batch := range map[string]string{
		"jump to missing chain": "*nat\n:PM-A - [0:0]\n-A PM-A -j PM-B\nCOMMIT\n",
		"delete referenced":     "*nat\n:PM-A - [0:0]\n:PM-B - [0:0]\n-A PM-A -j PM-B\n-X PM-B\nCOMMIT\n",
		"delete non-empty":      "*nat\n:PM-A - [0:0]\n-A PM-A -j ACCEPT\n-X PM-A\nCOMMIT\n",
		"REJECT in nat":         "*nat\n:PM-A - [0:0]\n-A PM-A -j REJECT\nCOMMIT\n",
		"DNAT in filter":        "*filter\n:PM-A - [0:0]\n-A PM-A -j DNAT --to-destination 198.18.64.1:80\nCOMMIT\n",
		"long chain name":       "*nat\n:PM-SVC-THISNAMEISWAYTOOLONGFORIPTABLES - [0:0]\nCOMMIT\n",
		"unknown table":         "*mangle\nCOMMIT\n",
		"missing COMMIT":        "*nat\n:PM-A - [0:0]\n",
		"delete absent rule":    "*nat\n-D PREROUTING -j ACCEPT\nCOMMIT\n",
		"unmodelled option":     "*nat\n:PM-A - [0:0]\n-A PM-A --frobnicate 1 -j ACCEPT\nCOMMIT\n",
	} {
		f := NewFake()
		before := f.Dump()
		if err := f.Restore([]byte(batch)); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if f.Dump() != before {
			t.Errorf("%s: a failed batch changed state", name)
		}
	}
}
