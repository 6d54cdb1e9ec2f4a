package controlplane_test

import (
	"context"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/controlplane"
	"github.com/proxymodes/proxymodes/harness/labtest"
)

func TestMain(m *testing.M) { os.Exit(labtest.Run(m)) }

func client(t *testing.T, c *controlplane.ControlPlane) kubernetes.Interface {
	t.Helper()
	cs, err := cluster.NewClient(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func service(name string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
}

// The API server restart check rests on this: what a stand-in writes while
// the control plane is stopped is what the control plane serves once it
// resumes on the same port and credentials, and the stand-in leaves the
// kubernetes Service's endpoint (the port clients know) alone.
func TestStandInWritesWhatTheResumedControlPlaneServes(t *testing.T) {
	bin, err := binaries.Kubernetes("controlplane", labtest.LogWriter(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Config{Binary: bin, Dir: t.TempDir(), Address: addrplan.APIServer(),
		BindAddress: netip.MustParseAddr("127.0.0.1"), ServiceCIDR: addrplan.Services})
	if err != nil {
		t.Fatal(err)
	}
	var standIn *controlplane.ControlPlane
	unregister := labtest.OnInterrupt(func(context.Context) error {
		if standIn != nil {
			standIn.Stop()
		}
		return cp.Stop()
	})
	defer func() {
		unregister()
		if standIn != nil {
			standIn.Stop()
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	}()
	t.Logf("control plane ready in %s", time.Since(start).Round(time.Millisecond))
	main := client(t, cp)
	svcs := main.CoreV1().Services("default")
	if _, err := svcs.Create(ctx, service("before"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The bootstrap controller publishes the kubernetes Service's
	// endpoint a little after /readyz; the stand-in must leave it.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(250 * time.Millisecond) {
		_, err := main.CoreV1().Endpoints("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kubernetes Service's endpoints: %v", err)
		}
	}
	if _, err := cp.StandIn(ctx); err == nil {
		t.Fatal("a stand-in started beside a running control plane, on its etcd")
	}
	if err := cp.Resume(ctx); err == nil {
		t.Fatal("Resume of a running control plane did not fail")
	}

	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Get(ctx, "before", metav1.GetOptions{}); err == nil {
		t.Fatal("the stopped control plane still answers on its port")
	}
	start = time.Now()
	if standIn, err = cp.StandIn(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("stand-in ready at %s in %s", standIn.URL(), time.Since(start).Round(time.Millisecond))
	if standIn.URL() == cp.URL() {
		t.Fatalf("the stand-in listens where the control plane's clients connect (%s)", cp.URL())
	}
	other := client(t, standIn).CoreV1().Services("default")
	if _, err := other.Get(ctx, "before", metav1.GetOptions{}); err != nil {
		t.Fatalf("the stand-in does not serve the control plane's storage: %v", err)
	}
	if _, err := other.Create(ctx, service("during"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := other.Delete(ctx, "before", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ep, err := client(t, standIn).CoreV1().Endpoints("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ep.Subsets {
		for _, p := range s.Ports {
			if u, _ := url.Parse(cp.URL()); u.Port() != strconv.Itoa(int(p.Port)) {
				t.Errorf("the kubernetes Service's endpoint port is %d, want the control plane's %s, not the stand-in's", p.Port, u.Port())
			}
		}
	}
	if err := standIn.Stop(); err != nil {
		t.Fatal(err)
	}
	standIn = nil

	start = time.Now()
	if err := cp.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane resumed in %s", time.Since(start).Round(time.Millisecond))
	if _, err := svcs.Get(ctx, "during", metav1.GetOptions{}); err != nil {
		t.Errorf("the Service the stand-in created: %v", err)
	}
	if _, err := svcs.Get(ctx, "before", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the Service the stand-in deleted: got %v, want not found", err)
	}
}
