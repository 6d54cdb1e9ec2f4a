package compare

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/harness/golden"
)

func TestCompare(t *testing.T) {
	var b bytes.Buffer
	if err := Compare(&b, "testdata/old.txt", "testdata/new.txt"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "compare.golden", b.Bytes())
	out := b.String()
	for _, want := range []string{
		"proxymodes: 1111111 → 2222222",
		"uml-kernel: 6.1.176 (new only)",
		"~ (p=1.000 n=1)", // one sample per side: reported, not failed
		"only in old",
		"only in new",
		"geomean",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestCompareDirectory(t *testing.T) {
	dir := t.TempDir()
	old, err := os.ReadFile("testdata/old.txt")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.txt"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Compare(&b, dir, "testdata/new.txt"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "old: "+dir+"\n") {
		t.Errorf("output does not name the old directory:\n%s", b.String())
	}
}

func TestCompareDifferentKernels(t *testing.T) {
	var b bytes.Buffer
	if err := Compare(&b, "testdata/old.txt", "testdata/other-kernel.txt"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "other-kernel.golden", b.Bytes())
	if !strings.Contains(b.String(), "No benchmark is in both sets") {
		t.Errorf("output does not say that no row matched:\n%s", b.String())
	}
}

// A set from before points carried their iptables backend still matches
// a newer one: its host rows as the set's "iptables" line says, its UML
// rows as legacy, the guest's only backend.
func TestCompareOlderSetWithoutBackends(t *testing.T) {
	var b bytes.Buffer
	if err := Compare(&b, "testdata/before-backends.txt", "testdata/backends.txt"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "backends.golden", b.Bytes())
	out := b.String()
	for _, want := range []string{
		"note: testdata/before-backends.txt names its iptables rows without a backend",
		"kernel=host-6.18.5/mode=iptables/backend=nft/impl=reference/services=1000/endpoints=2 ",
		"kernel=uml-6.1.176/mode=iptables/backend=legacy/impl=reference/services=1000/endpoints=2 ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "backend=nft") && strings.Contains(line, "only in") ||
			strings.Contains(line, "uml-6.1.176") && strings.Contains(line, "only in") {
			t.Errorf("a row of the older set was not matched: %s", line)
		}
	}
	if !strings.Contains(out, "backend=legacy/impl=reference/services=1000/endpoints=2 ") || strings.Count(out, "only in new") != 2 {
		t.Errorf("want the host legacy row and nftables only in new:\n%s", out)
	}
}

func TestWithBackend(t *testing.T) {
	for _, tc := range []struct{ row, host, want string }{
		{"kernel=host-6.18.5/mode=iptables/impl=reference/services=1/endpoints=2", "nft", "kernel=host-6.18.5/mode=iptables/backend=nft/impl=reference/services=1/endpoints=2"},
		{"kernel=host-6.18.5/mode=iptables/impl=reference/services=1/endpoints=2", "", "kernel=host-6.18.5/mode=iptables/impl=reference/services=1/endpoints=2"},
		{"kernel=uml-6.1.176/mode=iptables/impl=reference/services=1/endpoints=2", "nft", "kernel=uml-6.1.176/mode=iptables/backend=legacy/impl=reference/services=1/endpoints=2"},
		{"kernel=host-6.18.5/mode=iptables/backend=legacy/impl=reference/services=1/endpoints=2", "nft", "kernel=host-6.18.5/mode=iptables/backend=legacy/impl=reference/services=1/endpoints=2"},
		{"kernel=host-6.18.5/mode=ipvs/impl=reference/services=1/endpoints=2", "nft", "kernel=host-6.18.5/mode=ipvs/impl=reference/services=1/endpoints=2"},
	} {
		if got := withBackend(tc.row, tc.host); got != tc.want {
			t.Errorf("withBackend(%s, %q) = %s, want %s", tc.row, tc.host, got, tc.want)
		}
	}
}

func TestCompareErrors(t *testing.T) {
	empty := t.TempDir()
	notBench := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(notBench, []byte("just some notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ old, want string }{
		{empty, "has no bench.txt: is it a result set? (it should hold bench.txt and results.json)"},
		{filepath.Join(empty, "missing"), "does not exist: give a result set directory"},
		{notBench, "has no benchmark lines"},
	} {
		err := Compare(new(bytes.Buffer), tc.old, "testdata/new.txt")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Compare(%s) = %v, want an error containing %q", tc.old, err, tc.want)
		}
	}
}
