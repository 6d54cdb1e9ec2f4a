// Command kubeadm is upstream kubeadm, built from the pinned module for the
// offline kind node image. Upstream's main cannot be built from outside its
// module, so this re-declares it.
package main

import (
	"k8s.io/kubernetes/cmd/kubeadm/app"
	utilerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
)

func main() {
	utilerrors.HandleError(app.Run())
}
