// Command proxymodes drives the harness: it brings labs up and down and
// reports on them.
//
//	proxymodes lab up [--name lab] [--nodes 2] [--pods 0] [--mode iptables] [--impl reference]
//	proxymodes lab status [--name lab]
//	proxymodes lab down [--name lab]
//	proxymodes preflight [--install] [--kind]
//	proxymodes bench [flags]
//	proxymodes kind image [--all] | cleanup
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/proxymodes/proxymodes/harness/agent"
	_ "github.com/proxymodes/proxymodes/harness/backend" // the pods' backend role
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/preflight"
)

const usage = `usage:
  proxymodes lab up [--name NAME] [--nodes N] [--pods N] [--mode MODE] [--impl reference|kube-proxy] [--kernel host|uml]
                                                            start a local lab and leave it running
  proxymodes lab status [--name NAME]                       print nodes, pods, API address, kubeconfig
  proxymodes lab down [--name NAME]                         remove a lab, including leftovers of killed runs
  proxymodes preflight [--install] [--kind]                 check root, tools and kernel features (--kind: and kind's)
  proxymodes bench [--services 100,1000,5000,10000] [--label L] [--out results] ...
                                                            run the load benchmark sweep into results/<date>-<label>
  proxymodes kind image [--all]                             build (once) the offline kind node image in the private
                                                            docker daemon and print its tag (--all: also base, proxier, echo)
  proxymodes kind cleanup                                   remove what a killed run's private docker daemon left
  proxymodes report DIR | OLD NEW                           render a result set again, or compare two like benchstat
  proxymodes soak DIR                                       tally the runs of a soak (make soak) into DIR/SOAK.md
  proxymodes selftest cases MODE | report DIR MODE          list the runs of make selftest, or judge them into DIR/SELFTEST.md
`

type stderrLogger struct{}

func (stderrLogger) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

func main() {
	agent.Init()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxymodes:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "soak":
		return runSoak(args[1:], out)
	case "selftest":
		return runSelftest(args[1:], out)
	case "lab":
		if len(args) < 2 {
			return errors.New("missing lab command: up, status or down")
		}
		return labCmd(ctx, args[1], args[2:], out)
	case "preflight":
		fs := flag.NewFlagSet("preflight", flag.ContinueOnError)
		install := fs.Bool("install", false, "install missing Debian packages with apt-get")
		kind := fs.Bool("kind", false, "also check (and install) what kind clusters need: Debian's docker.io, debootstrap, jq, gcc")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if err := preflight.Check(ctx, preflight.Options{Install: *install, Kind: *kind, Logger: stderrLogger{}}); err != nil {
			return err
		}
		fmt.Fprintln(out, "preflight: ok")
		return nil
	case "bench":
		return benchCmd(ctx, args[1:], out)
	case "kind":
		return kindCmd(ctx, args[1:], out)
	case "report":
		return runReport(args[1:], out)
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func labCmd(ctx context.Context, sub string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("lab "+sub, flag.ContinueOnError)
	name := fs.String("name", "lab", "lab name (1-8 lower-case letters or digits)")
	nodes := fs.Int("nodes", 2, "number of nodes")
	pods := fs.Int("pods", 0, "echo-backend pods to start, spread over the nodes (label app=echo)")
	kernel := fs.String("kernel", "", "where the nodes run: host, uml (a user-mode Linux guest), or empty to choose by mode")
	mode := fs.String("mode", "", "run a proxier on every node in this mode (userspace, iptables, ipvs); empty runs none")
	impl := fs.String("impl", local.ImplReference, "the proxier: reference or kube-proxy (upstream v1.37.2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch sub {
	case "up":
		opts := local.Options{Name: *name, Nodes: *nodes, Logger: stderrLogger{}, BuildOutput: os.Stderr, Persistent: true, Kernel: *kernel}
		if *mode != "" {
			opts.Proxier = &local.ProxierOptions{Mode: *mode, Impl: *impl}
		}
		lab, err := local.Up(ctx, opts)
		if err != nil {
			return err
		}
		for i := 0; i < *pods; i++ {
			spec := cluster.PodSpec{Namespace: "default", Name: fmt.Sprintf("echo-%d", i+1), Labels: map[string]string{"app": "echo"}}
			if _, err := lab.AddPod(ctx, spec); err != nil {
				return errors.Join(err, lab.Down(context.Background()))
			}
		}
		return printStatus(*name, out)
	case "status":
		return printStatus(*name, out)
	case "down":
		return local.Down(ctx, *name, stderrLogger{})
	}
	return fmt.Errorf("unknown lab command %q: use up, status or down", sub)
}

func printStatus(name string, out io.Writer) error {
	info, err := local.Status(name)
	if err != nil {
		return err
	}
	pods, err := local.StatusPods(name)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "lab:        %s (%s provider)\n", info.Name, info.Provider)
	fmt.Fprintf(out, "API server: %s\n", info.APIServer)
	fmt.Fprintf(out, "kubeconfig: %s\n", info.Kubeconfig)
	if info.APINetNS != "" {
		fmt.Fprintf(out, "isolated:   the API server is reachable only inside netns %s: ip netns exec %s kubectl --kubeconfig %s get pods\n", info.APINetNS, info.APINetNS, info.Kubeconfig)
	}
	fmt.Fprintf(out, "kernel:     %s\n\n", info.Kernel)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tIP\tPOD CIDR\tNETNS")
	for _, n := range info.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.IP, n.PodCIDR, n.NS)
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tNODE\tIP\tNETNS")
	for _, p := range pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p, p.Node, p.IP, p.NS)
	}
	return tw.Flush()
}
