package suite

import (
	"context"
	"testing"

	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/suites/report"
)

// infoOnly is a cluster that can only name itself: a feature whose
// assessments touch nothing else runs on it.
type infoOnly struct{ cluster.Cluster }

func (infoOnly) Info() cluster.Info { return cluster.Info{Name: "fake", Provider: "fake"} }

// SkipFeature in the first assessment skips the later ones with its reason,
// without running them; a feature without it runs every assessment.
func TestSkipFeatureSkipsTheRest(t *testing.T) {
	t.Setenv(EnvResultsDir, t.TempDir())
	run := NewRun("skipfeature")
	const why = "the fake provider cannot do this at all"
	var ran []string
	skipping := NewFeature("skipping", "skipping", "skips after its first assessment").
		Assess("first", func(ctx context.Context, a *A) { a.SkipFeature("%s", why) }).
		Assess("second", func(ctx context.Context, a *A) { ran = append(ran, "skipping/second") }).
		Assess("third", func(ctx context.Context, a *A) { ran = append(ran, "skipping/third") })
	plain := NewFeature("plain", "plain", "skips nothing").
		Assess("first", func(ctx context.Context, a *A) { a.Skipf("only this one") }).
		Assess("second", func(ctx context.Context, a *A) { ran = append(ran, "plain/second") })

	e := env.New().BeforeEachTest(func(ctx context.Context, _ *envconf.Config, _ *testing.T) (context.Context, error) {
		return context.WithValue(context.WithValue(ctx, clusterKey, cluster.Cluster(infoOnly{})), runKey, run), nil
	})
	e.Test(t, skipping.Feature(), plain.Feature())

	if len(ran) != 1 || ran[0] != "plain/second" {
		t.Errorf("assessments that ran after a skip: %v, want only plain/second", ran)
	}
	for _, f := range run.Report.Features {
		for _, a := range f.Assessments {
			want, reason := report.Skip, why
			if f.Name == "plain" {
				reason = "only this one"
				if a.Name == "second" {
					want, reason = report.Pass, ""
				}
			}
			if a.Status != want || a.Reason != reason {
				t.Errorf("%s/%s: %s %q, want %s %q", f.Name, a.Name, a.Status, a.Reason, want, reason)
			}
		}
	}
}
