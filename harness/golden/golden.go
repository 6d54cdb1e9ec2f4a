// Package golden compares test output with files in testdata/, and
// rewrites them when the test binary runs with -update. The proxier's rule
// texts and the benchmark result formats are checked this way.
package golden

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// Check compares got with testdata/<file>.
func Check(t *testing.T, file string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", file)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (rerun this test with -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from %s (rerun with -update if the change is intended)\n--- got:\n%s\n--- want:\n%s", t.Name(), path, got, want)
	}
}
