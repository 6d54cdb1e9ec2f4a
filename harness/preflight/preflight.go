// Package preflight checks, before a lab touches anything, that it can run
// here: root, the tools it calls and the kernel features it uses. Each
// failure is one message that names the fix. On Debian and Ubuntu it
// installs missing packages itself.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/proxymodes/proxymodes/harness/docker"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"net/netip"
)

// Logger receives what preflight does (installs, mostly).
type Logger interface {
	Logf(format string, args ...any)
}

// Options for Check.
type Options struct {
	// Install missing Debian packages with apt-get when possible.
	Install bool
	Logger  Logger
	// Tools overrides the required tools (for tests); nil means Required.
	Tools map[string]string
	// Kind adds what kind clusters need (KindRequired): the private
	// Docker daemon and the offline node image build. The local lab does
	// not need Docker, so it is not asked for unless this is set.
	Kind bool
}

// Required maps each command the lab runs to the Debian package that has it.
var Required = map[string]string{
	"ip":               "iproute2",
	"iptables":         "iptables",
	"iptables-restore": "iptables",
	"iptables-legacy":  "iptables",
	"ipvsadm":          "ipvsadm", // rule inspection in the ipvs mode's lab
	"modprobe":         "kmod",    // module loading inside the user-mode Linux guest
	"busybox":          "busybox-static",
	"ipset":            "ipset", // upstream kube-proxy's ipvs mode refuses to start without it
	// The stale-UDP check reads and dumps conntrack entries in the nodes
	// (host and guest): without it that check waited out its deadline on
	// "executable file not found" on a fresh machine.
	"conntrack": "conntrack",
	// The nftables mode applies its transactions with nft (through
	// knftables); the host kernel has nf_tables, the UML guest does not.
	"nft": "nftables",
	// The savers and restorers of both flavours: harness/rules reads every
	// flavour, and the proxier restores with the node's.
	"iptables-nft-save":       "iptables",
	"iptables-legacy-save":    "iptables",
	"iptables-nft-restore":    "iptables",
	"iptables-legacy-restore": "iptables",
	// The bench gives kube-proxy one iptables backend through a PATH of
	// links to the backend's multi-call binary (bench/sweep).
	"xtables-legacy-multi": "iptables",
	"xtables-nft-multi":    "iptables",
	// A failing assessment snapshots the nodes' state (suites/suite).
	"iptables-save": "iptables",
	"bridge":        "iproute2",
	"nstat":         "iproute2",
	"ss":            "iproute2",
	// The iptables mode's real-kernel traffic test turns on forwarding in
	// its scratch namespace.
	"sysctl": "procps",
}

// Base maps commands that a Debian machine has before the first command
// (its essential and important packages), or that the user brings (Go,
// and git for the clone), to where they come from. Preflight does not
// install them; they are declared so that every command the harness runs
// is written down once (TestEveryCommandIsDeclared).
var Base = map[string]string{
	"apt-get":  "apt",
	"dpkg-deb": "dpkg",
	"sh":       "dash",
	"bash":     "bash",
	"test":     "coreutils",
	"mv":       "coreutils", // in kind's control-plane node, to stop its API server
	"tar":      "tar",
	"ldd":      "libc-bin",
	"setpriv":  "util-linux",
	"flock":    "util-linux", // clusters/k8s/build.sh: one build at a time
	"env":      "coreutils",  // runs a lab command with extra environment
	"go":       "the Go toolchain the README asks for",
	"git":      "git (the bench records the commit when it is there)",
}

// KindRequired maps what kind clusters and the offline node image need to
// Debian packages. Paths name Debian's own binaries where PATH may find
// another (/usr/local/bin/docker is a Docker 28 CLI on some machines). The
// container engine's entries (engineTools) are asked for only when the
// machine has no engine of its own (docker.LocalEngine).
var KindRequired = map[string]string{
	"/usr/sbin/dockerd":     "docker.io",
	"/usr/bin/docker":       "docker.io",
	"/usr/bin/containerd":   "containerd",
	"/usr/sbin/runc":        "runc",
	"/usr/bin/jq":           "jq",          // the runc wrapper edits OCI specs with it
	"/usr/sbin/debootstrap": "debootstrap", // the node image's root file system
	// debootstrap verifies Debian's archive with it (Ubuntu hosts too).
	"/usr/share/keyrings/debian-archive-keyring.gpg": "debian-archive-keyring",
	"gcc":                              "gcc", // kubernetes' pause.c, linked statically
	"/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
	"unshare":                          "util-linux",
}

// engineTools are KindRequired's container engine: Debian's docker.io,
// containerd and runc. Another engine (Docker's docker-ce and
// containerd.io, as hosted Ubuntu runners have) conflicts with them.
var engineTools = []string{"/usr/sbin/dockerd", "/usr/bin/docker", "/usr/bin/containerd", "/usr/sbin/runc"}

// kindTools is KindRequired, without the engine when the machine has one.
func kindTools(haveEngine bool) map[string]string {
	out := map[string]string{}
	for t, p := range KindRequired {
		if haveEngine && slices.Contains(engineTools, t) {
			continue
		}
		out[t] = p
	}
	return out
}

// Check runs every check and returns the first problem with its fix.
func Check(ctx context.Context, o Options) error {
	if os.Geteuid() != 0 {
		return errors.New("proxymodes needs root: it creates network namespaces and programs kernel rules. Run it with sudo (for example `sudo make conformance MODE=iptables`)")
	}
	tools := o.Tools
	if tools == nil {
		tools = map[string]string{}
		for t, p := range Required {
			tools[t] = p
		}
		if o.Kind {
			engine, ok := docker.LocalEngine()
			for t, p := range kindTools(ok) {
				tools[t] = p
			}
			if ok && o.Logger != nil {
				o.Logger.Logf("preflight: using the container engine already here (%s): installing none", engine.Source)
			}
		}
	}
	if missing := Missing(tools); len(missing) > 0 {
		pkgs := packagesFor(tools, missing)
		if o.Install && canApt() {
			if err := aptInstall(ctx, pkgs, o.Logger); err != nil {
				return err
			}
			missing = Missing(tools)
		}
		if len(missing) > 0 {
			return fmt.Errorf("missing commands: %s. Install them (on Debian or Ubuntu: `apt-get install -y %s`)",
				strings.Join(missing, ", "), strings.Join(packagesFor(tools, missing), " "))
		}
	}
	return Kernel()
}

// Missing lists the tools not found in PATH.
func Missing(tools map[string]string) []string {
	var out []string
	for t := range tools {
		if strings.HasPrefix(t, "/") {
			if _, err := os.Stat(t); err != nil {
				out = append(out, t)
			}
			continue
		}
		if _, err := exec.LookPath(t); err != nil {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

func packagesFor(tools map[string]string, missing []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, t := range missing {
		if p := tools[t]; !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func canApt() bool {
	_, err := exec.LookPath("apt-get")
	_, derr := os.Stat("/etc/debian_version")
	return err == nil && derr == nil
}

func aptInstall(ctx context.Context, pkgs []string, log Logger) error {
	logf := func(f string, a ...any) {
		if log != nil {
			log.Logf(f, a...)
		}
	}
	logf("proxymodes: installing missing Debian packages: %s", strings.Join(pkgs, " "))
	// docker.io's and containerd's maintainer scripts start the system
	// daemons where no init system answers, and a system dockerd rewrites
	// the host's iptables. policy-rc.d exit 101 forbids starting services.
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); os.IsNotExist(err) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# proxymodes: no service starts during apt-get install\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(policy)
		}
	}
	install := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err == nil {
		return nil
	}
	// A fresh machine often has no package lists yet.
	logf("proxymodes: apt-get install failed; running apt-get update and retrying")
	if out, err := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update failed: %v\n%s", err, out)
	}
	if out, err := install(); err != nil {
		return fmt.Errorf("apt-get install %s failed: %v\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

var kernelChecks atomic.Int64

// Kernel proves the kernel features the lab needs by using them in a
// scratch namespace: network namespaces, veth pairs and bridges.
func Kernel() error {
	// Unique per call: labs that come up side by side in one process
	// check at the same time.
	ns := "pm-preflight-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(kernelChecks.Add(1), 10)
	if err := netlab.CreateNS(ns); err != nil {
		return fmt.Errorf("cannot create a network namespace (%v): the kernel needs CONFIG_NET_NS, and a container needs --privileged", err)
	}
	defer netlab.DeleteNS(ns)
	if err := netlab.Bridge(ns, "pfbr0", netip.Prefix{}); err != nil {
		return fmt.Errorf("cannot create a bridge (%v): the kernel needs CONFIG_BRIDGE (modprobe bridge)", err)
	}
	if err := netlab.Veth(netlab.End{NS: ns, Name: "pfa"}, netlab.End{NS: ns, Name: "pfb"}); err != nil {
		return fmt.Errorf("cannot create a veth pair (%v): the kernel needs CONFIG_VETH (modprobe veth)", err)
	}
	return nil
}
