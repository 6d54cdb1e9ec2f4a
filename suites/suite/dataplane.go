package suite

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/probe"
)

// ErrorKind classifies a failed connection.
type ErrorKind string

const (
	Refused ErrorKind = "refused" // RST or ICMP port unreachable
	Timeout ErrorKind = "timeout" // nothing came back in time
	Other   ErrorKind = "other"
)

// Classify names the kind of a probe error. It checks the error chain
// first and falls back to the message, for providers that carry errors
// across a process boundary as text.
func Classify(err error) ErrorKind {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return Timeout
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return Refused
	case strings.Contains(msg, "i/o timeout"), strings.Contains(msg, "deadline exceeded"), strings.Contains(msg, "timed out"):
		return Timeout
	}
	return Other
}

// ErrorKinds counts a summary's errors by kind and keeps one example of
// each.
func ErrorKinds(s probe.Summary) (counts map[ErrorKind]int, examples map[ErrorKind]string) {
	counts, examples = map[ErrorKind]int{}, map[ErrorKind]string{}
	for _, e := range s.Errors() {
		k := Classify(e)
		counts[k]++
		if _, ok := examples[k]; !ok {
			examples[k] = e.Error()
		}
	}
	return counts, examples
}

// Flow and FlowOpener are the providers' (see cluster).
type (
	Flow       = cluster.Flow
	FlowOpener = cluster.FlowOpener
)

// ErrUnsupported marks a check the provider cannot run yet.
var ErrUnsupported = errors.New("not supported by this provider")

// OpenFlow opens a flow (a fixed-source-port UDP socket or an
// established TCP connection) from a namespace of the cluster.
func OpenFlow(ctx context.Context, c cluster.Cluster, ns string, proto probe.Proto, dst netip.AddrPort) (Flow, error) {
	if o, ok := c.(FlowOpener); ok {
		return o.OpenFlow(ctx, ns, proto, dst)
	}
	return nil, fmt.Errorf("a %s flow from %s: %w (implement cluster.FlowOpener)", proto, ns, ErrUnsupported)
}

// InHostKernel reports whether the cluster's data plane runs in the kernel
// this process runs in.
func InHostKernel(c cluster.Cluster) bool {
	k := c.Info().Kernel
	if kk, ok := c.(interface{ Kernel() string }); ok && k == "" {
		k = kk.Kernel()
	}
	h := hostKernel()
	// Providers name the kernel as the release or as "Linux <release>".
	return h != "" && (k == h || strings.HasSuffix(k, " "+h))
}

func hostKernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Execer runs a command inside a lab namespace, wherever it lives (the
// local lab has it). The cleanup check uses it for ipvsadm and ip addr
// when the provider has no IPVSDumper or AddrDumper.
type Execer interface {
	Exec(ctx context.Context, ns string, argv ...string) (string, error)
}

// IPVSDumper is what a provider implements to let the cleanup check read a
// node's IPVS virtual servers (ipvsadm -Ln style text).
type IPVSDumper interface {
	IPVS(ctx context.Context, ns string) (string, error)
}

// AddrDumper lists the addresses bound in a namespace (`ip -o addr`
// style), for the bound-VIP check of the ipvs mode.
type AddrDumper interface {
	Addrs(ctx context.Context, ns string) (string, error)
}

// DumpIPVS reads a node's IPVS table through the provider: IPVSDumper if
// it has one, else `ipvsadm -Ln` through Execer (the UML guest has
// ipvsadm: it runs the host's root, where preflight installs it).
func DumpIPVS(ctx context.Context, c cluster.Cluster, ns string) (string, error) {
	if d, ok := c.(IPVSDumper); ok {
		return d.IPVS(ctx, ns)
	}
	if e, ok := c.(Execer); ok {
		return e.Exec(ctx, ns, "ipvsadm", "-Ln")
	}
	return "", fmt.Errorf("reading IPVS virtual servers in %s: %w (implement suite.IPVSDumper)", ns, ErrUnsupported)
}

// DumpAddrs lists a namespace's addresses through the provider.
func DumpAddrs(ctx context.Context, c cluster.Cluster, ns string) (string, error) {
	if d, ok := c.(AddrDumper); ok {
		return d.Addrs(ctx, ns)
	}
	if e, ok := c.(Execer); ok {
		return e.Exec(ctx, ns, "ip", "-o", "addr", "show")
	}
	return "", fmt.Errorf("listing addresses in %s: %w (implement suite.AddrDumper)", ns, ErrUnsupported)
}

var chainDecl = regexp.MustCompile(`^:(\S+)`)

// Chains returns the chains declared in an iptables-save dump.
func Chains(dump string) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(dump, "\n") {
		if m := chainDecl.FindStringSubmatch(l); m != nil {
			out[m[1]] = true
		}
	}
	return out
}

// DumpNetfilter returns a namespace's iptables rules followed by its
// ipset members ("ipset save"). kube-proxy's ipvs mode matches Services
// through ipsets (KUBE-CLUSTER-IP holds "VIP,tcp:port"), so no rule names
// a VIP there: without the sets, a Service it forgot would go unseen.
func DumpNetfilter(ctx context.Context, c cluster.Cluster, ns string) (string, error) {
	dump, err := c.IPTables(ctx, ns)
	if err != nil {
		return "", err
	}
	e, ok := c.(Execer)
	if !ok {
		return dump, nil
	}
	sets, err := e.Exec(ctx, ns, "ipset", "save")
	if err != nil {
		return "", fmt.Errorf("reading ipsets in %s: %w", ns, err)
	}
	return dump + "\n" + sets, nil
}

// DumpNFTables returns a namespace's whole nftables ruleset (nft list
// ruleset): the nftables mode keeps its Services in verdict maps there.
func DumpNFTables(ctx context.Context, c cluster.Cluster, ns string) (string, error) {
	e, ok := c.(Execer)
	if !ok {
		return "", fmt.Errorf("listing nftables in %s: %w (implement suite.Execer)", ns, ErrUnsupported)
	}
	out, err := e.Exec(ctx, ns, "nft", "list", "ruleset")
	if err != nil {
		return "", fmt.Errorf("nft list ruleset in %s: %w", ns, err)
	}
	return out, nil
}

// Refers returns the lines of a dump that refer to a Service: lines with a
// field equal to one of the addresses (bare, /32 or with a port), a field
// equal to one of the names (chains), "--dport P"/"--to-ports P" for one of
// the ports, or one of the comment substrings. ipset members count too:
// "add SET ADDR,proto:port" and "add SET PORT", and so do nftables map
// elements ("ADDR . tcp . 80", "tcp . PORT").
func Refers(dump string, addrs, names, ports, comments []string) []string {
	var out []string
	for _, line := range strings.Split(dump, "\n") {
		if line == "" {
			continue
		}
		if refers(line, addrs, names, ports, comments) {
			out = append(out, line)
		}
	}
	return out
}

func refers(line string, addrs, names, ports, comments []string) bool {
	for _, c := range comments {
		if strings.Contains(line, c) {
			return true
		}
	}
	f := strings.Fields(line)
	for i, w := range f {
		for _, a := range addrs {
			if w == a || w == a+"/32" || strings.HasPrefix(w, a+":") || strings.HasPrefix(w, a+",") {
				return true
			}
		}
		for _, n := range names {
			if w == n || w == ":"+n {
				return true
			}
		}
		// "." joins the parts of an nftables map key: "tcp . 30080".
		if i > 0 && (f[i-1] == "--dport" || f[i-1] == "--to-ports" || f[i-1] == "--dports" || f[i-1] == ".") || (i == 2 && f[0] == "add") {
			for _, p := range ports {
				if w == p {
					return true
				}
			}
		}
	}
	return false
}

// ProxyPorts returns the ports of "--to-ports N" in the lines (the
// userspace mode's proxy sockets).
func ProxyPorts(lines []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "--to-ports" && !seen[f[i+1]] {
				seen[f[i+1]] = true
				out = append(out, f[i+1])
			}
		}
	}
	return out
}

// AssuredUDPTTL reads the one ASSURED UDP entry of a conntrack -L listing
// ("udp 17 <ttl> src=... [ASSURED] ...") and its seconds to live.
func AssuredUDPTTL(out string) (time.Duration, string, error) {
	var found []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "udp") {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		return 0, "", fmt.Errorf("want exactly one entry, found %d", len(found))
	}
	f := strings.Fields(found[0])
	if len(f) < 3 {
		return 0, "", fmt.Errorf("cannot parse %q", found[0])
	}
	secs, err := strconv.Atoi(f[2])
	if err != nil {
		return 0, "", fmt.Errorf("cannot parse the TTL of %q: %v", found[0], err)
	}
	if !strings.Contains(found[0], "[ASSURED]") {
		return 0, "", fmt.Errorf("not ASSURED, so the kernel expires it after nf_conntrack_udp_timeout (30 s): %s", found[0])
	}
	return time.Duration(secs) * time.Second, found[0], nil
}

// IPVSPersistence finds the virtual server proto vip in an ipvsadm -Ln
// dump and returns its persistence timeout ("persistent N"), 0 when it
// has none, and whether the virtual server was found.
func IPVSPersistence(dump, proto string, vip netip.AddrPort) (int, bool) {
	for _, line := range strings.Split(dump, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != strings.ToUpper(proto) || f[1] != vip.String() {
			continue
		}
		for i := 2; i+1 < len(f); i++ {
			if f[i] == "persistent" {
				n, err := strconv.Atoi(f[i+1])
				if err != nil {
					return 0, true
				}
				return n, true
			}
		}
		return 0, true
	}
	return 0, false
}

// NodeAddrs returns the addresses bound in a namespace, loopback left out:
// the addresses a node may masquerade traffic to (its link to the other
// nodes, its pods' gateway, and in ipvs mode the VIPs on its dummy device).
func NodeAddrs(ctx context.Context, c cluster.Cluster, ns string) ([]netip.Addr, error) {
	out, err := DumpAddrs(ctx, c, ns)
	if err != nil {
		return nil, err
	}
	addrs := ParseAddrs(out)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no address in %s: `ip -o addr show` printed %q", ns, out)
	}
	return addrs, nil
}

// ParseAddrs reads the non-loopback addresses of an `ip -o addr show`
// listing ("2: eth0    inet 198.18.0.2/24 brd ... scope global eth0").
func ParseAddrs(out string) []netip.Addr {
	var addrs []netip.Addr
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "inet" && f[i] != "inet6" {
				continue
			}
			if p, err := netip.ParsePrefix(f[i+1]); err == nil && !p.Addr().IsLoopback() {
				addrs = append(addrs, p.Addr())
			}
			break
		}
	}
	return addrs
}
