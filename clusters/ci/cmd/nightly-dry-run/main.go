// Command nightly-dry-run runs the nightly workflow's jobs on this
// machine, shortened, in the workflow's order, with the runner's
// environment (make nightly-dry-run; see README.md, "Nightly workflow").
//
//	nightly-dry-run --plan                      # print what would run; run nothing
//	nightly-dry-run --only soak/iptables/kube-proxy,bench
//	nightly-dry-run                             # every leg; ends with a table
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/clusters/ci/dryrun"
	"github.com/proxymodes/proxymodes/harness/hostipvs"
)

func main() {
	os.Exit(run())
}

func run() int {
	plan := flag.Bool("plan", false, "print each job's and leg's commands and environment; run nothing")
	var only []string
	flag.Func("only", "run only job or job/leg (a leg prefix such as conformance/ipvs selects several); comma-separated or repeated", func(s string) error {
		for _, o := range strings.Split(s, ",") {
			if o = strings.TrimSpace(o); o != "" {
				only = append(only, o)
			}
		}
		return nil
	})
	workspace := flag.String("workspace", "", "the checkout (default: the repository around the working directory)")
	workflow := flag.String("workflow", ".github/workflows/nightly.yaml", "the workflow, relative to the workspace")
	out := flag.String("out", filepath.Join(os.TempDir(), "proxymodes-nightly-dry-run", time.Now().Format("20060102-150405")), "where each leg's log, RUNNER_TEMP and artifacts go")
	cache := flag.String("machine-cache", "/var/cache/proxymodes", "this machine's proxymodes cache (the Makefile's CACHE), which the workflow's cache steps stand for")
	verbose := flag.Bool("v", false, "also print the steps' output (it is in each leg's log either way)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "nightly-dry-run: unexpected arguments %q\n", flag.Args())
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "nightly-dry-run: %v\n", err)
		return 1
	}
	ws := *workspace
	if ws == "" {
		var err error
		if ws, err = findWorkspace(*workflow); err != nil {
			return fail(err)
		}
	}
	ws, err := filepath.Abs(ws)
	if err != nil {
		return fail(err)
	}
	wf, err := dryrun.Load(filepath.Join(ws, *workflow))
	if err != nil {
		return fail(err)
	}
	wf.Path = *workflow
	makefile, err := os.ReadFile(filepath.Join(ws, "Makefile"))
	if err != nil {
		return fail(err)
	}
	root := os.Geteuid() == 0
	shim, note := false, ""
	if _, err := exec.LookPath("sudo"); err == nil {
		note = "installed: the steps' sudo is the real one (as on a runner, it must not ask for a password)"
	} else if root {
		shim, note = true, "not installed; the dry run runs as root, so PATH starts with a shim that drops sudo's options (-E) and runs the rest"
	} else {
		note = "not installed, and the dry run is not root: the steps could not get root"
		if !*plan {
			return fail(fmt.Errorf("sudo is not installed and this is not root: run the dry run as root"))
		}
	}
	d, err := dryrun.New(dryrun.Config{
		Workflow: wf, Workspace: ws, Makefile: makefile, MachineCache: *cache,
		Shortenings: dryrun.Shortenings, Wholes: dryrun.Wholes,
		Limits:  []dryrun.HostLimit{dryrun.IPVSLimit(hostipvs.Host)},
		Only:    only,
		Environ: os.Environ(), SudoShim: shim, SudoNote: note,
		Git: func(f string) (string, error) { return git(ws, f) },
	})
	if err != nil {
		return fail(err)
	}
	if *plan {
		if err := d.Plan(os.Stdout); err != nil {
			return fail(err)
		}
		return 0
	}
	if root {
		if p, err := dryrun.ForeignOwned(ws); err != nil {
			return fail(err)
		} else if p != "" {
			return fail(fmt.Errorf("%s is not root's: run as root, the workflow's \"Hand root's files back to the runner\" step would chown the checkout to root; run the dry run in a checkout root owns", p))
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fail(err)
	}
	pf, err := os.Create(filepath.Join(*out, "plan.txt"))
	if err != nil {
		return fail(err)
	}
	err = d.Plan(pf)
	pf.Close()
	if err != nil {
		return fail(err)
	}
	fmt.Printf("nightly-dry-run: %d legs of %s; the plan, logs, kept RUNNER_TEMPs and artifacts go to %s\n", len(d.Legs()), *workflow, *out)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results, err := d.Run(ctx, dryrun.Options{OutDir: *out, Out: os.Stdout, Verbose: *verbose})
	if err != nil {
		return fail(err)
	}
	fmt.Println()
	dryrun.Table(os.Stdout, results)
	fmt.Printf("logs and artifacts: %s\n", *out)
	if !dryrun.OK(results) {
		return 1
	}
	return 0
}

// findWorkspace walks up from the working directory to the checkout that
// holds the workflow.
func findWorkspace(workflow string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, workflow)); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no %s in %s or above it: give --workspace", workflow, dir)
		}
	}
}

// git answers github.ref and github.sha from the checkout; a detached
// checkout has no branch, so its ref is the commit.
func git(ws, field string) (string, error) {
	if field == "ref" {
		if out, err := exec.Command("git", "-C", ws, "symbolic-ref", "-q", "HEAD").Output(); err == nil {
			return strings.TrimSpace(string(out)), nil
		}
	}
	out, err := exec.Command("git", "-C", ws, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", fmt.Errorf("github.%s: git rev-parse HEAD in %s: %v", field, ws, err)
	}
	return strings.TrimSpace(string(out)), nil
}
