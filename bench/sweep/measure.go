package sweep

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/backend"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/load"
	"github.com/proxymodes/proxymodes/harness/probe"
	"github.com/proxymodes/proxymodes/harness/syncstate"
	"github.com/proxymodes/proxymodes/proxier/nftables"
)

// labAPI is what the measurements need from a lab.
type labAPI interface {
	metricsSource
	load.Execer
	Probe(ctx context.Context, t probe.Target, n int, timeout time.Duration) probe.Summary
	IPTables(ctx context.Context, ns string) (string, error)
}

// waitSynced polls a node's proxier until it has completed at least
// minSyncs syncs and none for quiet, so that the next change starts from
// an idle proxier. It returns the last reading.
func waitSynced(ctx context.Context, lab labAPI, node string, minSyncs uint64, quiet, limit time.Duration) (syncstate.Metrics, error) {
	deadline := time.Now().Add(limit)
	var last syncstate.Metrics
	var lastCount uint64
	lastChange := time.Now()
	for {
		s, err := read(ctx, lab, node)
		if err == nil {
			if n := syncs(s); n != lastCount {
				lastCount, lastChange = n, time.Now()
			}
			last = s
			if lastCount >= minSyncs && time.Since(lastChange) >= quiet {
				return last, nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%d syncs, last one %s ago", lastCount, time.Since(lastChange).Round(time.Millisecond))
			}
			return last, fmt.Errorf("proxier on %s not settled after %s: %w", node, limit, err)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// fullSync is the duration of the proxier's first sync after a start: a
// full sync over every Service. The reference proxier and kube-proxy's
// iptables mode split full and partial syncs; kube-proxy's ipvs mode only
// does full ones, so its plain histogram is the same thing.
func fullSync(s syncstate.Metrics) (float64, bool) {
	for _, name := range []string{mSyncFull, mSync} {
		if n, sum, ok := s.Histogram(name); ok && n > 0 {
			// Startup may run a second, cheap sync; the first is the
			// expensive one, and the mean hides nothing at n=1.
			if n == 1 {
				return sum, true
			}
			return sum / float64(n), true
		}
	}
	return 0, false
}

// change is what one endpoint change measured.
type change struct {
	rules   time.Duration // until the node's proxier finished applying it
	conn    time.Duration // until a connection through the VIP reached the new endpoints
	partial float64       // mean duration of the syncs in between (seconds)
	hasPart bool
}

// measureChange swaps Service i's endpoints and times, concurrently, the
// node's proxier and the data plane. "Rules applied" is the proxier's own
// last-sync timestamp (both implementations set it once the kernel has the
// rules, before conntrack cleanup), read from the first syncstate.Metrics that shows
// a new sync: polling alone would add the syncstate.Metrics interval and lag behind
// the first connection.
func measureChange(ctx context.Context, lab labAPI, f *fleet, i int, node string, client cluster.Pod, limit time.Duration) (change, error) {
	before, err := read(ctx, lab, node)
	if err != nil {
		return change{}, err
	}
	vip := f.vip(i)
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t0 := time.Now()
	pods, err := f.swap(ctx, i, t0)
	if err != nil {
		return change{}, err
	}
	want := map[string]bool{}
	for _, p := range pods {
		want[p.Name] = true
	}
	var c change
	var after syncstate.Metrics
	rulesDone := make(chan error, 1)
	go func() {
		for {
			s, err := read(ctx, lab, node)
			if err == nil && syncs(s) > syncs(before) {
				seen := time.Since(t0)
				c.rules = seen
				if ts, ok := s.Latest(mLastSync); ok {
					// The proxier's clock is this host's (a UML guest
					// reads the host's too); trust it only when sane.
					if d := time.Unix(0, int64(ts*1e9)).Sub(t0); d > 0 && d <= seen {
						c.rules = d
					}
				}
				after = s
				rulesDone <- nil
				return
			}
			select {
			case <-ctx.Done():
				rulesDone <- ctx.Err()
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	target := probe.Target{NS: client.NS, Addr: netip.AddrPortFrom(vip, servicePort), Proto: probe.HTTP}
	for c.conn == 0 {
		s := lab.Probe(ctx, target, 1, 250*time.Millisecond)
		if len(s.Results) == 1 && s.Results[0].Err == nil && want[s.Results[0].Backend] {
			c.conn = time.Since(t0)
			break
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	rerr := <-rulesDone
	if err := parent.Err(); err != nil {
		return c, err
	}
	if c.conn == 0 || rerr != nil {
		return c, fmt.Errorf("%s (%s) not reprogrammed within %s: rules applied after %v, new endpoints served after %v", serviceName(i), vip, limit, c.rules, c.conn)
	}
	for _, name := range []string{mSyncPartial, mSync} {
		if v, ok := meanSince(before, after, name); ok {
			c.partial, c.hasPart = v, true
			break
		}
	}
	return c, nil
}

// ruleCounts counts a node's iptables rules, and IPVS virtual servers and
// destinations when the kernel has IPVS state.
func ruleCounts(ctx context.Context, lab labAPI, ns string, ipvs bool) (iptablesRules, services, dests int, err error) {
	dump, err := lab.IPTables(ctx, ns)
	if err != nil {
		return 0, 0, 0, err
	}
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, "-A ") {
			iptablesRules++
		}
	}
	if !ipvs {
		return iptablesRules, 0, 0, nil
	}
	out, err := lab.Exec(ctx, ns, "ipvsadm", "-Ln")
	if err != nil {
		return iptablesRules, 0, 0, err
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP"):
			services++
		case len(f) > 1 && f[0] == "->" && f[1] != "RemoteAddress:Port":
			dests++
		}
	}
	return iptablesRules, services, dests, nil
}

// nftTable is the table (family ip) an implementation's nftables mode
// keeps its state in.
func nftTable(impl string) string {
	if impl == cluster.ImplKubeProxy {
		return "kube-proxy"
	}
	return nftables.TableName
}

// nftCounts counts the rules in a node's nftables table, and the elements
// of its sets and maps, from `nft -j` (JSON, so no chain or comment line
// is mistaken for a rule).
func nftCounts(ctx context.Context, lab labAPI, ns, table string) (rules, elements int, err error) {
	out, err := lab.Exec(ctx, ns, "nft", "-j", "list", "table", "ip", table)
	if err != nil {
		return 0, 0, err
	}
	return parseNFTCounts(out)
}

func parseNFTCounts(text string) (rules, elements int, err error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(text), &doc); err != nil {
		return 0, 0, fmt.Errorf("reading nft -j output: %w", err)
	}
	for _, obj := range doc.Nftables {
		if _, ok := obj["rule"]; ok {
			rules++
		}
		for _, kind := range []string{"set", "map"} {
			raw, ok := obj[kind]
			if !ok {
				continue
			}
			var s struct {
				Elem []json.RawMessage `json:"elem"`
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				return 0, 0, fmt.Errorf("reading an nft %s: %w", kind, err)
			}
			elements += len(s.Elem)
		}
	}
	return rules, elements, nil
}

// dispatchPositions finds, in an iptables-save dump, the chain that
// dispatches Services (the one whose rules match the most of the given
// VIPs: KUBE-SERVICES, PM-SERVICES, a userspace portal chain), and the
// index of each VIP's first rule in it. A VIP without a rule there is
// left out.
func dispatchPositions(dump string, vips []netip.Addr) map[netip.Addr]int {
	want := map[string]netip.Addr{}
	for _, v := range vips {
		want[v.String()+"/32"] = v
	}
	type hit struct {
		vip   netip.Addr
		index int
	}
	chains := map[string][]hit{}
	count := map[string]int{}
	for _, l := range strings.Split(dump, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "-A" {
			continue
		}
		chain := f[1]
		index := count[chain]
		count[chain]++
		for i := 2; i+1 < len(f); i++ {
			if v, ok := want[f[i+1]]; ok && f[i] == "-d" {
				chains[chain] = append(chains[chain], hit{v, index})
				break
			}
		}
	}
	best := ""
	for c, hits := range chains {
		if len(hits) > len(chains[best]) || (len(hits) == len(chains[best]) && c < best) {
			best = c
		}
	}
	out := map[netip.Addr]int{}
	for _, h := range chains[best] {
		if _, seen := out[h.vip]; !seen {
			out[h.vip] = h.index
		}
	}
	return out
}

// directURL is a backend pod's own address: the physical floor every
// proxy mode is compared with.
func directURL(p cluster.Pod) string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(p.IP, backend.HTTPPort))
}

func vipURL(vip netip.Addr) string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(vip, servicePort))
}
