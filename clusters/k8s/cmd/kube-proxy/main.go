// Command kube-proxy is upstream kube-proxy, built from the pinned
// k8s.io/kubernetes module so that the suites and benchmarks can run it
// where they run the reference proxier, with nothing downloaded but Go
// modules. It is the same main as k8s.io/kubernetes/cmd/kube-proxy; that
// package cannot be built from outside its module, so this one re-declares it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
