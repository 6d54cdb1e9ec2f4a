package iptables

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// Interface is what the iptables mode needs from iptables: apply a restore
// batch and read the current nat and filter tables. Backend talks to the
// kernel through iptables-restore/-save; Fake models the tables in memory.
type Interface interface {
	// Restore applies data with iptables-restore --noflush: only chains
	// named in the input are flushed, everything else is kept.
	Restore(data []byte) error
	// Save returns iptables-save output for the nat and filter tables.
	Save() ([]byte, error)
}

// Variant selects the iptables binaries.
type Variant string

const (
	// VariantNFT uses iptables-nft-restore/-save (nf_tables kernel API).
	VariantNFT Variant = "nft"
	// VariantLegacy uses iptables-legacy-restore/-save (x_tables kernel API).
	VariantLegacy Variant = "legacy"
	// VariantAuto picks whatever the system's "iptables" binary is.
	VariantAuto Variant = "auto"
)

// Variants lists the values ParseVariant accepts.
var Variants = []Variant{VariantAuto, VariantNFT, VariantLegacy}

// ParseVariant checks a --iptables-backend value.
func ParseVariant(s string) (Variant, error) {
	for _, v := range Variants {
		if string(v) == s {
			return v, nil
		}
	}
	return "", fmt.Errorf("unknown iptables backend %q: valid values are %v", s, Variants)
}

// EnvVariant is read by Detect when the variant is auto, so a lab can force
// one without changing flags (UML guests only have working legacy iptables).
const EnvVariant = "PROXIER_IPTABLES"

// Detect resolves VariantAuto: $PROXIER_IPTABLES if set, else the mode the
// system "iptables" binary reports ("iptables v1.8.9 (nf_tables)"), else
// nft if its binary exists, else legacy.
func Detect(ex Exec, v Variant) (Variant, error) {
	if v != VariantAuto && v != "" {
		return v, nil
	}
	if env := os.Getenv(EnvVariant); env != "" {
		v, err := ParseVariant(env)
		if err != nil || v == VariantAuto {
			return "", fmt.Errorf("$%s=%q: want %q or %q", EnvVariant, env, VariantNFT, VariantLegacy)
		}
		return v, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if out, err := ex.Run(ctx, "iptables", []string{"--version"}, nil); err == nil {
		switch {
		case strings.Contains(string(out), "nf_tables"):
			return VariantNFT, nil
		case strings.Contains(string(out), "legacy"):
			return VariantLegacy, nil
		}
	}
	if _, err := ex.LookPath("iptables-nft-restore"); err == nil {
		return VariantNFT, nil
	}
	if _, err := ex.LookPath("iptables-legacy-restore"); err == nil {
		return VariantLegacy, nil
	}
	return "", fmt.Errorf("no iptables found: install iptables (nft or legacy) or pass --iptables-backend")
}

// Backend runs the real iptables-restore and iptables-save of one variant.
type Backend struct {
	exec    Exec
	variant Variant
	// Timeout bounds each command; NewBackend sets 10 minutes.
	Timeout time.Duration
}

// NewBackend returns the real backend for a resolved variant (not auto).
func NewBackend(ex Exec, v Variant) (*Backend, error) {
	if v != VariantNFT && v != VariantLegacy {
		return nil, fmt.Errorf("iptables backend must be %q or %q, got %q (call Detect first)", VariantNFT, VariantLegacy, v)
	}
	if ex == nil {
		ex = OSExec{}
	}
	return &Backend{exec: ex, variant: v, Timeout: commandTimeout}, nil
}

// Variant returns the variant this backend runs.
func (b *Backend) Variant() Variant { return b.variant }

func (b *Backend) binary(tool string) string {
	return fmt.Sprintf("iptables-%s-%s", b.variant, tool)
}

// RestoreArgs returns the iptables-restore arguments used for a batch;
// extra arguments (such as --test) are appended.
func (b *Backend) RestoreArgs(extra ...string) []string {
	args := []string{"--noflush"}
	if b.variant == VariantLegacy {
		// Legacy serialises writers with the xtables lock; wait for it
		// rather than failing at once. nft does not take the lock.
		args = append(args, "-w", "5")
	}
	return append(args, extra...)
}

// Restore implements Interface.
func (b *Backend) Restore(data []byte) error {
	return b.restore(data)
}

// Test checks a batch with iptables-restore --test without applying it.
func (b *Backend) Test(data []byte) error {
	return b.restore(data, "--test")
}

func (b *Backend) restore(data []byte, extra ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), b.Timeout)
	defer cancel()
	_, err := b.exec.Run(ctx, b.binary("restore"), b.RestoreArgs(extra...), data)
	return err
}

// Save implements Interface.
func (b *Backend) Save() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.Timeout)
	defer cancel()
	var out []byte
	for _, table := range []string{tableFilter, tableNAT} {
		data, err := b.exec.Run(ctx, b.binary("save"), []string{"-t", table}, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, data...)
	}
	return out, nil
}
