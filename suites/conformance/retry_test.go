package conformance

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/stats"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestRetry(t *testing.T) {
	testenv.Test(t, retryOnFailure())
}

const (
	// refuseN connections while one backend refuses. A no-retry mode fails
	// the ones sent to it: Binomial(300, 1/3) for random selection (exactly
	// 100 for round-robin). The two-sided acceptance region at level 1e-6
	// is [62, 141]; a correct no-retry proxy falls outside it with
	// probability 8.2e-7. A retry mode must fail none (exact).
	refuseN = 300
	// blackholeN connections while one backend drops everything, from
	// blackholeWorkers parallel probes (each failure costs a full timeout).
	// Binomial(180, 1/3) at level 1e-6: [31, 92], false failure 7.1e-7.
	blackholeN       = 180
	blackholeWorkers = 4
	retryAlpha       = 1e-6
)

// retryTimeout is the per-connection timeout. Against a black-holed
// backend it is small for no-retry modes, whose clients must give up, and
// enough for a retry mode to try the next backend (userspace: first dial
// timeout 250ms). A refusing backend answers at once, so there the timeout
// only has to outlast a busy node: in the one-vCPU UML guest kube-proxy's
// ipvs syncs take 10-20 s of CPU, and a connection to a working backend
// once took over a second, which a 1 s timeout counted as a failure.
func retryTimeout(retry bool, f cluster.Fault) time.Duration {
	switch {
	case f == cluster.Refuse:
		return 5 * time.Second
	case retry:
		return 3 * time.Second
	}
	return time.Second
}

func retryOnFailure() types.Feature {
	var pods []cluster.Pod
	var names []string
	var svc *corev1.Service
	var tg probe.Target
	ensure := func(a *suite.A) {
		if svc != nil {
			return
		}
		pods = a.Fixture.Backends(a, 3)
		names = suite.Names(pods)
		svc = a.Fixture.Service(a, suite.ServiceOptions{Name: "retry"})
		tg = tcpTo(clients(a, 1)[0].NS, svc)
		waitServedByAll(a, "Service serves all 3 backends", tg, names)
	}
	measure := func(a *suite.A, fault cluster.Fault, n, workers int) {
		ensure(a)
		broken := pods[len(pods)-1]
		if err := a.Cluster.Break(a.Ctx, broken, fault); err != nil {
			a.Fatalf("breaking %s (%s): %v", broken.Name, fault, err)
		}
		timeout := retryTimeout(a.Promise.Retry, fault)
		start := time.Now()
		s := probeParallel(a, tg, n, workers, timeout)
		took := time.Since(start)
		if err := a.Cluster.Restore(a.Ctx, broken); err != nil {
			a.Fatalf("restoring %s: %v", broken.Name, err)
		}
		checkRetry(a, s, broken, names, fault, timeout, took)
		waitServedByAll(a, "all 3 backends serve again after restore", tg, names)
	}
	return suite.NewFeature("retry on failure", "retry",
		"with one of three backends failing, a retry mode fails no connection and a no-retry mode about 1/3").
		Assess("one of three backends refuses connections", func(ctx context.Context, a *suite.A) {
			measure(a, cluster.Refuse, refuseN, 1)
		}).
		Assess("one of three backends black-holes packets", func(ctx context.Context, a *suite.A) {
			measure(a, cluster.Blackhole, blackholeN, blackholeWorkers)
		}).Feature()
}

// probeParallel splits n connections over workers concurrent probes.
func probeParallel(a *suite.A, tg probe.Target, n, workers int, timeout time.Duration) probe.Summary {
	out := probe.Summary{Target: tg}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		k := n / workers
		if w < n%workers {
			k++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a.Cluster.Probe(a.Ctx, tg, k, timeout)
			mu.Lock()
			out.Results = append(out.Results, s.Results...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func checkRetry(a *suite.A, s probe.Summary, broken cluster.Pod, names []string, fault cluster.Fault, timeout, took time.Duration) {
	a.Helper()
	n := len(s.Results)
	failed := len(s.Errors())
	kinds, examples := suite.ErrorKinds(s)
	a.Evidence("%s broken (%s): %d/%d failed (%.3f) in %s, per-connection timeout %s", broken.Name, fault, failed, n, float64(failed)/float64(n), took.Round(100*time.Millisecond), timeout)
	a.Evidence("distribution: %s", suite.Distribution(s, names))
	if failed > 0 {
		ks := map[string]int{}
		for k, v := range kinds {
			ks[string(k)] = v
		}
		a.Evidence("failures by kind: %s", tally(ks))
	}
	if c := s.Counts()[broken.Name]; c > 0 {
		a.Errorf("the broken backend %s answered %d connections: the fault was not in effect", broken.Name, c)
	}
	if a.Promise.Retry {
		if failed > 0 {
			a.Fatalf("%s promises retry, but %d of %d connections failed while 2 of 3 backends worked (first: %v)", a.Promise.Mode, failed, n, s.Errors()[0])
		}
		a.Evidence("retry: no client saw a failure")
		return
	}
	lo, hi, ff := stats.BinomialAcceptance(n, 1.0/3, retryAlpha)
	p := stats.BinomialTwoSidedP(n, failed, 1.0/3)
	a.Evidence("no retry: failures %d, accept [%d, %d] for Binomial(%d, 1/3), p=%.3g, false-failure %.2g", failed, lo, hi, n, p, ff)
	if failed < lo || failed > hi {
		a.Errorf("%d of %d connections failed, outside [%d, %d]: not the 1/3 a proxy without retry loses (p=%.3g)", failed, n, lo, hi, p)
	}
	want := suite.Refused
	if fault == cluster.Blackhole {
		want = suite.Timeout
	}
	for k, c := range kinds {
		if k != want {
			a.Errorf("%d failures were %s, not %s: failures other than the broken backend's (example: %s)", c, k, want, examples[k])
		}
	}
}
