package suite

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/suites/report"
)

// TestIPVSOnKindWithoutIPVSIsRefused: a run that could test nothing fails
// up front, with the way out, rather than skipping every feature and
// exiting 0.
func TestIPVSOnKindWithoutIPVSIsRefused(t *testing.T) {
	saved := hostHasIPVS
	defer func() { hostHasIPVS = saved }()
	for _, has := range []bool{false, true} {
		hostHasIPVS = func() bool { return has }
		r := &Run{Name: "t", Settings: Settings{Mode: "ipvs", Provider: "kind", Impl: "reference"}, Log: io.Discard}
		r.Report = report.New("t", nil, "")
		_, err := r.CheckSettings(context.Background(), nil)
		switch {
		case !has && err == nil:
			t.Fatal("MODE=ipvs PROVIDER=kind on a host without ip_vs was accepted")
		case !has && !strings.Contains(err.Error(), "PROVIDER=local"):
			t.Errorf("refusal %q does not name the way out", err)
		case !has && !r.Report.Failed():
			t.Error("the refusal is not in the report, so the run's results would not show it")
		case has && err != nil:
			t.Errorf("refused with ip_vs on the host: %v", err)
		}
	}
}
