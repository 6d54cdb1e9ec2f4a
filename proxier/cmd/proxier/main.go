// Command proxier is the reference Service proxy of proxymodes. Its flags
// follow kube-proxy's. Run it in a node's network namespace with a
// kubeconfig:
//
//	proxier --proxy-mode=iptables --kubeconfig=/etc/kube/node.conf --hostname-override=node-1 --cluster-cidr=198.18.64.0/18
//
// --cleanup removes everything any mode may have created in the current
// network namespace and exits. --init-only does the set-up that needs full
// privileges (the ipvs mode's sysctls) and exits, so that in a cluster the
// proxier itself can run with only NET_ADMIN and NET_RAW (kube-proxy has
// the same flag).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/proxymodes/proxymodes/proxier/conntrack"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/iptables"
	"github.com/proxymodes/proxymodes/proxier/ipvs"
	"github.com/proxymodes/proxymodes/proxier/metrics"
	"github.com/proxymodes/proxymodes/proxier/nftables"
	"github.com/proxymodes/proxymodes/proxier/server"
	"github.com/proxymodes/proxymodes/proxier/userspace"
)

// Modes lists the valid --proxy-mode values.
var Modes = []string{"userspace", "iptables", "ipvs", "nftables"}

type options struct {
	mode               string
	kubeconfig         string
	master             string
	hostname           string
	clusterCIDR        string
	minSyncPeriod      time.Duration
	syncPeriod         time.Duration
	fullSyncPeriod     time.Duration
	metricsBindAddress string
	healthzBindAddress string
	cleanup            bool
	initOnly           bool
	ipvsScheduler      string
	masqueradeAll      bool
	masqueradeBit      int
	iptablesBackend    string
	conntrackCleanup   bool
	apiQPS             float64
	apiBurst           int
}

func newFlagSet(o *options, errOut io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("proxier", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&o.mode, "proxy-mode", "iptables", "which proxy mode to use: "+strings.Join(Modes, ", "))
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to a kubeconfig file (empty: in-cluster config)")
	fs.StringVar(&o.master, "master", "", "API server address, overriding the kubeconfig")
	fs.StringVar(&o.hostname, "hostname-override", "", "the node name to use instead of the hostname")
	fs.StringVar(&o.clusterCIDR, "cluster-cidr", "", "the pod CIDR; traffic to cluster IPs from outside it is masqueraded")
	fs.DurationVar(&o.minSyncPeriod, "min-sync-period", time.Second, "minimum time between rule syncs")
	fs.DurationVar(&o.syncPeriod, "sync-period", 30*time.Second, "maximum time between rule syncs")
	fs.DurationVar(&o.fullSyncPeriod, "full-sync-period", time.Hour, "maximum time between full rule rewrites (a failed sync always forces one)")
	fs.StringVar(&o.metricsBindAddress, "metrics-bind-address", "127.0.0.1:10249", "address for /metrics (empty disables)")
	fs.StringVar(&o.healthzBindAddress, "healthz-bind-address", "127.0.0.1:10256", "address for /healthz (empty disables)")
	fs.BoolVar(&o.cleanup, "cleanup", false, "remove every rule this proxier can have created in the current network namespace, then exit")
	fs.BoolVar(&o.initOnly, "init-only", false, "do the set-up of --proxy-mode that needs full privileges (ipvs: sysctls), then exit; run this from a privileged init container")
	fs.StringVar(&o.ipvsScheduler, "ipvs-scheduler", "rr", "IPVS scheduler (ipvs mode)")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", false, "masquerade all traffic sent to cluster IPs")
	fs.IntVar(&o.masqueradeBit, "iptables-masquerade-bit", 14, "fwmark bit (0-31) flagging packets for SNAT")
	fs.StringVar(&o.iptablesBackend, "iptables-backend", "auto", fmt.Sprintf("iptables flavour: %v (auto honours $%s, then the system iptables)", iptables.Variants, iptables.EnvVariant))
	fs.BoolVar(&o.conntrackCleanup, "conntrack-cleanup", true, "delete stale UDP conntrack entries when backends go away")
	fs.Float64Var(&o.apiQPS, "kube-api-qps", 50, "QPS to the API server")
	fs.IntVar(&o.apiBurst, "kube-api-burst", 100, "burst to the API server")
	fault.Register(fs)
	return fs
}

// newExec is the command runner; tests replace it.
var newExec = func() iptables.Exec { return iptables.OSExec{} }

// newSysctl reaches the kernel's parameters; tests replace it.
var newSysctl = func() ipvs.Sysctl { return ipvs.ProcSysctl{} }

func main() {
	klog.InitFlags(nil)
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run parses args and runs the proxier; it returns the exit code.
func run(args []string, errOut io.Writer) int {
	var o options
	fs := newFlagSet(&o, errOut)
	// klog's flags (-v, --logtostderr, ...) live on the default set.
	flag.CommandLine.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(errOut, "proxier: unexpected arguments %v\n", fs.Args())
		return 2
	}
	defer klog.Flush()
	if f := fault.Current(); f != "" {
		klog.InfoS("SELF-TEST BUILD: breaking a promise on purpose", "fault", f, "breaks", fault.Descriptions[f])
	}
	o.masqueradeAll = fault.MasqueradeAll(o.masqueradeAll)

	if o.cleanup {
		if err := cleanupAll(newExec()); err != nil {
			fmt.Fprintf(errOut, "proxier: cleanup: %v\n", err)
			return 1
		}
		klog.InfoS("Cleanup done")
		return 0
	}

	if o.initOnly {
		if err := initOnly(o.mode, newSysctl()); err != nil {
			fmt.Fprintf(errOut, "proxier: --init-only: %v\n", err)
			return 1
		}
		klog.InfoS("Initialisation done", "mode", o.mode)
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, o); err != nil {
		fmt.Fprintf(errOut, "proxier: %v\n", err)
		return 1
	}
	klog.InfoS("Stopped")
	return 0
}

// buildMode validates the flags of the chosen mode and constructs it.
func buildMode(o options, m *metrics.Metrics, ex iptables.Exec) (core.Mode, error) {
	if !slices.Contains(Modes, o.mode) {
		return nil, fmt.Errorf("--proxy-mode=%q is not a proxy mode: valid modes are %s", o.mode, strings.Join(Modes, ", "))
	}
	var cidr netip.Prefix
	if o.clusterCIDR != "" {
		var err error
		if cidr, err = netip.ParsePrefix(o.clusterCIDR); err != nil {
			return nil, fmt.Errorf("--cluster-cidr=%q: %v (want e.g. 198.18.64.0/18)", o.clusterCIDR, err)
		}
	}
	if o.mode == "nftables" {
		nft, err := nftables.NewInterface()
		if err != nil {
			return nil, fmt.Errorf("nftables mode: %w (it needs nft, Debian package nftables, and a kernel with nf_tables)", err)
		}
		klog.InfoS("Using nftables", "table", "ip "+nftables.TableName)
		return nftables.New(nftables.Config{NFT: nft, ClusterCIDR: cidr, MasqueradeAll: o.masqueradeAll, MasqueradeBit: o.masqueradeBit})
	}
	// Every other mode needs iptables: for its rules (iptables), its
	// portals (userspace) or its masquerade marks (ipvs).
	v, err := iptables.ParseVariant(o.iptablesBackend)
	if err != nil {
		return nil, fmt.Errorf("--iptables-backend: %w", err)
	}
	if v, err = iptables.Detect(ex, v); err != nil {
		return nil, err
	}
	be, err := iptables.NewBackend(ex, v)
	if err != nil {
		return nil, err
	}
	switch o.mode {
	case "iptables":
		klog.InfoS("Using iptables", "backend", v)
		return iptables.New(iptables.Config{
			Backend: be, ClusterCIDR: cidr, MasqueradeAll: o.masqueradeAll, MasqueradeBit: o.masqueradeBit, Metrics: m,
		})
	case "userspace":
		klog.InfoS("Using iptables for userspace portals", "backend", v)
		if n, err := userspace.RaiseOpenFileLimit(); err != nil {
			klog.ErrorS(err, "Open-file limit not raised: the userspace mode holds a socket per service port", "limit", n)
		} else {
			klog.InfoS("Open-file limit", "limit", n)
		}
		return userspace.New(userspace.Config{Backend: be})
	case "ipvs":
		if fault.Current() == fault.RoundRobinBroken {
			o.ipvsScheduler = "sh"
		}
		sched, err := ipvs.ParseScheduler(o.ipvsScheduler)
		if err != nil {
			return nil, fmt.Errorf("--ipvs-scheduler: %w", err)
		}
		klog.InfoS("Using IPVS", "scheduler", sched, "iptablesBackend", v)
		return ipvs.New(ipvs.Config{
			Scheduler: sched, IPTables: be, ClusterCIDR: cidr, MasqueradeAll: o.masqueradeAll, MasqueradeBit: o.masqueradeBit, Metrics: m,
		})
	}
	panic("unreachable: mode validated above")
}

// initOnly does what mode needs done with privileges the proxier should
// not keep: only IPVS writes sysctls, which an unprivileged container
// cannot (its /proc/sys is read-only).
func initOnly(mode string, s ipvs.Sysctl) error {
	if !slices.Contains(Modes, mode) {
		return fmt.Errorf("--proxy-mode=%q is not a proxy mode: valid modes are %s", mode, strings.Join(Modes, ", "))
	}
	if mode == "ipvs" {
		return ipvs.EnsureSysctls(s)
	}
	return nil
}

func nodeName(o options) (string, error) {
	if o.hostname != "" {
		return strings.ToLower(strings.TrimSpace(o.hostname)), nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("cannot read the hostname (%v); pass --hostname-override", err)
	}
	return strings.ToLower(strings.TrimSpace(h)), nil
}

func serve(ctx context.Context, o options) error {
	if o.minSyncPeriod > o.syncPeriod {
		return fmt.Errorf("--min-sync-period (%v) must not exceed --sync-period (%v)", o.minSyncPeriod, o.syncPeriod)
	}
	m := metrics.New()
	mode, err := buildMode(o, m, newExec())
	if err != nil {
		return err
	}
	node, err := nodeName(o)
	if err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags(o.master, o.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig %q: %w", o.kubeconfig, err)
	}
	restCfg.QPS, restCfg.Burst = float32(o.apiQPS), o.apiBurst
	restCfg.ContentType = "application/vnd.kubernetes.protobuf"
	restCfg.UserAgent = "proxymodes-proxier/" + o.mode
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("creating API client: %w", err)
	}

	health := server.NewHealth(nil, 2*o.syncPeriod+o.minSyncPeriod)
	cfg := server.Config{
		Client: client, NodeName: node, Mode: mode,
		MinSyncPeriod: o.minSyncPeriod, SyncPeriod: o.syncPeriod, FullSyncPeriod: o.fullSyncPeriod,
		Metrics: m, Health: health, ServiceHealth: server.NewServiceHealth(health, nil),
	}
	if o.conntrackCleanup {
		cfg.Conntrack = conntrack.NewUDPCleaner()
	}
	p, err := server.New(cfg)
	if err != nil {
		return err
	}
	if err := server.Listen(ctx, o.metricsBindAddress, server.MetricsMux(m.Registry, health, o.mode)); err != nil {
		return fmt.Errorf("--metrics-bind-address: %w", err)
	}
	if err := server.Listen(ctx, o.healthzBindAddress, server.HealthMux(health)); err != nil {
		return fmt.Errorf("--healthz-bind-address: %w", err)
	}
	klog.InfoS("Starting proxier", "mode", mode.Name(), "node", node, "clusterCIDR", o.clusterCIDR,
		"minSyncPeriod", o.minSyncPeriod, "syncPeriod", o.syncPeriod)
	return p.Run(ctx)
}

// cleanupAll removes what any mode can have created in this network
// namespace: iptables rules of both flavours and the nftables mode's table
// (tools that are missing or unusable here are skipped).
func cleanupAll(ex iptables.Exec) error {
	var errs []error
	if _, err := ex.LookPath("nft"); err != nil {
		klog.V(2).InfoS("Skipping nftables cleanup: nft not installed")
	} else if nft, err := nftables.NewInterface(); err != nil {
		// e.g. a kernel without nf_tables.
		klog.InfoS("Skipping nftables cleanup: nft unusable here", "err", err)
	} else if err := nftables.CleanupTable(context.Background(), nft); err != nil {
		errs = append(errs, err)
	}
	for _, v := range []iptables.Variant{iptables.VariantNFT, iptables.VariantLegacy} {
		if _, err := ex.LookPath(fmt.Sprintf("iptables-%s-restore", v)); err != nil {
			klog.V(2).InfoS("Skipping iptables cleanup: tools not installed", "backend", v)
			continue
		}
		be, err := iptables.NewBackend(ex, v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := be.Save(); err != nil {
			// e.g. iptables-nft in a kernel without nf_tables.
			klog.InfoS("Skipping iptables cleanup: backend unusable here", "backend", v, "err", err)
			continue
		}
		if err := iptables.CleanupBackend(be); err != nil {
			errs = append(errs, fmt.Errorf("iptables-%s: %w", v, err))
			continue
		}
		klog.V(1).InfoS("Cleaned up iptables rules", "backend", v)
	}
	return errors.Join(errs...)
}
