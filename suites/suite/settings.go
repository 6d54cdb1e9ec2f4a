// Package suite is the glue between sigs.k8s.io/e2e-framework and the lab:
// the settings a run is driven by (PROXYMODES_MODE, _PROVIDER, _IMPL), the
// env funcs that create and tear down the cluster, the feature builder that
// records evidence for the summary, and small helpers features share
// (services, probing, waiting for rules to converge). Features themselves
// live in the suite packages (suites/conformance).
package suite

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/suites/promise"
)

// Environment variables a run is driven by.
const (
	EnvMode       = "PROXYMODES_MODE"
	EnvProvider   = "PROXYMODES_PROVIDER"
	EnvImpl       = "PROXYMODES_IMPL"
	EnvResultsDir = "PROXYMODES_RESULTS_DIR"
	// EnvClaim overrides parts of the promise table for this run (see
	// promise.Claim); it exists to prove the suite fails a proxy that does
	// not keep a promise.
	EnvClaim = "PROXYMODES_CLAIM"
	// EnvFault runs a self-test build of the reference proxier that breaks
	// one promise on purpose (proxier/fault, make selftest): the run must
	// then fail.
	EnvFault = "PROXYMODES_FAULT"
	// EnvLabName names the local lab (default: the suite's name). Runs
	// side by side need distinct names, and isolated labs (LAB_ISOLATED=1,
	// harness/cluster/local) to share the host.
	EnvLabName = local.EnvLabName
)

// Providers and implementations the suite knows.
var (
	Providers = []string{"local", "kind", "existing"}
	Impls     = []string{"reference", "kube-proxy"}
)

// Settings are what a run tests and where it writes results.
type Settings struct {
	Mode, Provider, Impl string
	Claim                string
	// Fault is the promise a self-test proxier breaks, or "".
	Fault   string
	Promise promise.Promise
	// ResultsDir receives summary.txt, results.json, junit.xml and, when
	// something failed, the lab's logs.
	ResultsDir string
	// LabName, if set, names the local lab instead of the suite.
	LabName string
}

// SettingsFromEnv reads and validates the settings. Errors say what to set.
func SettingsFromEnv(now time.Time) (Settings, error) {
	s := Settings{
		Mode:       strings.TrimSpace(os.Getenv(EnvMode)),
		Provider:   strings.TrimSpace(os.Getenv(EnvProvider)),
		Impl:       strings.TrimSpace(os.Getenv(EnvImpl)),
		Claim:      os.Getenv(EnvClaim),
		Fault:      strings.TrimSpace(os.Getenv(EnvFault)),
		ResultsDir: os.Getenv(EnvResultsDir),
		LabName:    strings.TrimSpace(os.Getenv(EnvLabName)),
	}
	if s.Mode == "" {
		s.Mode = "iptables"
	}
	if s.Provider == "" {
		s.Provider = "local"
	}
	if s.Impl == "" {
		s.Impl = "reference"
		if s.Provider == "existing" {
			// Most clusters run kube-proxy; the run tests what is there.
			s.Impl = "kube-proxy"
		}
	}
	if s.ResultsDir == "" {
		// Outside the checkout, so runs never dirty the repository.
		name := now.Format("20060102-150405") + "-" + s.Mode
		if s.Impl != "reference" {
			name += "-" + s.Impl
		}
		if s.Provider != "" && s.Provider != "local" {
			name += "-" + s.Provider
		}
		s.ResultsDir = filepath.Join(os.TempDir(), "proxymodes-runs", name)
	}
	p, err := promise.For(s.Mode)
	if err != nil {
		return s, fmt.Errorf("%s: %w", EnvMode, err)
	}
	if s.Promise, err = promise.Claim(p, s.Claim); err != nil {
		return s, fmt.Errorf("%s: %w", EnvClaim, err)
	}
	switch s.Provider {
	case "local", "kind", "existing":
	default:
		return s, fmt.Errorf("%s=%q is unknown: use one of %s", EnvProvider, s.Provider, strings.Join(Providers, ", "))
	}
	switch s.Impl {
	case "reference":
	case "kube-proxy":
		if s.Mode == "userspace" {
			return s, fmt.Errorf("%s=kube-proxy has no userspace mode (upstream removed it in v1.26): use %s=iptables or ipvs, or %s=reference", EnvImpl, EnvMode, EnvImpl)
		}
	default:
		return s, fmt.Errorf("%s=%q is unknown: use one of %s", EnvImpl, s.Impl, strings.Join(Impls, ", "))
	}
	if s.Fault != "" {
		if _, err := fault.Parse(s.Fault); err != nil {
			return s, fmt.Errorf("%s: %w", EnvFault, err)
		}
		if s.Impl != "reference" || s.Provider != "local" {
			return s, fmt.Errorf("%s=%s needs %s=reference and %s=local: faults are built into the reference proxier, which only the local lab runs from this checkout", EnvFault, s.Fault, EnvImpl, EnvProvider)
		}
	}
	return s, nil
}

// Map renders the settings for the report.
func (s Settings) Map() map[string]string {
	m := map[string]string{"mode": s.Mode, "provider": s.Provider, "impl": s.Impl, "resultsDir": s.ResultsDir}
	if s.Claim != "" {
		m["claim"] = s.Claim
	}
	if s.Fault != "" {
		m["fault"] = s.Fault
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		// The kernel the proxy ran on; for a guest-kernel lab the provider
		// should report its own (TODO for the ipvs lab).
		m["kernel"] = strings.TrimSpace(string(b))
	}
	return m
}
