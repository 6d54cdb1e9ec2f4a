// Package manifests renders the objects that run the reference proxier in
// a cluster: its ServiceAccount, least-privilege RBAC and a DaemonSet. The
// templates are plain YAML files under templates/, so users can read them;
// testdata/ holds them rendered for each mode.
package manifests

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/proxymodes/proxymodes/harness/addrplan"
)

// Where the proxier's objects live; a provider waits for the DaemonSet by
// these.
const (
	Namespace = "kube-system"
	Name      = "proxymodes-proxier"
	// NameLabel selects the proxier's pods (value Name).
	NameLabel = "app.kubernetes.io/name"
)

// Modes are the proxy modes the reference proxier has.
var Modes = []string{"userspace", "iptables", "ipvs", "nftables"}

// Options say what to deploy.
type Options struct {
	// Mode is one of Modes.
	Mode string
	// Image is the proxier image (clusters/proxier/Dockerfile).
	Image string
	// APIServer is the API server's own address as IP:port, as every node
	// reaches it (on kind, the control-plane node's IP and 6443). The
	// kubernetes Service cannot be used: this proxier is what routes it.
	APIServer string
	// ClusterCIDR is the pod CIDR; default addrplan.Pods.
	ClusterCIDR netip.Prefix
	// ImagePullPolicy defaults to IfNotPresent, which also suits images
	// loaded into the nodes (kind load).
	ImagePullPolicy string
	// ExtraArgs are appended to the proxier's flags.
	ExtraArgs []string
}

//go:embed templates/*.yaml
var templates embed.FS

// data is what the templates see.
type data struct {
	Options
	APIServerHost, APIServerPort string
}

// Render returns the objects as one multi-document YAML stream, in the
// order they must be applied.
func Render(o Options) ([]byte, error) {
	d, err := o.complete()
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(templates, "templates/*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(names) // the file names' numbers give the apply order
	funcs := template.FuncMap{"quote": quote}
	var out bytes.Buffer
	for i, name := range names {
		t, err := template.New(name).Funcs(funcs).Option("missingkey=error").ParseFS(templates, name)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		if err := t.ExecuteTemplate(&out, strings.TrimPrefix(name, "templates/"), d); err != nil {
			return nil, fmt.Errorf("rendering %s: %w", name, err)
		}
	}
	return out.Bytes(), nil
}

func (o Options) complete() (data, error) {
	if !slices.Contains(Modes, o.Mode) {
		return data{}, fmt.Errorf("mode %q is not a proxy mode of the reference proxier: use one of %s", o.Mode, strings.Join(Modes, ", "))
	}
	if o.Image == "" || strings.ContainsAny(o.Image, " \t\n\"'") {
		return data{}, fmt.Errorf("image %q is not an image reference: build one from clusters/proxier/Dockerfile and pass its name", o.Image)
	}
	host, port, err := net.SplitHostPort(o.APIServer)
	if err != nil {
		return data{}, fmt.Errorf("API server %q: %v: give the control plane's IP:port (on kind, the control-plane node's IP and 6443)", o.APIServer, err)
	}
	// An IP, not a name: names resolve through cluster DNS, whose Service
	// this proxier has yet to route.
	if _, err := netip.ParseAddr(host); err != nil {
		return data{}, fmt.Errorf("API server %q: the host must be an IP address, not a name (cluster DNS is unreachable until the proxier runs)", o.APIServer)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return data{}, fmt.Errorf("API server %q: port %q is not a port number", o.APIServer, port)
	}
	if !o.ClusterCIDR.IsValid() {
		o.ClusterCIDR = addrplan.Pods
	}
	switch o.ImagePullPolicy {
	case "":
		o.ImagePullPolicy = "IfNotPresent"
	case "Always", "IfNotPresent", "Never":
	default:
		return data{}, fmt.Errorf("image pull policy %q: use Always, IfNotPresent or Never", o.ImagePullPolicy)
	}
	return data{Options: o, APIServerHost: host, APIServerPort: port}, nil
}

// quote makes s one YAML scalar whatever it holds: a JSON string is valid
// YAML.
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
