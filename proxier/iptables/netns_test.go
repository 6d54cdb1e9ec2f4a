package iptables

import (
	"fmt"
	"testing"

	"github.com/proxymodes/proxymodes/proxier/internal/netnstest"
)

// inScratchNetns runs fn in a fresh network namespace with an Exec that
// refuses to run commands in the host namespace. See netnstest.Run.
func inScratchNetns(t *testing.T, fn func(ex Exec)) {
	t.Helper()
	netnstest.Run(t, OSExec{}, func(g *netnstest.Guarded) { fn(g) })
}

// realVariants are the iptables flavours tested against the kernel.
var realVariants = []Variant{VariantNFT, VariantLegacy}

func requireVariant(t *testing.T, v Variant) {
	t.Helper()
	if _, err := (OSExec{}).LookPath(fmt.Sprintf("iptables-%s-restore", v)); err != nil {
		t.Skipf("iptables-%s-restore not installed", v)
	}
}
