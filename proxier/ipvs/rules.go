package ipvs

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// IPVS does the load balancing; iptables only decides which connections are
// masqueraded. Without ipset, the per-service matches are plain rules:
//
//	nat PREROUTING, OUTPUT -> PM-IPVS-SERVICES
//	    cluster IP from outside the cluster CIDR                  -> PM-IPVS-MARK-MASQ
//	    external or load balancer IP                              -> PM-IPVS-MARK-MASQ
//	    external or load balancer IP, externalTrafficPolicy Local -> RETURN
//	    (last) local destination -> PM-IPVS-NODEPORTS
//	        node port                              -> PM-IPVS-MARK-MASQ
//	        node port, externalTrafficPolicy Local -> RETURN
//	nat POSTROUTING -> PM-IPVS-POSTROUTING
//	    hairpin (a pod reaching itself through its Service) -> MASQUERADE
//	    marked -> MASQUERADE
//	filter INPUT, FORWARD -> PM-IPVS-FIREWALL
//	    load balancer IP:port with loadBalancerSourceRanges -> PM-IPVS-SOURCE-RANGES
//	        (that IP:port) from a source range -> RETURN
//	        (that IP:port) from the IP itself, when a range holds this node -> RETURN
//	        (last) DROP
//	filter FORWARD -> PM-IPVS-FORWARD (accept marked and established traffic)
//
// The firewall is kube-proxy's KUBE-PROXY-FIREWALL and
// KUBE-SOURCE-RANGES-FIREWALL with its KUBE-LOAD-BALANCER-FW,
// -SOURCE-CIDR and -SOURCE-IP ipsets spelled out as rules. It sits in the
// filter table because IPVS schedules a connection in LOCAL_IN, after
// filter INPUT has seen its packets.
//
// The chain names differ from the iptables mode's (PM-SERVICES, ...), so
// the two modes never overwrite each other's rules; both share the "PM-"
// prefix that `proxier --cleanup` removes.
const (
	// ChainPrefix starts every chain this mode creates.
	ChainPrefix      = "PM-IPVS-"
	servicesChain    = "PM-IPVS-SERVICES"
	nodePortsChain   = "PM-IPVS-NODEPORTS"
	postroutingChain = "PM-IPVS-POSTROUTING"
	markMasqChain    = "PM-IPVS-MARK-MASQ"
	forwardChain     = "PM-IPVS-FORWARD"
	firewallChain    = "PM-IPVS-FIREWALL"
	sourceRangeChain = "PM-IPVS-SOURCE-RANGES"

	tableFilter = "filter"
	tableNAT    = "nat"
)

var (
	filterChains = []string{forwardChain, firewallChain, sourceRangeChain}
	natChains    = []string{servicesChain, nodePortsChain, postroutingChain, markMasqChain}
)

// builtinChains are the chains that may hold our jump rules.
var builtinChains = map[string][]string{
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// jumpRules are the only rules this mode writes into chains it does not own.
var jumpRules = []iptables.Jump{
	{Table: tableFilter, From: "INPUT", To: firewallChain, Comment: "proxymodes ipvs load balancer firewall"},
	// The firewall goes first so that the forwarding chain's ACCEPT of
	// marked packets cannot let a denied source through.
	{Table: tableFilter, From: "FORWARD", To: firewallChain, Comment: "proxymodes ipvs load balancer firewall"},
	{Table: tableFilter, From: "FORWARD", To: forwardChain, Comment: "proxymodes ipvs forwarding rules"},
	{Table: tableNAT, From: "PREROUTING", To: servicesChain, Comment: "proxymodes ipvs service portals"},
	{Table: tableNAT, From: "OUTPUT", To: servicesChain, Comment: "proxymodes ipvs service portals"},
	{Table: tableNAT, From: "POSTROUTING", To: postroutingChain, Comment: "proxymodes ipvs postrouting rules"},
}

// ownChain: this mode's chains are PM-IPVS-*, so the iptables mode's PM-
// chains in the same node are left alone.
func ownChain(target string) bool { return strings.HasPrefix(target, ChainPrefix) }

// ruleBuf collects iptables-restore lines.
type ruleBuf struct {
	bytes.Buffer
	lines int
}

func (b *ruleBuf) add(args ...string) {
	b.lines++
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a)
	}
	b.WriteByte('\n')
}

func quote(s string) string { return `"` + s + `"` }

// rules is one rendered batch, split so that a partial sync can tell
// whether anything but the jump rules changed.
type rules struct {
	filterJumps, natJumps ruleBuf
	filterBody, natBody   ruleBuf // the rules of our own chains
}

// body returns the rendered rules of our own chains, which is all a
// partial sync compares.
func (r *rules) body() []byte {
	return append(append([]byte(nil), r.filterBody.Bytes()...), r.natBody.Bytes()...)
}

func (r *rules) batch() []byte {
	var out bytes.Buffer
	out.WriteString("*filter\n")
	writeChains(&out, filterChains)
	out.Write(r.filterJumps.Bytes())
	out.Write(r.filterBody.Bytes())
	out.WriteString("COMMIT\n*nat\n")
	writeChains(&out, natChains)
	out.Write(r.natJumps.Bytes())
	out.Write(r.natBody.Bytes())
	out.WriteString("COMMIT\n")
	return out.Bytes()
}

// writeChains declares (and so flushes) our chains.
func writeChains(out *bytes.Buffer, chains []string) {
	for _, c := range chains {
		fmt.Fprintf(out, ":%s - [0:0]\n", c)
	}
}

// ruleConfig is what rendering depends on besides the snapshot.
type ruleConfig struct {
	clusterCIDR   netip.Prefix
	masqueradeAll bool
	masqMark      string // "0x4000"
	masqMatch     string // "0x4000/0x4000"
}

// renderRules renders the masquerade rules for snap. existing is the
// current kernel state on full syncs (to repair jump rules); nil on
// partial syncs, which trust the jumps are in place.
func renderRules(cfg ruleConfig, snap *core.Snapshot, existing map[string]*iptables.Table) *rules {
	r := &rules{}
	if existing != nil {
		for _, table := range []string{tableFilter, tableNAT} {
			out := &r.filterJumps
			if table == tableNAT {
				out = &r.natJumps
			}
			for _, from := range builtinChains[table] {
				var want []iptables.Jump
				for _, j := range jumpRules {
					if j.Table == table && j.From == from {
						want = append(want, j)
					}
				}
				have := iptables.OwnedJumps(existing, table, from, ownChain)
				if iptables.JumpsMatch(have, want) {
					continue
				}
				for _, h := range have {
					out.add("-D", from, h.String())
				}
				for i, j := range want {
					out.add(append([]string{"-I", from, strconv.Itoa(i + 1)}, quoteArgs(j.Args())...)...)
				}
			}
		}
	}

	f := &r.filterBody
	f.add("-A", forwardChain, "-m", "comment", "--comment", quote("proxymodes ipvs forwarding rules"),
		"-m", "mark", "--mark", cfg.masqMatch, "-j", "ACCEPT")
	f.add("-A", forwardChain, "-m", "comment", "--comment", quote("proxymodes ipvs forwarding conntrack rule"),
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	renderFirewall(f, snap)

	n := &r.natBody
	// Hairpin: IPVS sent a pod's connection back to that pod, which would
	// answer itself directly unless the source is rewritten. The packet
	// here already carries the real server as its destination.
	seen := map[string]bool{}
	names := snap.SortedServicePorts()
	for _, name := range names {
		svc := snap.Services[name]
		proto := strings.ToLower(string(svc.Protocol))
		for _, ep := range core.ReachableEndpoints(svc, snap.Endpoints[name], snap.NodeName) {
			if !ep.IP.Is4() || !fault.Hairpin() {
				continue
			}
			key := proto + "/" + ep.String()
			if seen[key] {
				continue
			}
			seen[key] = true
			n.add("-A", postroutingChain, "-m", "comment", "--comment", quote("proxymodes ipvs hairpin"),
				"-s", ep.IP.String(), "-d", ep.IP.String(), "-m", proto, "-p", proto, "--dport", strconv.Itoa(int(ep.Port)),
				"-j", "MASQUERADE")
		}
	}
	n.add("-A", postroutingChain, "-m", "mark", "!", "--mark", cfg.masqMatch, "-j", "RETURN")
	// Clear the mark so a packet that traverses the stack again is not
	// masqueraded twice.
	n.add("-A", postroutingChain, "-j", "MARK", "--xor-mark", cfg.masqMark)
	n.add("-A", postroutingChain, "-m", "comment", "--comment", quote("proxymodes service traffic requiring SNAT"),
		"-j", "MASQUERADE", "--random-fully")
	n.add("-A", markMasqChain, "-j", "MARK", "--or-mark", cfg.masqMark)

	for _, name := range names {
		svc := snap.Services[name]
		if !svc.ClusterIP.Is4() {
			continue
		}
		proto := strings.ToLower(string(svc.Protocol))
		port := strconv.Itoa(int(svc.Port))
		label := name.String()
		clusterIP := []string{"-A", servicesChain, "-m", "comment", "--comment", quote(label + " cluster IP"),
			"-m", proto, "-p", proto, "-d", svc.ClusterIP.String(), "--dport", port}
		switch {
		case cfg.masqueradeAll:
			n.add(append(clusterIP, "-j", markMasqChain)...)
		case cfg.clusterCIDR.IsValid():
			// Off-cluster sources may be answered by a pod on another
			// node; SNAT so the reply comes back through this node.
			n.add(append(clusterIP, "!", "-s", cfg.clusterCIDR.String(), "-j", markMasqChain)...)
		default:
			// Without a cluster CIDR only node-originated traffic is
			// known to need it: its source is the VIP itself, which
			// the pod could not answer.
			n.add(append(clusterIP, "-m", "addrtype", "--src-type", "LOCAL", "-j", markMasqChain)...)
		}
		// externalTrafficPolicy Local keeps the client's address: its
		// virtual servers only have this node's endpoints, whose replies
		// come back through this node anyway. The match RETURNs rather
		// than being left out so that no later rule (the node-port jump,
		// when an external IP is also a node address) marks it; kube-proxy
		// matches its KUBE-NODE-PORT-LOCAL-* and KUBE-EXTERNAL-IP-LOCAL
		// sets first for the same reason.
		extTarget, extComment := markMasqChain, ""
		if svc.ExternalLocal {
			extTarget, extComment = "RETURN", ", externalTrafficPolicy Local"
		}
		for _, eip := range svc.ExternalIPs {
			if !eip.Is4() {
				continue
			}
			n.add("-A", servicesChain, "-m", "comment", "--comment", quote(label+" external IP"+extComment),
				"-m", proto, "-p", proto, "-d", eip.String(), "--dport", port, "-j", extTarget)
		}
		// A load balancer that kept the client's address needs the same
		// SNAT decision as an external IP: without it a remote backend
		// would answer the client directly.
		for _, lb := range svc.LoadBalancerIPs {
			if !lb.Is4() {
				continue
			}
			n.add("-A", servicesChain, "-m", "comment", "--comment", quote(label+" load balancer IP"+extComment),
				"-m", proto, "-p", proto, "-d", lb.String(), "--dport", port, "-j", extTarget)
		}
		if svc.NodePort != 0 {
			n.add("-A", nodePortsChain, "-m", "comment", "--comment", quote(label+" node port"+extComment),
				"-m", proto, "-p", proto, "--dport", strconv.Itoa(int(svc.NodePort)), "-j", extTarget)
		}
	}
	n.add("-A", servicesChain, "-m", "comment", "--comment", quote("proxymodes ipvs node ports; NOTE: this must be the last rule in this chain"),
		"-m", "addrtype", "--dst-type", "LOCAL", "!", "-d", "127.0.0.0/8", "-j", nodePortsChain)

	return r
}

// renderFirewall writes the loadBalancerSourceRanges rules: traffic to a
// load balancer IP:port that has ranges goes through the source-range
// chain, which returns for allowed sources and drops the rest. Entries are
// deduplicated as kube-proxy's ipsets would be, so two Services claiming
// one IP:port allow the union of their ranges, as there.
func renderFirewall(f *ruleBuf, snap *core.Snapshot) {
	var nodeIPs []netip.Addr
	if snap.Node != nil {
		nodeIPs = snap.Node.Addresses
	}
	var allowed ruleBuf
	seen := map[string]bool{}
	for _, name := range snap.SortedServicePorts() {
		svc := snap.Services[name]
		if !svc.ClusterIP.Is4() || len(svc.LoadBalancerSourceRanges) == 0 {
			continue
		}
		proto := strings.ToLower(string(svc.Protocol))
		port := strconv.Itoa(int(svc.Port))
		label := name.String()
		fromNode := svc.SourceRangesAdmitNode(nodeIPs)
		for _, lb := range svc.LoadBalancerIPs {
			if !lb.Is4() {
				continue
			}
			dst := []string{"-m", proto, "-p", proto, "-d", lb.String(), "--dport", port}
			key := proto + "/" + netip.AddrPortFrom(lb, uint16(svc.Port)).String()
			if !seen[key] {
				seen[key] = true
				f.add(slices.Concat([]string{"-A", firewallChain, "-m", "comment", "--comment", quote(label + " load balancer IP")},
					dst, []string{"-j", sourceRangeChain})...)
			}
			allow := func(src netip.Prefix, comment string) {
				if k := key + " " + src.String(); !seen[k] {
					seen[k] = true
					allowed.add(slices.Concat([]string{"-A", sourceRangeChain, "-m", "comment", "--comment", quote(label + comment)},
						dst, []string{"-s", src.String(), "-j", "RETURN"})...)
				}
			}
			for _, r := range svc.LoadBalancerSourceRanges {
				if r.Addr().Is4() {
					allow(r, " load balancer source range")
				}
			}
			if fromNode {
				allow(netip.PrefixFrom(lb, 32), " load balancer IP from itself, this node is in a source range")
			}
		}
	}
	f.Write(allowed.Bytes())
	f.lines += allowed.lines
	f.add("-A", sourceRangeChain, "-m", "comment", "--comment", quote("proxymodes ipvs load balancer source not allowed"), "-j", "DROP")
}

// quoteArgs quotes arguments with spaces, as iptables-restore expects.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"") {
			a = quote(strings.ReplaceAll(a, `"`, `\"`))
		}
		out[i] = a
	}
	return out
}

// cleanupRules deletes our jump rules and chains from both tables in one
// batch; it restores nothing when nothing of ours is there.
func cleanupRules(ipt iptables.Interface) error {
	data, err := ipt.Save()
	if err != nil {
		return fmt.Errorf("reading rules: %w", err)
	}
	tables, err := iptables.ParseSave(data)
	if err != nil {
		return fmt.Errorf("parsing iptables-save output: %w", err)
	}
	var out bytes.Buffer
	for _, name := range []string{tableFilter, tableNAT} {
		t := tables[name]
		if t == nil {
			continue
		}
		var chains, jumps, deletes ruleBuf
		for _, cname := range t.SortedChains() {
			c := t.Chains[cname]
			switch {
			case c.Builtin:
				for _, r := range iptables.OwnedJumps(tables, name, cname, ownChain) {
					jumps.add("-D", cname, r.String())
				}
			case strings.HasPrefix(cname, ChainPrefix):
				fmt.Fprintf(&chains, ":%s - [0:0]\n", cname)
				deletes.add("-X", cname)
			}
		}
		if jumps.lines+deletes.lines == 0 {
			continue
		}
		fmt.Fprintf(&out, "*%s\n", name)
		out.Write(chains.Bytes())
		out.Write(jumps.Bytes())
		out.Write(deletes.Bytes())
		out.WriteString("COMMIT\n")
	}
	if out.Len() == 0 {
		return nil
	}
	if err := ipt.Restore(out.Bytes()); err != nil {
		return fmt.Errorf("removing rules: %w", err)
	}
	return nil
}
