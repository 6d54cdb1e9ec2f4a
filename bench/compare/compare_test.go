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
