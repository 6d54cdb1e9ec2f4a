// Package selftest proves that the conformance suite fails a proxy that
// breaks a promise. For each fault of the reference proxier
// (proxier/fault) it declares the feature to run and the assessments that
// must fail, per mode; then it judges the runs: every fault caught by its
// assessment, and the unbroken proxier passing the same features.
package selftest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/suites/report"
)

// Case is one broken build and what must catch it.
type Case struct {
	Fault fault.Fault
	// Feature is the e2e-framework label value (feature=...) to run.
	Feature string
	// Assessments must all fail.
	Assessments []string
}

// Name names the case's run and its directory: "<fault>@<feature>", so
// that one fault can be checked by several features.
func (c Case) Name() string { return string(c.Fault) + "@" + c.Feature }

// Unbroken names the run of the shipped proxier over the same features.
const Unbroken = "unbroken"

const (
	stick      = "one client sticks to one backend over 40 connections"
	idle       = "an idle client keeps its backend until timeoutSeconds"
	expiry     = "after timeoutSeconds a client can move"
	added      = "an added endpoint is picked up"
	removed    = "a removed endpoint is dropped"
	unselected = "an endpoint whose pod leaves the selector is dropped while the pod still serves"
	rules      = "nothing in iptables, nftables, ipsets or proxy listeners refers to a deleted Service"
	ipvsState  = "no IPVS virtual server or bound VIP remains"
	staleUDP   = "stale UDP conntrack entries to a removed endpoint are cleared"
	nodePortRW = "NodeIP:nodePort reaches every backend from another node (TCP and UDP)"
	uniform    = "900 connections are uniform over 3 backends (chi-square)"
	cyclic     = "connections from one client follow a fixed cyclic order"
	refuses    = "one of three backends refuses connections"
	refused    = "a Service without endpoints refuses TCP connections promptly"
	hairpin    = "a pod reaches itself through its own Service (hairpin) and sees an address of its node"
	podSource  = "a backend reached through a ClusterIP sees the client pod's address (kernel modes) or the client node's (userspace)"
	udpDropped = "removing UDP from a port number that TCP shares stops UDP, and TCP serves throughout"
	sliceGone  = "deleting one EndpointSlice drops exactly its endpoints"
	apiDown    = "while the proxiers' API server is down, their Services keep working"
	apiMissed  = "a Service created and one deleted while the proxiers' API server was down are applied once it returns"
	restarted  = "after the restart each node's rules are those from before, but for the Services changed meanwhile: nothing lost, duplicated or stale"
	itpLocal   = "with internalTrafficPolicy Local a client reaches every endpoint on its own node and none on another"
	etpLocal   = "with externalTrafficPolicy Local a NodePort reached from outside answers only from the node's own endpoints, which see the client's address"
	etpHealth  = "the healthCheckNodePort answers 200 with the node's ready endpoint count where it has some and 503 where it has none, as they come and go"
	termAvoid  = "a terminating endpoint gets no new connections while ready ones exist, and its established connection keeps working"
	termOnly   = "with only terminating endpoints left, new connections reach them"
	extIP      = "an external IP reaches every backend from a pod and, through each node, from outside the cluster"
	lbIP       = "a load balancer ingress IP reaches every backend from a pod and, through each node, from outside the cluster"
	lbRanges   = "loadBalancerSourceRanges let the listed sources reach the load balancer IP and drop every other, as they change"
)

// table lists every case with the modes whose promise it breaks (none:
// all). A fault missing from a mode cannot be expressed there: ipvs
// refuses a Service without real servers in the kernel, userspace's UDP
// flows end at its own socket (no conntrack entry leads to a backend),
// and only userspace retries.
var table = []struct {
	Case
	modes []string
}{
	{Case{fault.AffinityIgnored, "affinity", []string{stick}}, nil},
	{Case{fault.AffinityEarlyExpiry, "affinity", []string{idle}}, nil},
	// In ipvs mode the idle assessment reads each virtual server's
	// persistence timeout, which must equal timeoutSeconds, so the 3-hour
	// one fails there, before the expiry assessment runs.
	{Case{fault.AffinityNeverExpires, "affinity", []string{expiry}}, []string{"iptables", "nftables", "userspace"}},
	{Case{fault.AffinityNeverExpires, "affinity", []string{idle}}, []string{"ipvs"}},
	{Case{fault.EndpointAddIgnored, "endpoints", []string{added}}, nil},
	// Userspace retries past the dead pod of a deleted endpoint, so only
	// an endpoint whose pod still serves shows that it was kept.
	{Case{fault.RemovedEndpointKept, "endpoints", []string{removed}}, []string{"iptables", "ipvs", "nftables"}},
	{Case{fault.RemovedEndpointKept, "endpoints", []string{unselected}}, []string{"userspace"}},
	// A feature stops at its first failed assessment, so a fault is caught
	// by the first assessment it breaks; the IPVS-state one comes after.
	{Case{fault.ServiceDeleteIgnored, "cleanup", []string{rules}}, nil},
	{Case{fault.IPVSStateKept, "cleanup", []string{ipvsState}}, []string{"ipvs"}},
	{Case{fault.NodePortIgnored, "nodeport", []string{nodePortRW}}, nil},
	// Upstream's userspace mode never had the policy: nothing to break.
	{Case{fault.InternalPolicyIgnored, "internal-traffic-policy", []string{itpLocal}}, []string{"iptables", "ipvs", "nftables"}},
	{Case{fault.ExternalPolicyIgnored, "external-traffic-policy", []string{etpLocal}}, []string{"iptables", "ipvs", "nftables"}},
	{Case{fault.HealthCheckIgnored, "external-traffic-policy", []string{etpHealth}}, []string{"iptables", "ipvs", "nftables"}},
	{Case{fault.TerminatingAsReady, "terminating", []string{termAvoid}}, nil},
	// The userspace proxier closes the proxied connections of an endpoint
	// that leaves the snapshot, so there the fault already breaks the
	// established connection of the first assessment.
	{Case{fault.TerminatingDropped, "terminating", []string{termOnly}}, []string{"iptables", "ipvs", "nftables"}},
	{Case{fault.TerminatingDropped, "terminating", []string{termAvoid}}, []string{"userspace"}},
	// In ipvs mode the kernel itself drops a deleted real server's UDP
	// connections, and their conntrack entries, on their next datagram
	// (expire_nodest_conn, which the proxier sets): a proxier that deletes
	// no conntrack entry still keeps the promise there (the ipvs self-test
	// of 2026-12-07 saw the flow move within 2.9 s).
	{Case{fault.StaleConntrackKept, "cleanup", []string{staleUDP}}, []string{"iptables", "nftables"}},
	{Case{fault.RandomSkewed, "random", []string{uniform}}, []string{"iptables", "nftables"}},
	{Case{fault.RoundRobinBroken, "round-robin", []string{cyclic}}, []string{"userspace", "ipvs"}},
	// The feature stops at the refusal, so the black-hole assessment never
	// runs against this fault (a gap: no fault proves that one yet).
	{Case{fault.RetryDisabled, "retry", []string{refuses}}, []string{"userspace"}},
	{Case{fault.NoEndpointsDropped, "no-endpoints", []string{refused}}, []string{"userspace", "iptables", "nftables"}},
	// The userspace proxy always connects from the node: neither SNAT is
	// a rule there to break.
	{Case{fault.HairpinNotMasqueraded, "source-ip", []string{hairpin}}, []string{"iptables", "ipvs", "nftables"}},
	{Case{fault.PodSourceMasqueraded, "source-ip", []string{podSource}}, []string{"iptables", "ipvs", "nftables"}},
	// A Service port that goes away is a deleted Service port to the
	// tracker, so the same fault keeps UDP; and a deleted slice's endpoints
	// are removed ones whose pods still serve.
	{Case{fault.ServiceDeleteIgnored, "same-port", []string{udpDropped}}, nil},
	{Case{fault.RemovedEndpointKept, "slices", []string{sliceGone}}, nil},
	// The modes that list the kernel's chains on a full sync; ipvs keeps
	// its Services in IPVS, and userspace owns no per-Service chain.
	{Case{fault.KernelStateForgotten, "restart", []string{restarted}}, []string{"iptables", "nftables"}},
	{Case{fault.APILossFlushes, "apiserver-restart", []string{apiDown}}, nil},
	{Case{fault.APIChangesMissed, "apiserver-restart", []string{apiMissed}}, nil},
	{Case{fault.ExternalIPsIgnored, "external-addresses", []string{extIP}}, nil},
	{Case{fault.LoadBalancerIgnored, "external-addresses", []string{lbIP}}, nil},
	// Upstream's userspace mode never had the ranges: nothing to break.
	{Case{fault.SourceRangesIgnored, "external-addresses", []string{lbRanges}}, []string{"iptables", "ipvs", "nftables"}},
}

// Modes the self-test knows.
var Modes = []string{"userspace", "iptables", "ipvs", "nftables"}

// Cases returns the cases for a mode: one per fault that breaks a promise
// the mode makes.
func Cases(mode string) ([]Case, error) {
	if !slices.Contains(Modes, mode) {
		return nil, fmt.Errorf("no self-test cases for mode %q: use one of %s", mode, strings.Join(Modes, ", "))
	}
	var cs []Case
	for _, t := range table {
		if len(t.modes) == 0 || slices.Contains(t.modes, mode) {
			cs = append(cs, t.Case)
		}
	}
	return cs, nil
}

// Runs lists the runs a self-test makes, in order: each fault's case with
// the labels selecting its feature, then the unbroken proxier over the
// whole suite (no labels), so that the self-test is also the mode's
// conformance run. Lines are "<name> [<labels>]", for the Makefile.
func Runs(cs []Case) []string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s feature=%s", c.Name(), c.Feature))
	}
	return append(out, Unbroken)
}

// Row is one judged case.
type Row struct {
	Fault, Breaks, Mode, Feature, Assessment string
	// Caught: the assessment failed. Evidence is its first failure.
	Caught   bool
	Evidence string
}

// Result is a judged self-test.
type Result struct {
	Mode string
	Rows []Row
	// UnbrokenFailures lists what failed for the shipped proxier; it must
	// be empty.
	UnbrokenFailures []string
	// Broken lists runs that could not be judged.
	Broken []string
}

// OK says whether every fault was caught and the unbroken run passed.
func (r *Result) OK() bool {
	if len(r.Broken) > 0 || len(r.UnbrokenFailures) > 0 {
		return false
	}
	for _, row := range r.Rows {
		if !row.Caught {
			return false
		}
	}
	return true
}

// Evaluate reads dir/<case name>/results.json for every case and
// dir/unbroken/results.json.
func Evaluate(dir, mode string) (*Result, error) {
	cs, err := Cases(mode)
	if err != nil {
		return nil, err
	}
	res := &Result{Mode: mode}
	for _, c := range cs {
		run, err := load(filepath.Join(dir, c.Name()))
		if err != nil {
			res.Broken = append(res.Broken, fmt.Sprintf("%s: %v", c.Name(), err))
		}
		for _, name := range c.Assessments {
			row := Row{Fault: string(c.Fault), Breaks: fault.Descriptions[c.Fault], Mode: mode, Feature: c.Feature, Assessment: name}
			if run != nil {
				a := find(run, name)
				switch {
				case a == nil:
					row.Evidence = "the assessment did not run"
				case a.Status == report.Fail && len(a.Failures) > 0:
					row.Caught, row.Evidence = true, report.FirstLine(a.Failures[0])
				case a.Status == report.Fail:
					row.Caught, row.Evidence = true, "failed"
				default:
					row.Evidence = fmt.Sprintf("NOT CAUGHT: %s %s", a.Status, a.Reason)
				}
			}
			res.Rows = append(res.Rows, row)
		}
		if run != nil {
			for _, e := range run.Errors {
				res.Broken = append(res.Broken, fmt.Sprintf("%s: %s", c.Name(), report.FirstLine(e)))
			}
		}
		if run != nil && run.Settings["fault"] != string(c.Fault) {
			res.Broken = append(res.Broken, fmt.Sprintf("%s: the run's settings name fault %q: it did not run the broken build", c.Name(), run.Settings["fault"]))
		}
	}
	run, err := load(filepath.Join(dir, Unbroken))
	if err != nil {
		res.Broken = append(res.Broken, fmt.Sprintf("%s: %v", Unbroken, err))
	} else {
		if f := run.Settings["fault"]; f != "" {
			res.Broken = append(res.Broken, fmt.Sprintf("%s: ran with fault %q", Unbroken, f))
		}
		for _, f := range run.Features {
			for _, a := range f.Assessments {
				if a.Status == report.Fail {
					res.UnbrokenFailures = append(res.UnbrokenFailures, fmt.Sprintf("%s / %s: %s", f.Name, a.Name, strings.Join(a.Failures, "; ")))
				}
			}
		}
		for _, e := range run.Errors {
			res.UnbrokenFailures = append(res.UnbrokenFailures, report.FirstLine(e))
		}
		// A fault's catch means something only if the shipped proxier
		// passes the same assessment: skipped or missing is not passing.
		for _, c := range cs {
			for _, name := range c.Assessments {
				if a := find(run, name); a == nil {
					res.UnbrokenFailures = append(res.UnbrokenFailures, fmt.Sprintf("%s: did not run", name))
				} else if a.Status != report.Pass && a.Status != report.Fail {
					res.UnbrokenFailures = append(res.UnbrokenFailures, fmt.Sprintf("%s: %s %s", name, a.Status, a.Reason))
				}
			}
		}
	}
	return res, nil
}

func load(dir string) (*report.Run, error) {
	run, err := report.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no results: the run died before writing them (see %s.log): %w", dir, err)
	}
	return run, err
}

func find(run *report.Run, assessment string) *report.Assessment {
	for _, f := range run.Features {
		for _, a := range f.Assessments {
			if a.Name == assessment {
				return a
			}
		}
	}
	return nil
}

// WriteMarkdown renders the table the README records.
func (r *Result) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "| broken behaviour | mode | fault | assessment that caught it | evidence |\n|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		caught := row.Assessment
		if !row.Caught {
			caught = "**NOT CAUGHT** by " + row.Assessment
		}
		fmt.Fprintf(w, "| %s | %s | `%s` | %s | %s |\n", row.Breaks, row.Mode, row.Fault, caught, strings.ReplaceAll(row.Evidence, "|", "\\|"))
	}
	if len(r.UnbrokenFailures) == 0 && len(r.Broken) == 0 {
		fmt.Fprintf(w, "\nThe unbroken proxier passed the whole suite, these assessments included.\n")
	}
	for _, f := range r.UnbrokenFailures {
		fmt.Fprintf(w, "\nUNBROKEN PROXIER FAILED: %s\n", f)
	}
	for _, b := range r.Broken {
		fmt.Fprintf(w, "\nBROKEN RUN: %s\n", b)
	}
}
