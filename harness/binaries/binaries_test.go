package binaries

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCheckoutKeyMatchesMakefile: the Makefile puts the CLI where the Go
// side puts the other commands, so both must derive one key from a path.
func TestCheckoutKeyMatchesMakefile(t *testing.T) {
	const root = "/work/some checkout"
	out, err := exec.Command("sh", "-c", `printf %s "$1" | sha256sum | cut -c1-12`, "sh", root).Output()
	if err != nil {
		t.Fatalf("sha256sum: %v", err)
	}
	if got, want := CheckoutKey(root), strings.TrimSpace(string(out)); got != want {
		t.Errorf("CheckoutKey(%q) = %s, the Makefile's recipe gives %s", root, got, want)
	}
	if CheckoutKey("/a") == CheckoutKey("/b") {
		t.Error("two checkouts share a key")
	}
}
