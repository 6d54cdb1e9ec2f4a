// Command controlplane runs a whole Kubernetes control plane in one process:
// embedded etcd, kube-apiserver and kube-controller-manager, all from the
// pinned k8s.io/kubernetes module. One process starts in seconds, needs no
// container images and stops cleanly on SIGTERM, which is what the local lab
// needs.
//
// Usage:
//
//	controlplane --data-dir DIR --etcd-port N \
//	    --kube-apiserver <kube-apiserver flags...> \
//	    --kube-controller-manager <kube-controller-manager flags...>
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/rest"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	"k8s.io/component-base/version"
	genericcm "k8s.io/controller-manager/app"
	"k8s.io/klog/v2"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

// splitArgs cuts the command line at the two component markers.
func splitArgs(args []string) (own, apiserver, kcm []string, err error) {
	cur := &own
	for _, a := range args {
		switch a {
		case "--kube-apiserver":
			cur = &apiserver
		case "--kube-controller-manager":
			cur = &kcm
		default:
			*cur = append(*cur, a)
		}
	}
	return own, apiserver, kcm, nil
}

func run(args []string) error {
	own, apiArgs, kcmArgs, err := splitArgs(args)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("controlplane", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "etcd data directory")
	etcdPort := fs.Int("etcd-port", 2379, "etcd client port on 127.0.0.1")
	showVersion := fs.Bool("version", false, "print the pinned Kubernetes version and exit")
	if err := fs.Parse(own); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(versionString())
		return nil
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	if apiArgs == nil {
		return errors.New("missing --kube-apiserver section")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	etcd, err := startEtcd(*dataDir, *etcdPort)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	// The apiserver must stop before etcd, or its shutdown hangs on storage.
	defer etcd.Close()

	apiDone := make(chan error, 1)
	if err := startAPIServer(ctx, apiArgs, apiDone); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	kcmDone := make(chan error, 1)
	if kcmArgs != nil {
		if err := startControllerManager(ctx, kcmArgs, kcmDone); err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
	}

	select {
	case <-ctx.Done():
	case err := <-apiDone:
		return fmt.Errorf("kube-apiserver exited: %v", err)
	case err := <-kcmDone:
		return fmt.Errorf("kube-controller-manager exited: %v", err)
	case err := <-etcd.Err():
		return fmt.Errorf("etcd failed: %v", err)
	}
	select {
	case <-apiDone:
	case <-time.After(10 * time.Second):
		klog.Warning("kube-apiserver did not stop within 10s")
	}
	return nil
}

func startEtcd(dir string, port int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "lab"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port+1)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready after 60s")
	}
}

func startAPIServer(ctx context.Context, args []string, done chan<- error) error {
	s := apiserveroptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	if err := logsapi.ValidateAndApply(s.Logs, utilfeature.DefaultFeatureGate); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return errors.Join(errs...)
	}
	go func() { done <- apiserverapp.Run(ctx, completed) }()
	return nil
}

func startControllerManager(ctx context.Context, args []string, done chan<- error) error {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	all, off, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	nfs := s.Flags(all, off, aliases)
	s.ParsedFlags = &nfs
	for _, f := range nfs.FlagSets {
		// Logging flags are shared with the apiserver and already applied.
		if f.Name() == "logging" {
			continue
		}
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := s.Config(ctx, all, off, aliases)
	if err != nil {
		return err
	}
	go func() {
		// kube-controller-manager gives the API server 10 s to turn
		// healthy and exits otherwise. With labs starting side by side
		// on 2 busy cores the API server's bootstrap roles took longer
		// (2026-12-07, three labs beside make test), and the whole lab
		// failed; so it starts once the API server is healthy, which
		// may take up to apiHealthyWithin.
		deadline := time.Now().Add(apiHealthyWithin)
		for {
			err := genericcm.WaitForAPIServer(c.Client, 10*time.Second)
			if err == nil {
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				done <- fmt.Errorf("the API server was not healthy within %s: %w", apiHealthyWithin, err)
				return
			}
		}
		done <- kcmapp.Run(ctx, c.Complete())
	}()
	return nil
}

// apiHealthyWithin bounds the wait for the API server before the
// controller manager starts.
const apiHealthyWithin = 3 * time.Minute

// The version is stamped at link time with -X k8s.io/component-base/version.gitVersion.
func versionString() string {
	return "controlplane " + version.Get().GitVersion
}
