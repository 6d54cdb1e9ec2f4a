package manifests

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/controlplane"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/server"
)

func TestMain(m *testing.M) {
	if caps := os.Getenv(envCapsChild); caps != "" {
		os.Exit(capsChild(caps))
	}
	os.Exit(labtest.Run(m))
}

var loopback = netip.MustParseAddr("127.0.0.1")

// startAPIServer runs the pinned control plane on loopback. It needs no
// lab network and no host lock: it listens on a free loopback port and
// keeps its own etcd, so it cannot clash with a lab another package's
// tests run at the same time.
func startAPIServer(t *testing.T) *rest.Config {
	t.Helper()
	bin, err := binaries.Kubernetes("controlplane", labtest.LogWriter(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Binary: bin,
		Dir:    t.TempDir(),
		// Advertised only (the kubernetes Service's endpoint); nothing
		// dials it here.
		Address:     addrplan.APIServer(),
		BindAddress: loopback,
		ServiceCIDR: addrplan.Services,
	})
	if err != nil {
		t.Fatal(err)
	}
	unregister := labtest.OnInterrupt(func(context.Context) error { return cp.Stop() })
	t.Cleanup(func() {
		unregister()
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	t.Logf("control plane ready at %s in %s", cp.URL(), time.Since(start).Round(time.Millisecond))
	return cp.RESTConfig()
}

func newApplier(t *testing.T, cfg *rest.Config) *applier {
	t.Helper()
	a, err := NewApplier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{a}
}

type applier struct{ *Applier }

func (a *applier) apply(ctx context.Context, t *testing.T, stream []byte, dryRun bool) error {
	t.Helper()
	return a.Apply(ctx, stream, dryRun)
}

// TestAPIServer checks the manifests against a real kube-apiserver (the
// pinned build, started once for both checks).
func TestAPIServer(t *testing.T) {
	cfg := startAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := newApplier(t, cfg)
	t.Run("DryRun", func(t *testing.T) { testServerSideDryRun(ctx, t, a, cfg) })
	t.Run("RBAC", func(t *testing.T) { testRBAC(ctx, t, a, cfg) })
	t.Run("ProxierRunsWithIt", func(t *testing.T) { testProxierRuns(ctx, t, cfg) })
}

// testServerSideDryRun applies every mode's manifests with server-side
// apply and DryRun=All: the server's own validation, defaulting and
// admission (priority classes, for one) must accept them.
func testServerSideDryRun(ctx context.Context, t *testing.T, a *applier, cfg *rest.Config) {

	for _, mode := range Modes {
		t.Run(mode, func(t *testing.T) {
			if err := a.apply(ctx, t, render(t, mode), true); err != nil {
				t.Errorf("the API server rejects the %s manifests: %v", mode, err)
			}
		})
	}

	// The check itself must be able to fail: a field the API does not
	// know, and a value it does not accept.
	t.Run("rejects", func(t *testing.T) {
		good := string(render(t, "iptables"))
		for _, bad := range []struct{ name, old, new string }{
			{"unknown field", "      hostNetwork: true\n", "      hostNetwork: true\n      hostNetworking: true\n"},
			{"invalid value", "      dnsPolicy: ClusterFirstWithHostNet\n", "      dnsPolicy: Sometimes\n"},
			{"selector not matching the pods", "    matchLabels:\n      app.kubernetes.io/name: proxymodes-proxier\n", "    matchLabels:\n      app.kubernetes.io/name: someone-else\n"},
		} {
			broken := strings.Replace(good, bad.old, bad.new, 1)
			if broken == good {
				t.Fatalf("%s: the edit did not apply; update this test to the manifests", bad.name)
			}
			if err := a.apply(ctx, t, []byte(broken), true); err == nil {
				t.Errorf("%s: the dry run accepted a broken manifest", bad.name)
			} else {
				t.Logf("%s: rejected as expected: %v", bad.name, err)
			}
		}
	})

	// Admission checks priority classes on pods, not on DaemonSets, so a
	// dry run would take a misspelt one.
	cs := kubernetes.NewForConfigOrDie(cfg)
	if _, err := cs.SchedulingV1().PriorityClasses().Get(ctx, "system-node-critical", metav1.GetOptions{}); err != nil {
		t.Errorf("the DaemonSet's priority class: %v", err)
	}

	// Dry runs store nothing, so nothing may be left behind.
	if _, err := cs.AppsV1().DaemonSets(Namespace).Get(ctx, Name, metav1.GetOptions{}); err == nil {
		t.Errorf("a dry run stored the DaemonSet")
	}
}

// testRBAC applies the ServiceAccount and RBAC for real and asks the API
// server what the proxier's identity may do.
func testRBAC(ctx context.Context, t *testing.T, a *applier, cfg *rest.Config) {
	all := render(t, "iptables")
	// Everything but the DaemonSet: no node would run its pods here.
	rbacOnly := all[:strings.Index(string(all), "---\n# The reference proxier on every node")]
	if err := a.apply(ctx, t, rbacOnly, false); err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	user := "system:serviceaccount:" + Namespace + ":" + Name
	review := func(group, resource, verb string) (*authorizationv1.SubjectAccessReview, error) {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: group, Resource: resource, Verb: verb, Namespace: "default",
			},
		}}
		return cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	}
	// The authorizer reads roles and bindings from its informers, so a
	// binding just created may not count yet: under make test's load the
	// first two reviews, 50 ms after the apply, were denied (2026-12-07).
	// Wait until the first grant shows, within a bound; the table below
	// then asserts every grant and every denial.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got, err := review("", "services", "list")
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed || time.Now().After(deadline) {
			break
		}
	}
	for _, tc := range []struct {
		group, resource, verb string
		allowed               bool
	}{
		{"", "services", "list", true},
		{"", "services", "watch", true},
		{"discovery.k8s.io", "endpointslices", "list", true},
		{"discovery.k8s.io", "endpointslices", "watch", true},
		{"", "nodes", "list", true},
		{"", "nodes", "watch", true},
		{"", "events", "create", true},
		{"events.k8s.io", "events", "patch", true},
		// and nothing beyond that
		{"", "services", "update", false},
		{"discovery.k8s.io", "endpointslices", "delete", false},
		{"", "nodes", "patch", false},
		{"", "secrets", "get", false},
		{"", "pods", "list", false},
		{"", "events", "delete", false},
	} {
		got, err := review(tc.group, tc.resource, tc.verb)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != tc.allowed {
			t.Errorf("%s %s.%s: allowed=%v, want %v (%s)", tc.verb, tc.resource, tc.group, got.Status.Allowed, tc.allowed, got.Status.Reason)
		}
	}
}

// recordingMode is a proxy mode that programs nothing and hands each
// snapshot to the test.
type recordingMode struct{ snaps chan *core.Snapshot }

func (recordingMode) Name() string   { return "recording" }
func (recordingMode) Cleanup() error { return nil }
func (m recordingMode) Sync(s *core.Snapshot, _ core.ChangeSet) error {
	select {
	case m.snaps <- s:
	default:
	}
	return nil
}

// runProxierAs runs the proxier's API side (informers, change tracking,
// sync loop) as user against cfg until it has synced a snapshot that holds
// the Service, its endpoint and the Node, or until limit.
func runProxierAs(t *testing.T, cfg *rest.Config, user, node string, svc types.NamespacedName, limit time.Duration) error {
	t.Helper()
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace, "system:authenticated"}}
	client, err := kubernetes.NewForConfig(as)
	if err != nil {
		return err
	}
	mode := recordingMode{snaps: make(chan *core.Snapshot, 1)}
	p, err := server.New(server.Config{Client: client, NodeName: node, Mode: mode,
		MinSyncPeriod: 100 * time.Millisecond, SyncPeriod: 500 * time.Millisecond})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var last string
	for {
		select {
		case s := <-mode.snaps:
			for name, sp := range s.Services {
				if name.NamespacedName == svc && len(s.Endpoints[name]) == 1 && s.Node != nil && s.Node.Name == node {
					return nil
				}
				last = fmt.Sprintf("service port %v, endpoints %v, node %+v", sp, s.Endpoints[name], s.Node)
			}
		case <-ctx.Done():
			return fmt.Errorf("no sync saw the Service, its endpoint and the Node within %s (last: %q)", limit, last)
		}
	}
}

// testProxierRuns runs the proxier's real informers under its
// ServiceAccount's identity: the RBAC must let it list and watch all it
// needs, and an identity without it must get nowhere.
func testProxierRuns(ctx context.Context, t *testing.T, cfg *rest.Config) {
	cs := kubernetes.NewForConfigOrDie(cfg)
	const node = "node-1"
	svc := types.NamespacedName{Namespace: "default", Name: "proxier-rbac-check"}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Selectorless, with a slice of our own: no controller or pod needed.
	if _, err := cs.CoreV1().Services(svc.Namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(svc.Namespace).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc.Name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addrplan.PodIP(0, 0).Addr().String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := runProxierAs(t, cfg, "system:serviceaccount:"+Namespace+":"+Name, node, svc, 30*time.Second); err != nil {
		t.Errorf("the proxier under its ServiceAccount: %v", err)
	} else {
		t.Logf("the proxier under its ServiceAccount synced the Service in %s", time.Since(start).Round(time.Millisecond))
	}
	if err := runProxierAs(t, cfg, "system:serviceaccount:"+Namespace+":unbound", node, svc, 3*time.Second); err == nil {
		t.Errorf("an identity without the proxier's RBAC synced too: the check proves nothing")
	}
}
