package kube

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// shellFunc is a Shell whose Run is fn; Start is not used here.
type shellFunc func(node string, argv []string) (string, error)

func (f shellFunc) Run(_ context.Context, node string, _ []string, argv ...string) (string, error) {
	return f(node, argv)
}

func (f shellFunc) Start(string, []string, ...string) (Process, error) {
	return nil, errors.New("not in this test")
}

func TestIPTablesFailsWhenNoSaverRan(t *testing.T) {
	c := New(Config{Shell: shellFunc(func(string, []string) (string, error) {
		return "", errors.New("exec: not found")
	})})
	out, err := c.IPTables(context.Background(), "node-1")
	if err == nil {
		t.Fatalf("every saver failed, yet IPTables returned %q and no error: a cleanup check would read that as no rules left", out)
	}
	if !strings.Contains(err.Error(), "node-1") {
		t.Errorf("error %q does not name the node", err)
	}
}

func TestIPTablesToleratesAMissingFlavour(t *testing.T) {
	t.Setenv("PROXIER_IPTABLES", "") // both flavours are read
	c := New(Config{Shell: shellFunc(func(_ string, argv []string) (string, error) {
		if argv[0] == "iptables-legacy-save" {
			return "", errors.New("exec: not found")
		}
		return "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n", nil
	})})
	out, err := c.IPTables(context.Background(), "node-1/pod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "KUBE-SERVICES") {
		t.Errorf("dump lost the working flavour's rules: %q", out)
	}
}
