package kind

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	yamlv3 "go.yaml.in/yaml/v3"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"

	"github.com/proxymodes/proxymodes/harness/addrplan"
	"github.com/proxymodes/proxymodes/harness/golden"
)

// committed are the configs users find beside this file.
var committed = []Options{
	{Mode: "iptables", Impl: ImplReference},
	{Mode: "ipvs", Impl: ImplReference},
	{Mode: "iptables", Impl: ImplKubeProxy},
	{Mode: "ipvs", Impl: ImplKubeProxy},
	{Mode: "nftables", Impl: ImplReference},
	{Mode: "nftables", Impl: ImplKubeProxy},
	{Mode: "userspace", Impl: ImplReference},
}

// TestRenderGolden checks the committed configs: the golden files are
// clusters/kind/<mode>-<impl>.yaml themselves ("../" leaves testdata/), so
// -update rewrites what users read.
func TestRenderGolden(t *testing.T) {
	for _, o := range committed {
		name := o.Mode + "-" + o.Impl + ".yaml"
		t.Run(name, func(t *testing.T) {
			got, err := Render(o)
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, "../"+name, got)
		})
	}
}

// load decodes a config as kind itself does: yaml.v3 with unknown fields
// an error.
func load(t *testing.T, b []byte) v1alpha4.Cluster {
	t.Helper()
	var c v1alpha4.Cluster
	d := yamlv3.NewDecoder(bytes.NewReader(b))
	d.KnownFields(true)
	if err := d.Decode(&c); err != nil {
		t.Fatalf("kind could not load the config: %v\n%s", err, b)
	}
	return c
}

// patches decodes the kubeadm patches with the pinned component config
// types, strictly: kind skips a patch whose apiVersion matches nothing and
// kubeadm would reject an unknown field only at cluster creation.
func patches(t *testing.T, c v1alpha4.Cluster) (*kubeletv1beta1.KubeletConfiguration, *kubeproxyv1alpha1.KubeProxyConfiguration) {
	t.Helper()
	var kubelet *kubeletv1beta1.KubeletConfiguration
	var proxy *kubeproxyv1alpha1.KubeProxyConfiguration
	for _, p := range c.KubeadmConfigPatches {
		var tm struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal([]byte(p), &tm); err != nil {
			t.Fatal(err)
		}
		var into any
		switch tm.APIVersion + " " + tm.Kind {
		case "kubelet.config.k8s.io/v1beta1 KubeletConfiguration":
			kubelet = &kubeletv1beta1.KubeletConfiguration{}
			into = kubelet
		case "kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration":
			proxy = &kubeproxyv1alpha1.KubeProxyConfiguration{}
			into = proxy
		default:
			t.Fatalf("patch for %s %s matches nothing kind v0.33 generates for Kubernetes 1.37:\n%s", tm.APIVersion, tm.Kind, p)
		}
		// Case-sensitive, as the components decode: encoding/json (behind
		// yaml.UnmarshalStrict) would take "failCgroupv1" for failCgroupV1.
		j, err := yaml.YAMLToJSON([]byte(p))
		if err != nil {
			t.Fatal(err)
		}
		strict, err := kjson.UnmarshalStrict(j, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err != nil || len(strict) > 0 {
			t.Errorf("patch does not decode as %s: %v %v\n%s", tm.Kind, err, strict, p)
		}
	}
	return kubelet, proxy
}

func TestRenderedConfig(t *testing.T) {
	for _, o := range committed {
		t.Run(o.Mode+"-"+o.Impl, func(t *testing.T) {
			b, err := Render(o)
			if err != nil {
				t.Fatal(err)
			}
			c := load(t, b)
			n := c.Networking
			if n.PodSubnet != "198.18.64.0/18" || n.ServiceSubnet != "198.19.0.0/16" || !n.DisableDefaultCNI || n.APIServerAddress != "127.0.0.1" {
				t.Errorf("networking %+v", n)
			}
			for _, s := range []string{n.PodSubnet, n.ServiceSubnet} {
				if p := netip.MustParsePrefix(s); !addrplan.Lab.Contains(p.Addr()) || p.Bits() < addrplan.Lab.Bits() {
					t.Errorf("%s lies outside the lab range %s", s, addrplan.Lab)
				}
			}
			wantMode := v1alpha4.ProxyMode("none")
			if o.Impl == ImplKubeProxy {
				wantMode = v1alpha4.ProxyMode(o.Mode)
			}
			if n.KubeProxyMode != wantMode {
				t.Errorf("kubeProxyMode %q, want %q", n.KubeProxyMode, wantMode)
			}
			kubelet, proxy := patches(t, c)
			if kubelet == nil || kubelet.FailCgroupV1 == nil || *kubelet.FailCgroupV1 {
				t.Errorf("no kubelet patch setting failCgroupV1: false")
			}
			switch {
			case o.Impl == ImplKubeProxy && (proxy == nil || proxy.MetricsBindAddress != "0.0.0.0:10249"):
				t.Errorf("kube-proxy's metrics are not exposed: %+v", proxy)
			case o.Impl == ImplReference && proxy != nil:
				t.Errorf("a kube-proxy patch in a cluster without kube-proxy")
			}
			if len(c.Nodes) != 2 || c.Nodes[0].Role != v1alpha4.ControlPlaneRole || c.Nodes[1].Role != v1alpha4.WorkerRole {
				t.Errorf("nodes %+v, want a control plane and one worker", c.Nodes)
			}
			var dirs []string
			for _, node := range c.Nodes {
				if len(node.ExtraMounts) != 1 || node.ExtraMounts[0].ContainerPath != CNIConfDir {
					t.Errorf("node %s mounts %+v, want its CNI directory at %s", node.Role, node.ExtraMounts, CNIConfDir)
					continue
				}
				dirs = append(dirs, node.ExtraMounts[0].HostPath)
			}
			uniq := slices.Clone(dirs)
			slices.Sort(uniq)
			if len(slices.Compact(uniq)) != len(c.Nodes) {
				t.Errorf("nodes share CNI directories %v: each needs its own pod /24", dirs)
			}
		})
	}
}

func TestNodes(t *testing.T) {
	nodes, err := Nodes(Options{Mode: "iptables", Name: "pm", Nodes: 4, CNIDir: "/srv/cni"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{
		{"pm-control-plane", v1alpha4.ControlPlaneRole, "/srv/cni/control-plane", "198.18.64.0/24"},
		{"pm-worker", v1alpha4.WorkerRole, "/srv/cni/worker", "198.18.65.0/24"},
		{"pm-worker2", v1alpha4.WorkerRole, "/srv/cni/worker2", "198.18.66.0/24"},
		{"pm-worker3", v1alpha4.WorkerRole, "/srv/cni/worker3", "198.18.67.0/24"},
	}
	if !slices.Equal(nodes, want) {
		t.Errorf("nodes\n%v\nwant\n%v", nodes, want)
	}
	b, err := Render(Options{Mode: "iptables", Name: "pm", Nodes: 4, CNIDir: "/srv/cni", Image: "proxymodes/node:v1.37.2"})
	if err != nil {
		t.Fatal(err)
	}
	c := load(t, b)
	for i, n := range c.Nodes {
		if n.ExtraMounts[0].HostPath != want[i].CNIDir || n.Image != "proxymodes/node:v1.37.2" {
			t.Errorf("node %d: mount %s image %s", i, n.ExtraMounts[0].HostPath, n.Image)
		}
	}
	if one, _ := Nodes(Options{Mode: "iptables", Nodes: 1}); len(one) != 1 || one[0].Role != v1alpha4.ControlPlaneRole {
		t.Errorf("one node: %v", one)
	}
}

func TestRenderRejects(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Mode: "userspace", Impl: ImplKubeProxy}, "use one of iptables, ipvs"},
		{Options{Mode: "ipvs", Impl: "cilium"}, "unknown"},
		{Options{Mode: "ebpf"}, "use one of userspace, iptables, ipvs, nftables"},
		{Options{Mode: "iptables", Nodes: addrplan.MaxNodes + 1}, "pod /24s for 1 to"},
		{Options{Mode: "iptables", Nodes: -1}, "pod /24s for 1 to"},
		{Options{Mode: "iptables", CNIDir: "cni"}, "must be absolute"},
	} {
		_, err := Render(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", tc.o, err, tc.want)
		}
	}
}

func TestConflist(t *testing.T) {
	nodes, err := Nodes(Options{Mode: "iptables"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Conflist(ConflistOptions{PodCIDR: netip.MustParsePrefix(nodes[1].PodCIDR), Portmap: true})
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "worker.conflist", b)

	var c struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type      string `json:"type"`
			IsGateway bool   `json:"isGateway"`
			IPMasq    *bool  `json:"ipMasq"`
			IPAM      struct {
				Type   string                `json:"type"`
				Ranges [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	br := c.Plugins[0]
	if br.Type != "bridge" || !br.IsGateway || br.IPMasq == nil || *br.IPMasq || br.IPAM.Type != "host-local" ||
		br.IPAM.Ranges[0][0]["subnet"] != "198.18.65.0/24" || br.IPAM.Ranges[0][0]["gateway"] != "198.18.65.1" {
		t.Errorf("bridge plugin %+v", br)
	}
	if len(c.Plugins) != 2 || c.Plugins[1].Type != "portmap" {
		t.Errorf("plugins %+v, want bridge and portmap", c.Plugins)
	}
	if plain, _ := Conflist(ConflistOptions{PodCIDR: netip.MustParsePrefix("198.18.64.0/24")}); bytes.Contains(plain, []byte("portmap")) {
		t.Errorf("portmap without Portmap:\n%s", plain)
	}
	for _, bad := range []string{"10.0.0.0/24", "198.18.64.1/24", "198.18.0.0/16"} {
		if _, err := Conflist(ConflistOptions{PodCIDR: netip.MustParsePrefix(bad)}); err == nil {
			t.Errorf("pod CIDR %s accepted", bad)
		}
	}
}
