package conformance

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/suites/suite"
)

// Probe timeouts. Connections in the lab take about a millisecond; a
// timeout only matters when a backend black-holes, where a no-retry mode
// must give up fast (1s) and a retry mode needs room for its first retry
// (the userspace proxy's dial timeouts start at 250ms).
const (
	quick = 2 * time.Second
)

// clients returns the first n shared client pods.
func clients(a *suite.A, n int) []cluster.Pod {
	a.Helper()
	c, err := a.Run.Clients(a.Ctx, n)
	if err != nil {
		a.Fatal(err)
	}
	return c
}

func tcpTo(from string, svc *corev1.Service) probe.Target {
	return probe.Target{NS: from, Addr: suite.VIP(svc, suite.TCPPort), Proto: probe.TCP}
}

// waitServedByAll waits until n connections reach every named backend and
// none fails: the proxier has programmed the Service and all endpoints.
// With n = 60 and 3 uniformly chosen backends, one attempt misses a
// backend with probability 3*(2/3)^60 < 1e-10; the wait retries anyway.
func waitServedByAll(a *suite.A, what string, tg probe.Target, names []string) {
	a.Helper()
	a.Eventually(what, a.Converge(),
		func() probe.Summary { return a.Probe(tg, 60, quick) },
		func(s probe.Summary) bool { return suite.ServedBy(s, names...) })
}

// allSame returns the one backend that served every connection, or "".
func allSame(s probe.Summary) string {
	c := s.Counts()
	if len(s.Errors()) > 0 || len(c) != 1 {
		return ""
	}
	for n := range c {
		return n
	}
	return ""
}

func short(seq []string, n int) string {
	if len(seq) <= n {
		return strings.Join(seq, " ")
	}
	return strings.Join(seq[:n], " ") + fmt.Sprintf(" ... (%d more)", len(seq)-n)
}

// tally renders "name=count" for a map, sorted by name.
func tally(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func podByName(pods []cluster.Pod, name string) *cluster.Pod {
	for i := range pods {
		if pods[i].Name == name {
			return &pods[i]
		}
	}
	return nil
}
