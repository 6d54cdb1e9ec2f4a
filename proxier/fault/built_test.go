package fault

import (
	"flag"
	"io"
	"testing"
)

// The shipped proxier must not be able to break a promise: without the
// pm_selftest tag there is no flag to ask for it.
func TestFlagOnlyInSelftestBuilds(t *testing.T) {
	fs := flag.NewFlagSet("proxier", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	Register(fs)
	err := fs.Parse([]string{"--selftest-fault=affinity-ignored"})
	if Built {
		if err != nil || Current() != AffinityIgnored {
			t.Fatalf("selftest build: %v, current %q", err, Current())
		}
		return
	}
	if err == nil || Current() != "" {
		t.Fatalf("a shipped build accepted --selftest-fault (err %v, current %q)", err, Current())
	}
}
