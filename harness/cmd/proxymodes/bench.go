package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/bench/result"
	"github.com/proxymodes/proxymodes/bench/sweep"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	_ "github.com/proxymodes/proxymodes/harness/load" // the load generator's role
)

func benchCmd(ctx context.Context, args []string, out io.Writer) error {
	c, outDir, err := benchConfig(args)
	if err != nil {
		return err
	}
	c.Log = func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
	}
	c.BuildOutput = os.Stderr
	set, runErr := sweep.Run(ctx, c)
	if set == nil {
		return runErr
	}
	dir := result.Dir(outDir, set.Started, set.Label)
	if err := result.WriteAll(dir, set); err != nil {
		return fmt.Errorf("writing the result set: %w (run error: %v)", err, runErr)
	}
	fmt.Fprintf(out, "result set: %s (bench.txt, results.json, README.md, plots)\n", dir)
	failed := 0
	for _, p := range set.Points {
		if p.Error != "" {
			failed++
		}
	}
	if failed > 0 && runErr == nil {
		runErr = fmt.Errorf("%d of %d points failed; their errors are in %s/README.md", failed, len(set.Points), dir)
	}
	if aa, ok := set.AA(); ok {
		fmt.Fprintln(out, aa)
		if !aa.OK() && runErr == nil {
			runErr = fmt.Errorf("the A/A check found a difference between the reference proxier and itself: the method, not a proxy, differs (see %s/README.md)", dir)
		}
	}
	return runErr
}

// benchConfig parses the bench flags into a sweep and the directory its
// result sets go in.
func benchConfig(args []string) (sweep.Config, string, error) {
	d := sweep.Defaults()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	services := fs.String("services", joinInts(d.Counts), "Service counts to sweep, ascending (30000 works; expect roughly quadratic API time past 10k)")
	label := fs.String("label", d.Label, "result set label: the directory is <out>/<date>-<label>")
	outDir := fs.String("out", "results", "where result sets go")
	modes := fs.String("modes", strings.Join(d.Modes, ","), "proxy modes (nftables runs in the host kernel only)")
	backends := fs.String("backend", "", "iptables backends of the iptables mode: legacy, nft, or both (legacy,nft), each its own points (iptables-legacy, iptables-nft); empty: the host's own iptables (in a UML guest, legacy)")
	impls := fs.String("impls", strings.Join(d.Impls, ","), "implementations: reference, kube-proxy, and reference-twin (the reference again, right after itself: an A/A check)")
	kernels := fs.String("kernels", "", "host and/or uml; empty: the host kernel, plus a user-mode Linux lab for every mode when the host has no ip_vs")
	endpoints := fs.Int("endpoints", d.Endpoints, "endpoints per Service")
	repeats := fs.Int("repeats", d.Repeats, "full syncs (proxier restarts) and load runs per point")
	changes := fs.Int("changes", d.Changes, "endpoint changes timed per point")
	requests := fs.Int("requests", d.Load.Requests, "requests per load run")
	concurrency := fs.Int("concurrency", d.Load.Concurrency, "parallel requests")
	direct := fs.Bool("direct", true, "measure the no-proxy baseline (load straight to a pod IP)")
	limit := fs.Duration("limit", d.Limit, "bound on every wait inside a point")
	budget := fs.Duration("point-budget", d.PointBudget, "skip a proxier's larger points once its smaller ones predict one would take longer")
	maxServices := fs.String("max-services", "", "per-kernel cap on the Service count, e.g. uml=5000")
	labName := d.LabName
	if v := os.Getenv(local.EnvLabName); v != "" {
		labName = v
	}
	lab := fs.String("lab", labName, "the lab's name, 1-8 lower-case letters or digits (default $"+local.EnvLabName+", else "+d.LabName+"); with LAB_ISOLATED=1, runs under distinct names go side by side")
	if err := fs.Parse(args); err != nil {
		return sweep.Config{}, "", err
	}
	c := d
	var err error
	if c.Counts, err = parseInts(*services); err != nil {
		return c, "", fmt.Errorf("--services: %w", err)
	}
	c.Label, c.Modes, c.Impls, c.Kernels, c.Backends = *label, split(*modes), split(*impls), split(*kernels), split(*backends)
	for _, b := range c.Backends {
		if b != result.BackendLegacy && b != result.BackendNFT {
			return c, "", fmt.Errorf("--backend %q: use legacy, nft, or both (--backend legacy,nft)", b)
		}
	}
	c.LabName = *lab
	c.Endpoints, c.Repeats, c.Changes, c.Direct, c.Limit = *endpoints, *repeats, *changes, *direct, *limit
	c.Load.Requests, c.Load.Concurrency = *requests, *concurrency
	c.PointBudget = *budget
	if *maxServices != "" {
		c.MaxServices = map[string]int{}
		for _, kv := range split(*maxServices) {
			k, v, ok := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if !ok || err != nil {
				return c, "", fmt.Errorf("--max-services %q: want kernel=count pairs, e.g. uml=5000", kv)
			}
			c.MaxServices[k] = n
		}
	}
	return c, *outDir, nil
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range split(s) {
		n, err := strconv.Atoi(strings.ReplaceAll(strings.ReplaceAll(f, "k", "000"), "_", ""))
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(ns []int) string {
	var s []string
	for _, n := range ns {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ",")
}
