package userspace

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/proxymodes/proxymodes/proxier/core"
	"github.com/proxymodes/proxymodes/proxier/fault"
	"github.com/proxymodes/proxymodes/proxier/iptables"
)

// Chains of the userspace mode, all in the nat table. They start with
// iptables.ChainPrefix, so `proxier --cleanup` removes them too.
//
//	PREROUTING -> PM-PORTALS-CONTAINER   VIP:port, external and load balancer IPs, from pods and other hosts
//	           -> PM-NODEPORT-CONTAINER  NodePorts on local addresses
//	OUTPUT     -> PM-PORTALS-HOST        the same for connections the node itself opens
//	           -> PM-NODEPORT-HOST
//
// Every rule REDIRECTs to the service port's proxy socket, which listens
// on 0.0.0.0. REDIRECT in PREROUTING rewrites the destination to the
// primary address of the incoming interface; in OUTPUT it rewrites it to
// 127.0.0.1. Both reach a 0.0.0.0 listener without route_localnet (the
// packet never leaves the node), and no node IP has to be known. (kube-proxy
// DNATed host traffic to the node IP instead, which needs that IP and
// breaks when it changes.) The UDP socket answers from the address the
// datagram was delivered to, so conntrack maps the reply back to the VIP.
const (
	chainPortalsContainer  = "PM-PORTALS-CONTAINER"
	chainPortalsHost       = "PM-PORTALS-HOST"
	chainNodePortContainer = "PM-NODEPORT-CONTAINER"
	chainNodePortHost      = "PM-NODEPORT-HOST"
	// chainReject (filter) refuses new connections to service ports that
	// have no endpoints, as the other modes do: without a portal their
	// packets are routed towards the VIP, through FORWARD or OUTPUT.
	chainReject = "PM-PORTALS-REJECT"
)

// Chains lists the chains the userspace mode owns.
var Chains = []string{chainPortalsContainer, chainPortalsHost, chainNodePortContainer, chainNodePortHost, chainReject}

// natChains are the chains of the nat table.
var natChains = Chains[:4]

func ownChain(name string) bool {
	for _, c := range Chains {
		if c == name {
			return true
		}
	}
	return false
}

var (
	localDst = []string{"-m", "addrtype", "--dst-type", "LOCAL"}
	newConn  = []string{"-m", "conntrack", "--ctstate", "NEW"}
)

// jumps in the order they must appear at the top of each built-in chain:
// portals before NodePorts, as in kube-proxy.
var jumps = []iptables.Jump{
	{Table: "nat", From: "PREROUTING", To: chainPortalsContainer, Comment: "proxymodes userspace portals"},
	{Table: "nat", From: "PREROUTING", To: chainNodePortContainer, Comment: "proxymodes userspace nodeports", Extra: localDst},
	{Table: "nat", From: "OUTPUT", To: chainPortalsHost, Comment: "proxymodes userspace portals"},
	{Table: "nat", From: "OUTPUT", To: chainNodePortHost, Comment: "proxymodes userspace nodeports", Extra: localDst},
	{Table: "filter", From: "FORWARD", To: chainReject, Comment: "proxymodes userspace services without endpoints", Extra: newConn},
	{Table: "filter", From: "OUTPUT", To: chainReject, Comment: "proxymodes userspace services without endpoints", Extra: newConn},
}

// builtins are the built-in chains our jumps hang off, per table.
var builtins = []struct{ table, chain string }{
	{"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"filter", "FORWARD"}, {"filter", "OUTPUT"},
}

// portal is one service port and the proxy port its traffic goes to; a
// service port without endpoints gets a REJECT instead.
type portal struct {
	svc       *core.ServicePort
	proxyPort int
	reject    bool
}

// renderRules writes the restore batch for the nat table. Our chains are
// rewritten completely (a chain line flushes it). When existing is not nil
// (full syncs) the jump rules in PREROUTING and OUTPUT are checked against
// it and rewritten if they are missing, duplicated or out of order.
func renderRules(portals []portal, existing map[string]*iptables.Table) []byte {
	var nat, filter bytes.Buffer
	out := map[string]*bytes.Buffer{"nat": &nat, "filter": &filter}
	for _, c := range natChains {
		fmt.Fprintf(&nat, ":%s - [0:0]\n", c)
	}
	fmt.Fprintf(&filter, ":%s - [0:0]\n", chainReject)
	if existing != nil {
		for _, bi := range builtins {
			var want []iptables.Jump
			for _, j := range jumps {
				if j.Table == bi.table && j.From == bi.chain {
					want = append(want, j)
				}
			}
			have := iptables.OwnedJumps(existing, bi.table, bi.chain, ownChain)
			if iptables.JumpsMatch(have, want) {
				continue
			}
			for _, r := range have {
				fmt.Fprintf(out[bi.table], "-D %s %s\n", bi.chain, r.String())
			}
			for i, j := range want {
				fmt.Fprintf(out[bi.table], "-I %s %d %s\n", bi.chain, i+1, join(j.Args()))
			}
		}
	}
	for _, p := range portals {
		svc := p.svc
		proto := strings.ToLower(string(svc.Protocol))
		port := strconv.Itoa(int(svc.Port))
		to := []string{"-j", "REDIRECT", "--to-ports", strconv.Itoa(p.proxyPort)}
		label := svc.Name.String()
		dsts := []struct {
			ip   string
			what string
		}{{svc.ClusterIP.String(), "cluster IP"}}
		for _, eip := range svc.ExternalIPs {
			dsts = append(dsts, struct{ ip, what string }{eip.String(), "external IP"})
		}
		// Upstream's userspace proxier opened a portal on each load
		// balancer ingress IP, with no firewall: it never implemented
		// loadBalancerSourceRanges.
		for _, ip := range svc.LoadBalancerIPs {
			dsts = append(dsts, struct{ ip, what string }{ip.String(), "load balancer IP"})
		}
		for _, d := range dsts {
			match := []string{"-m", "comment", "--comment", quote(label + " " + d.what),
				"-p", proto, "-m", proto, "-d", d.ip + "/32", "--dport", port}
			if p.reject {
				fmt.Fprintf(&filter, "-A %s %s -j %s\n", chainReject, strings.Join(match, " "), fault.RejectTarget())
				continue
			}
			args := append(match, to...)
			fmt.Fprintf(&nat, "-A %s %s\n", chainPortalsContainer, strings.Join(args, " "))
			fmt.Fprintf(&nat, "-A %s %s\n", chainPortalsHost, strings.Join(args, " "))
		}
		if svc.NodePort != 0 && !p.reject {
			args := append([]string{"-m", "comment", "--comment", quote(label + " node port"),
				"-p", proto, "-m", proto, "--dport", strconv.Itoa(int(svc.NodePort))}, to...)
			fmt.Fprintf(&nat, "-A %s %s\n", chainNodePortContainer, strings.Join(args, " "))
			fmt.Fprintf(&nat, "-A %s %s\n", chainNodePortHost, strings.Join(args, " "))
		}
	}
	var b bytes.Buffer
	for _, t := range []string{"nat", "filter"} {
		fmt.Fprintf(&b, "*%s\n", t)
		b.Write(out[t].Bytes())
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

// renderCleanup writes the batch that removes our jumps and chains from
// the nat table described by tables; nil when there is nothing to remove.
func renderCleanup(tables map[string]*iptables.Table) []byte {
	var b bytes.Buffer
	for _, table := range []string{"nat", "filter"} {
		t := tables[table]
		if t == nil {
			continue
		}
		var chains, rules bytes.Buffer
		n := 0
		for _, bi := range builtins {
			if bi.table != table {
				continue
			}
			for _, r := range iptables.OwnedJumps(tables, table, bi.chain, ownChain) {
				fmt.Fprintf(&rules, "-D %s %s\n", bi.chain, r.String())
				n++
			}
		}
		for _, c := range Chains {
			if _, ok := t.Chains[c]; ok {
				fmt.Fprintf(&chains, ":%s - [0:0]\n", c)
				fmt.Fprintf(&rules, "-X %s\n", c)
				n++
			}
		}
		if n == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		b.Write(chains.Bytes())
		b.Write(rules.Bytes())
		b.WriteString("COMMIT\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return b.Bytes()
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }

// join renders arguments for a restore line, quoting those with spaces.
func join(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"") {
			a = quote(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
