package uml

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// InGuestEnv is set in the environment of test binaries re-run in a guest.
const InGuestEnv = "PROXYMODES_IN_UML"

// InGuest reports whether this process runs inside a guest started by
// RunTestInGuest.
func InGuest() bool { return os.Getenv(InGuestEnv) == "1" }

type tlog struct{ t testing.TB }

func (l tlog) Logf(f string, a ...any) { l.t.Logf(f, a...) }

// RunTestInGuest re-runs the calling test, and only it, inside a UML guest
// and reports the guest's verdict as this test's. It returns true when it
// did so; the caller must then return. Inside the guest it returns false
// and the test runs normally.
func RunTestInGuest(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	if InGuest() {
		return false
	}
	ctx := context.Background()
	k, err := Ensure(ctx, tlog{t})
	if err != nil {
		t.Fatalf("this test needs a kernel feature the host lacks, and the user-mode Linux kernel that provides it is unavailable: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	var pattern []string
	for _, part := range strings.Split(t.Name(), "/") {
		pattern = append(pattern, "^"+regexp.QuoteMeta(part)+"$")
	}
	// The guest starts with a fresh environment; test settings go along.
	env := []string{InGuestEnv + "=1"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PM_") || strings.HasPrefix(kv, "PROXIER_") || strings.HasPrefix(kv, "PROXYMODES_") {
			env = append(env, kv)
		}
	}
	r, err := k.Run(ctx, RunOptions{
		Argv:    []string{self, "-test.run=" + strings.Join(pattern, "/"), "-test.v", "-test.count=1"},
		Env:     env,
		Dir:     wd,
		Timeout: timeout,
	})
	if err != nil {
		t.Fatalf("guest run: %v", err)
	}
	t.Logf("ran in %s in %s; guest output:\n%s%s", k, r.Elapsed.Round(time.Millisecond), r.Stdout, r.Stderr)
	if r.ExitCode != 0 {
		t.Fatalf("test failed inside the guest (exit %d)", r.ExitCode)
	}
	if !strings.Contains(r.Stdout, "--- PASS: "+strings.Split(t.Name(), "/")[0]) {
		t.Fatalf("the guest run did not report %s as passed", t.Name())
	}
	return true
}
