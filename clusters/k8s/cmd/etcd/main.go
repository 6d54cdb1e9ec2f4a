// Command etcd is etcd's server from the go.etcd.io/etcd/server/v3 module
// this module already pins, for the kind node image's etcd static pod
// (kubeadm expects registry.k8s.io/etcd:3.7.0-0).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
