// Package conformance checks how a Service proxy mode really behaves:
// backend selection (round-robin or random), ClientIP affinity, retry on
// failure, cleanup after delete, endpoint changes, Services without
// endpoints and NodePorts. Expectations come from the promise table
// (suites/promise), chosen by PROXYMODES_MODE; see README.md, "Conformance
// suites", for the statistics and their false-failure probabilities.
//
//	PROXYMODES_MODE=iptables go test -count=1 -v ./suites/conformance
//	... -args -labels feature=retry        # one feature
package conformance

import (
	"fmt"
	"os"
	"testing"

	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envconf"

	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/suites/suite"
)

var (
	testenv env.Environment
	run     *suite.Run
)

func TestMain(m *testing.M) {
	// First: the test binary also plays the pods' echo backends.
	labtest.Init()
	cfg, err := envconf.NewFromFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	run = suite.NewRun("conf")
	testenv = env.NewWithConfig(cfg).
		Setup(run.CheckSettings, run.CreateCluster).
		Finish(run.SaveLogsOnFailure, run.DestroyCluster, run.CheckLeaks)
	os.Exit(run.Finish(testenv.Run(m)))
}
