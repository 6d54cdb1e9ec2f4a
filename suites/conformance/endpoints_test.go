package conformance

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/pkg/types"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

func TestEndpoints(t *testing.T) {
	testenv.Test(t, endpointChanges(), noEndpoints())
}

// endpointChanges: endpoints added to or removed from a live Service are
// picked up. The waits are convergence deadlines; the final checks are
// exact (every connection served, only by current endpoints).
func endpointChanges() types.Feature {
	var first, second cluster.Pod
	var tg probe.Target
	return suite.NewFeature("endpoint changes", "endpoints",
		"endpoints added to or removed from a live Service are picked up").
		Assess("an added endpoint is picked up", func(ctx context.Context, a *suite.A) {
			first = a.Fixture.Backends(a, 1)[0]
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "churn"})
			tg = tcpTo(clients(a, 1)[0].NS, svc)
			a.Eventually("one endpoint serves", a.Converge(),
				func() probe.Summary { return a.Probe(tg, 10, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, first.Name) })
			start := time.Now()
			second = a.Fixture.Backends(a, 1)[0]
			s := a.Eventually("the added endpoint serves too", a.Converge(),
				func() probe.Summary { return a.Probe(tg, 40, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, first.Name, second.Name) })
			a.Evidence("%s added: served within %s; %s", second.Name, a.ConvergedSince(start).Round(10*time.Millisecond), suite.Distribution(s, []string{first.Name, second.Name}))
		}).
		Assess("a removed endpoint is dropped", func(ctx context.Context, a *suite.A) {
			if second.Name == "" {
				a.Fatalf("no endpoints to remove (the previous assessment did not run)")
			}
			took, s := dropped(a, tg, second, "only the remaining endpoint serves", func() { a.Fixture.DeletePod(a, first) })
			a.Evidence("%s removed: dropped within %s; then %s", first.Name, took.Round(10*time.Millisecond), suite.Distribution(s, []string{second.Name}))
			onlyServedBy(a, tg, s, second, "after the removal converged, connections still failed or reached others")
		}).
		// The pod of a deleted endpoint is gone, so a proxy that keeps the
		// endpoint but retries another one (userspace) passes the check
		// above. Here the endpoint leaves the Service while its pod keeps
		// serving: any connection that reaches it is a kept endpoint.
		Assess("an endpoint whose pod leaves the selector is dropped while the pod still serves", func(ctx context.Context, a *suite.A) {
			if second.Name == "" {
				a.Fatalf("no endpoints to start from (the previous assessments did not run)")
			}
			third := a.Fixture.Backends(a, 1)[0]
			a.Eventually("the added endpoint serves too", a.Converge(),
				func() probe.Summary { return a.Probe(tg, 40, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, second.Name, third.Name) })
			took, s := dropped(a, tg, second, "only the endpoint still selected serves", func() { a.Fixture.Unselect(a, third) })
			direct := a.Probe(probe.Target{NS: tg.NS, Addr: netip.AddrPortFrom(third.IP, backend.TCPPort), Proto: probe.TCP}, 3, quick)
			if !suite.ServedBy(direct, third.Name) {
				a.Fatalf("%s stopped answering when it left the selector, so this check cannot see a kept endpoint: %s", third.Name, direct)
			}
			a.Evidence("%s unselected (its pod still answers directly): dropped within %s; then %s", third.Name, took.Round(10*time.Millisecond), suite.Distribution(s, []string{second.Name}))
			onlyServedBy(a, tg, s, second, "after the unselected endpoint's removal converged, connections still failed or reached it")
		}).Feature()
}

// dropped takes an endpoint away with remove, waits until only keep serves,
// and returns how long that took and 100 connections measured after it.
func dropped(a *suite.A, tg probe.Target, keep cluster.Pod, what string, remove func()) (time.Duration, probe.Summary) {
	a.Helper()
	start := time.Now()
	remove()
	a.Eventually(what, a.Converge(),
		func() probe.Summary { return a.Probe(tg, 20, quick) },
		func(s probe.Summary) bool { return suite.ServedBy(s, keep.Name) })
	took := a.ConvergedSince(start)
	return took, a.Probe(tg, 100, quick)
}

// onlyServedBy fails, with the client node's flows, unless keep served
// every connection of s.
func onlyServedBy(a *suite.A, tg probe.Target, s probe.Summary, keep cluster.Pod, failure string) {
	a.Helper()
	if !suite.ServedBy(s, keep.Name) {
		flowState(a, clients(a, 1)[0].Node, "tcp", tg.Addr)
		a.Fatalf("%s: %s", failure, s)
	}
}

// noEndpoints: a Service without endpoints rejects connections at once
// (kube-proxy REJECTs them, so TCP connect gets "connection refused"),
// rather than letting them hang. The check is exact: n spaced connections,
// every one refused within a second.
//
// Spacing: a REJECT answers with ICMP port-unreachable, and the node's
// kernel rate-limits ICMP errors per destination (net.ipv4.icmp_ratelimit,
// 1 per second after a burst of about 6). Back-to-back connections
// therefore see some refusals only after SYN retransmits. That is the
// kernel, not the proxy, so the asserted connections are 2s apart (1.1s
// was once not enough in the UML guest, whose timers lag while kube-proxy's
// syncs hold its one CPU: a refusal came only after the SYN retransmit); a
// back-to-back burst is measured and reported as evidence only.
func noEndpoints() types.Feature {
	const n = 8
	const burst = 20
	const prompt = time.Second
	const spacing = 2 * time.Second
	check := func(a *suite.A, tg probe.Target, what string) {
		a.Helper()
		a.Eventually(what, a.Converge(),
			func() probe.Summary { return a.Probe(tg, 3, 3*time.Second) },
			func(s probe.Summary) bool { return allRefused(s) })
		var worst time.Duration
		refused := 0
		for i := 0; i < n; i++ {
			time.Sleep(spacing)
			s := a.Probe(tg, 1, 3*time.Second)
			r := s.Results[0]
			worst = max(worst, r.Latency)
			if r.Err == nil {
				a.Fatalf("connection %d to a Service without endpoints was answered by %s", i+1, r.Backend)
			}
			if k := suite.Classify(r.Err); k != suite.Refused {
				a.Fatalf("connection %d was not refused but %s after %s: %v", i+1, k, r.Latency.Round(time.Millisecond), r.Err)
			}
			refused++
		}
		a.Evidence("%d/%d connections %s apart refused, slowest %s (limit %s)", refused, n, spacing, worst.Round(100*time.Microsecond), prompt)
		if worst > prompt {
			a.Errorf("a refusal took %s, not prompt (limit %s)", worst, prompt)
		}
		// Informational: back-to-back connections meet the kernel's ICMP
		// rate limit.
		s := a.Probe(tg, burst, 3*time.Second)
		fast, slow := 0, 0
		for _, r := range s.Results {
			if r.Err != nil && suite.Classify(r.Err) == suite.Refused {
				if r.Latency <= prompt {
					fast++
				} else {
					slow++
				}
			}
		}
		a.Evidence("(not asserted) %d back-to-back: %d refused within %s, %d refused only after SYN retransmits, %d timed out or other: ICMP rate limit of the node kernel", burst, fast, prompt, slow, burst-fast-slow)
	}
	return suite.NewFeature("no endpoints", "no-endpoints",
		"a Service with no endpoints refuses connections promptly").
		Assess("a Service without endpoints refuses TCP connections promptly", func(ctx context.Context, a *suite.A) {
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "empty", Selector: map[string]string{"app": "nobody"}})
			check(a, tcpTo(clients(a, 1)[0].NS, svc), "connections refused")
		}).
		Assess("a Service whose last endpoint goes refuses again", func(ctx context.Context, a *suite.A) {
			p := a.Fixture.Backends(a, 1)[0]
			svc := a.Fixture.Service(a, suite.ServiceOptions{Name: "emptied"})
			tg := tcpTo(clients(a, 1)[0].NS, svc)
			a.Eventually("the endpoint serves", a.Converge(),
				func() probe.Summary { return a.Probe(tg, 5, quick) },
				func(s probe.Summary) bool { return suite.ServedBy(s, p.Name) })
			a.Fixture.DeletePod(a, p)
			check(a, tg, "connections refused after the last endpoint went")
		}).Feature()
}

func allRefused(s probe.Summary) bool {
	for _, r := range s.Results {
		if r.Err == nil || suite.Classify(r.Err) != suite.Refused {
			return false
		}
	}
	return len(s.Results) > 0
}
