package suite

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/suites/promise"
	"github.com/proxymodes/proxymodes/suites/report"
)

// Feature builds an e2e-framework feature labelled feature=<label> whose
// assessments record their evidence and result into the run's report, and
// whose teardown removes the pods and Services it created.
type Feature struct {
	name, label, desc string
	b                 *features.FeatureBuilder
	assessments       []string

	mu  sync.Mutex
	fx  *Fixture
	rec *report.Feature
	run *Run
	// skipRest is why the rest of the feature cannot run here (set by
	// A.SkipFeature): its later assessments skip with it, as a failure
	// leaves them not run.
	skipRest string
}

// NewFeature starts a feature. Select features with the e2e-framework
// flags, for example `-args -labels feature=retry` or `-args -feature 'retry'`.
func NewFeature(name, label, description string) *Feature {
	f := &Feature{name: name, label: label, desc: description}
	f.b = features.NewWithDescription(name, description).WithLabel("feature", label).
		Setup(func(ctx context.Context, t *testing.T, _ *envconf.Config) context.Context {
			f.start(ctx, t)
			return ctx
		})
	return f
}

// WithLabel adds a label.
func (f *Feature) WithLabel(k, v string) *Feature {
	f.b = f.b.WithLabel(k, v)
	return f
}

func (f *Feature) start(ctx context.Context, t *testing.T) {
	run := RunFrom(ctx)
	c := ClusterFrom(ctx)
	if run == nil || c == nil {
		t.Fatal(ErrNoCluster)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.run = run
	f.skipRest = ""
	f.rec = run.Report.Feature(f.name, f.label, f.desc)
	f.fx = &Fixture{c: c, slug: slug(f.label), run: run}
	run.Logf("feature %q (feature=%s): %s", f.name, f.label, f.desc)
}

// Assess adds an assessment. fn gets an A, which wraps the assessment's
// *testing.T and records evidence and failures for the summary.
func (f *Feature) Assess(name string, fn func(ctx context.Context, a *A)) *Feature {
	f.assessments = append(f.assessments, name)
	f.b = f.b.Assess(name, func(ctx context.Context, t *testing.T, _ *envconf.Config) context.Context {
		f.mu.Lock()
		fx, rec, run, skipRest := f.fx, f.rec, f.run, f.skipRest
		f.mu.Unlock()
		a := &A{T: t, Ctx: ctx, Cluster: fx.c, Promise: run.Settings.Promise, Fixture: fx, Run: run,
			feature: rec.Name, rec: &report.Assessment{Name: name}, skipFeature: func(why string) {
				f.mu.Lock()
				f.skipRest = why
				f.mu.Unlock()
			}}
		start := time.Now()
		run.Logf("  assess %q", name)
		defer func() {
			// Runs after t.FailNow and t.SkipNow too (they end the
			// goroutine with runtime.Goexit, which runs deferred calls).
			a.rec.Duration = time.Since(start)
			switch {
			case t.Failed():
				a.rec.Status = report.Fail
				if len(a.rec.Failures) == 0 {
					a.rec.Failures = []string{"failed (see the test log)"}
				}
			case t.Skipped():
				a.rec.Status = report.Skip
			default:
				a.rec.Status = report.Pass
			}
			run.Report.Add(rec, a.rec)
			run.Logf("  %s %q (%s)", a.rec.Status, name, a.rec.Duration.Round(100*time.Millisecond))
		}()
		if skipRest != "" {
			a.Skipf("%s", skipRest)
		}
		fn(ctx, a)
		return ctx
	})
	return f
}

// Feature finishes the builder: the teardown deletes what the feature
// created and marks assessments that never ran.
func (f *Feature) Feature() types.Feature {
	return f.b.Teardown(func(ctx context.Context, t *testing.T, _ *envconf.Config) context.Context {
		f.mu.Lock()
		fx, rec, run := f.fx, f.rec, f.run
		f.mu.Unlock()
		if fx == nil {
			return ctx
		}
		fx.cleanup(t)
		done := map[string]bool{}
		for _, a := range rec.Assessments {
			done[a.Name] = true
		}
		for _, name := range f.assessments {
			if !done[name] {
				run.Report.Add(rec, &report.Assessment{Name: name, Status: report.NotRun,
					Reason: "not run: an earlier assessment of this feature failed, or a filter excluded it"})
			}
		}
		return ctx
	}).Feature()
}

// A is what an assessment works with.
type A struct {
	*testing.T
	Ctx     context.Context
	Cluster cluster.Cluster
	Promise promise.Promise
	Fixture *Fixture
	Run     *Run
	feature string
	rec     *report.Assessment
	// snapshotPath is where the state at the first failure went.
	snapshotPath string
	// converged is when the last Eventually's check held.
	converged time.Time
	// settling is true while an Eventually's check runs: its probes only
	// ask whether the proxier is done, and keep out of the measured
	// connections' way (probe.SettlingPorts).
	settling bool
	// skipFeature makes the feature's later assessments skip.
	skipFeature func(why string)
}

// Evidence records a measurement for the summary and logs it.
func (a *A) Evidence(format string, args ...any) {
	a.T.Helper()
	s := fmt.Sprintf(format, args...)
	a.rec.Evidence = append(a.rec.Evidence, s)
	a.T.Log(s)
}

// Errorf records a failed check and continues.
func (a *A) Errorf(format string, args ...any) {
	a.T.Helper()
	msg := a.failure(format, args...)
	a.T.Error(msg)
}

// Fatalf records a failed check and stops the assessment.
func (a *A) Fatalf(format string, args ...any) {
	a.T.Helper()
	msg := a.failure(format, args...)
	a.T.Fatal(msg)
}

// failure records a failed check, with where the nodes' state at the first
// failure was written (not when the run was interrupted: the lab may be
// going down).
func (a *A) failure(format string, args ...any) string {
	msg := fmt.Sprintf(format, args...)
	if a.Ctx == nil || a.Ctx.Err() != context.Canceled {
		if p := a.snapshot(); p != "" {
			msg += " [node state at the failure: " + p + "]"
		}
	}
	a.rec.Failures = append(a.rec.Failures, msg)
	return msg
}

// Fatal is Fatalf for an error.
func (a *A) Fatal(err error) {
	a.T.Helper()
	a.Fatalf("%v", err)
}

// Skipf records why the assessment does not apply and skips it.
func (a *A) Skipf(format string, args ...any) {
	a.T.Helper()
	a.rec.Reason = fmt.Sprintf(format, args...)
	a.T.Skipf(format, args...)
}

// SkipFeature skips this assessment and every later one of its feature
// with the same reason: for what the provider or mode cannot do at all (a
// cluster the suite cannot restart), not for one assessment's gap.
func (a *A) SkipFeature(format string, args ...any) {
	a.T.Helper()
	why := fmt.Sprintf(format, args...)
	if a.skipFeature != nil {
		a.skipFeature(why)
	}
	a.Skipf("%s", why)
}

// Logf logs progress (not recorded as evidence).
func (a *A) Logf(format string, args ...any) {
	a.T.Helper()
	a.T.Logf(format, args...)
}

func slug(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteRune('-')
		}
	}
	return strings.Trim(b.String(), "-")
}
