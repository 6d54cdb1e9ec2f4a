package manifests

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/proxymodes/proxymodes/harness/golden"
)

// example is what the golden files are rendered with: a kind cluster's
// first node gets .2 of the kind network (198.18.232.0/24).
var example = Options{Image: "proxymodes/proxier:dev", APIServer: "198.18.232.2:6443"}

func render(t *testing.T, mode string) []byte {
	t.Helper()
	o := example
	o.Mode = mode
	got, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestRenderGolden(t *testing.T) {
	for _, mode := range Modes {
		t.Run(mode, func(t *testing.T) {
			golden.Check(t, "proxier-"+mode+".yaml", render(t, mode))
		})
	}
}

// documents splits a YAML stream.
func documents(t *testing.T, stream []byte) [][]byte {
	t.Helper()
	docs, err := Documents(stream)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

// decode reads the objects strictly (unknown or duplicate fields fail),
// so a typo in a template fails here too, without an API server.
func decode(t *testing.T, stream []byte) []runtime.Object {
	t.Helper()
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var objs []runtime.Object
	for _, d := range documents(t, stream) {
		obj, _, err := dec.Decode(d, nil, nil)
		if err != nil {
			t.Fatalf("%v in\n%s", err, d)
		}
		objs = append(objs, obj)
	}
	return objs
}

func TestRenderedObjects(t *testing.T) {
	for _, mode := range Modes {
		t.Run(mode, func(t *testing.T) {
			objs := decode(t, render(t, mode))
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind)
			}
			if want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}; !slices.Equal(kinds, want) {
				t.Fatalf("objects %v, want %v in that order", kinds, want)
			}
			checkRBAC(t, objs[1].(*rbacv1.ClusterRole))
			checkDaemonSet(t, mode, objs[3].(*appsv1.DaemonSet))
		})
	}
}

func checkRBAC(t *testing.T, r *rbacv1.ClusterRole) {
	t.Helper()
	for _, rule := range r.Rules {
		for _, v := range rule.Verbs {
			write := v == "create" || v == "patch" || v == "update"
			if v == "*" || v == "get" || v == "delete" || v == "deletecollection" || (write && !slices.Equal(rule.Resources, []string{"events"})) {
				t.Errorf("rule %v grants %q: the proxier only lists and watches, and writes nothing but events", rule, v)
			}
		}
		if slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") {
			t.Errorf("rule %v uses a wildcard", rule)
		}
	}
}

func checkDaemonSet(t *testing.T, mode string, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v, dnsPolicy %s, priorityClassName %s", spec.HostNetwork, spec.DNSPolicy, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %v do not tolerate every taint", spec.Tolerations)
	}
	c := spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("proxier security context %+v: want NET_ADMIN and NET_RAW, not privileged", sc)
	}
	// Only ipvs writes sysctls, so only ipvs gets the privileged step.
	switch {
	case mode == "ipvs" && (len(spec.InitContainers) != 1 || !slices.Contains(spec.InitContainers[0].Args, "--init-only")):
		t.Errorf("ipvs needs the --init-only init container, got %v", spec.InitContainers)
	case mode != "ipvs" && len(spec.InitContainers) != 0:
		t.Errorf("%s needs no privileged init container, got %v", mode, spec.InitContainers)
	}
	if !slices.Contains(c.Args, "--proxy-mode="+mode) || !slices.Contains(c.Args, "--hostname-override=$(NODE_NAME)") ||
		!slices.Contains(c.Args, "--metrics-bind-address=127.0.0.1:10249") {
		t.Errorf("args %v", c.Args)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME %+v does not come from spec.nodeName", e)
	}
	if env["KUBERNETES_SERVICE_HOST"].Value != "198.18.232.2" || env["KUBERNETES_SERVICE_PORT"].Value != "6443" {
		t.Errorf("API server env %v %v", env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"])
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "healthz" {
			t.Errorf("%s probe %+v is not an HTTP probe on the healthz port", name, p)
		}
	}
	if c.Ports[0].ContainerPort != 10256 {
		t.Errorf("healthz port %d", c.Ports[0].ContainerPort)
	}
	mounts := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			mounts[v.HostPath.Path] = string(*v.HostPath.Type)
		}
	}
	if mounts["/lib/modules"] != "Directory" || mounts["/run/xtables.lock"] != "FileOrCreate" {
		t.Errorf("host mounts %v", mounts)
	}
}

func TestRenderRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"unknown mode", func(o *Options) { o.Mode = "ebpf" }, "use one of userspace, iptables, ipvs, nftables"},
		{"no image", func(o *Options) { o.Image = "" }, "clusters/proxier/Dockerfile"},
		{"image with a quote", func(o *Options) { o.Image = `x"y` }, "not an image reference"},
		{"no API server", func(o *Options) { o.APIServer = "" }, "IP:port"},
		{"API server by name", func(o *Options) { o.APIServer = "kind-control-plane:6443" }, "must be an IP address"},
		{"bad port", func(o *Options) { o.APIServer = "198.18.232.2:https" }, "not a port number"},
		{"pull policy", func(o *Options) { o.ImagePullPolicy = "Sometimes" }, "IfNotPresent"},
	} {
		o := example
		o.Mode = "iptables"
		tc.edit(&o)
		_, err := Render(o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestExtraArgsAreQuoted(t *testing.T) {
	o := example
	o.Mode = "iptables"
	o.ExtraArgs = []string{"--kube-api-qps=5", "--v=2 # not a comment"}
	ds := decode(t, mustRender(t, o))[3].(*appsv1.DaemonSet)
	args := ds.Spec.Template.Spec.Containers[0].Args
	if !slices.Equal(args[len(args)-2:], o.ExtraArgs) {
		t.Errorf("args end %q, want %q", args[len(args)-2:], o.ExtraArgs)
	}
}

func mustRender(t *testing.T, o Options) []byte {
	t.Helper()
	b, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
