package sweep

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/proxymodes/proxymodes/bench/result"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/load"
)

// bench is one lab set up for the sweep: a client pod on node-1, the
// backends on node-2 (so every request crosses the fabric, direct or not),
// and the Services.
type bench struct {
	lab    *local.Lab
	c      Config
	kernel string // local.KernelHost or local.KernelUML
	// paths are the PATH directories that give kube-proxy an iptables
	// backend (backendPaths), in the host kernel.
	paths  map[string]string
	node   string // the client's node, whose proxier is timed
	client cluster.Pod
	fleet  *fleet
}

func newBench(ctx context.Context, lab *local.Lab, c Config) (*bench, error) {
	nodes := lab.Info().Nodes
	rc := rest.CopyConfig(lab.RESTConfig())
	// Bulk creation is the point; the default 5 QPS would take an hour.
	rc.QPS, rc.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	b := &bench{lab: lab, c: c, node: nodes[0].Name, fleet: &fleet{client: client}}
	if b.client, err = lab.AddPod(ctx, cluster.PodSpec{Namespace: namespace, Name: "client", Node: nodes[0].Name}); err != nil {
		return nil, err
	}
	for set := 0; set < 2; set++ {
		for j := 0; j < c.Endpoints; j++ {
			p, err := lab.AddPod(ctx, cluster.PodSpec{Namespace: namespace, Name: fmt.Sprintf("backend-%d-%d", set, j), Node: nodes[len(nodes)-1].Name})
			if err != nil {
				return nil, err
			}
			b.fleet.sets[set] = append(b.fleet.sets[set], p)
		}
	}
	return b, nil
}

// measure fills one point. The direct baseline runs with no proxier at
// all: iptables rules are traversed even by traffic to pod IPs, so leaving
// one running would raise the floor.
func (b *bench) measure(ctx context.Context, p proxier, pt *result.Point) error {
	if p.mode == result.ModeDirect {
		if err := b.lab.SwitchProxiers(ctx, nil); err != nil {
			return err
		}
		var urls []string
		for _, set := range b.fleet.sets {
			for _, p := range set {
				urls = append(urls, directURL(p))
			}
		}
		return b.dataPlane(ctx, pt, urls, nil)
	}
	po, err := proxierOptions(p, b.kernel, b.paths, b.c.Limit)
	if err != nil {
		return err
	}
	if err := b.lab.SwitchProxiers(ctx, po); err != nil {
		return err
	}
	if _, err := waitSynced(ctx, b.lab, b.node, 1, time.Second, b.c.Limit); err != nil {
		return err
	}
	// Two starting states, kept apart: a restart over the proxier's own
	// rules, and a node its own --cleanup has cleared (what a fresh node
	// has). The first sync after the switch above is in neither: it may
	// include work the previous proxier left.
	for r := 0; r < b.c.Repeats; r++ {
		for _, start := range []struct {
			unit    string
			restart func(context.Context) error
		}{
			{result.UnitColdFullSec, func(ctx context.Context) error { return b.lab.SwitchProxiers(ctx, po) }},
			{result.UnitFullSec, func(ctx context.Context) error { return b.lab.RestartProxiers(ctx) }},
		} {
			if err := start.restart(ctx); err != nil {
				return err
			}
			s, err := waitSynced(ctx, b.lab, b.node, 1, time.Second, b.c.Limit)
			if err != nil {
				return err
			}
			if v, ok := fullSync(s); ok {
				pt.Add(result.Sync, start.unit, v)
			}
		}
	}
	if err := b.changes(ctx, pt); err != nil {
		return err
	}
	vips := b.loadTargets()
	var urls []string
	for _, v := range vips {
		urls = append(urls, vipURL(v))
	}
	if p.mode == result.ModeIPVS || p.mode == result.ModeNFTables {
		vips = nil // a hash lookup (a verdict map in nftables): no position to record
	}
	if err := b.dataPlane(ctx, pt, urls, vips); err != nil {
		return err
	}
	if s, err := read(ctx, b.lab, b.node); err == nil {
		if v, ok := s.Total(mCPU); ok {
			pt.Add(result.Resources, result.UnitCPUSec, v)
		}
		if v, ok := s.Total(mRSS); ok {
			pt.Add(result.Resources, result.UnitRSSBytes, v)
		}
	}
	nodeNS := b.lab.Info().Nodes[0].NS
	ipt, svcs, dests, err := ruleCounts(ctx, b.lab, nodeNS, p.mode == result.ModeIPVS)
	if err != nil {
		return fmt.Errorf("counting rules: %w", err)
	}
	pt.Add(result.Rules, result.UnitIPTablesRules, float64(ipt))
	if p.mode == result.ModeIPVS {
		pt.Add(result.Rules, result.UnitIPVSServices, float64(svcs))
		pt.Add(result.Rules, result.UnitIPVSDests, float64(dests))
	}
	if p.mode == result.ModeNFTables {
		rules, elems, err := nftCounts(ctx, b.lab, nodeNS, nftTable(p.labImpl()))
		if err != nil {
			return fmt.Errorf("counting nftables rules: %w", err)
		}
		pt.Add(result.Rules, result.UnitNFTRules, float64(rules))
		pt.Add(result.Rules, result.UnitNFTElements, float64(elems))
	}
	return nil
}

// changes times endpoint changes on Services spread over the fleet, each
// from an idle proxier (no sync for a second, which is also kube-proxy's
// default minimum sync period, so none waits for that limit).
func (b *bench) changes(ctx context.Context, pt *result.Point) error {
	n := b.fleet.size()
	var rules, conns []time.Duration
	for j := 0; j < b.c.Changes; j++ {
		if _, err := waitSynced(ctx, b.lab, b.node, 1, 1100*time.Millisecond, b.c.Limit); err != nil {
			return err
		}
		i := (j*n/b.c.Changes + j) % n
		ch, err := measureChange(ctx, b.lab, b.fleet, i, b.node, b.client, b.c.Limit)
		if err != nil {
			return err
		}
		rules, conns = append(rules, ch.rules), append(conns, ch.conn)
		if ch.hasPart {
			pt.Add(result.Sync, result.UnitPartialSec, ch.partial)
		}
	}
	pt.Add(result.Programming, result.UnitRulesP50Sec, load.Quantile(rules, 0.50).Seconds())
	pt.Add(result.Programming, result.UnitRulesP99Sec, load.Quantile(rules, 0.99).Seconds())
	pt.Add(result.Programming, result.UnitConnP50Sec, load.Quantile(conns, 0.50).Seconds())
	pt.Add(result.Programming, result.UnitConnP99Sec, load.Quantile(conns, 0.99).Seconds())
	return nil
}

// loadTargets are the Services the data-plane load goes to: LoadTargets
// of them (all, in smaller fleets) at evenly spaced places in creation
// order. One Service would measure one place in an iptables chain, which
// a proxier that orders its rules differently puts elsewhere; the mean
// over evenly spaced ones is the expected cost over places.
func (b *bench) loadTargets() []netip.Addr {
	n := b.fleet.size()
	k := min(LoadTargets, n)
	var out []netip.Addr
	for j := 0; j < k; j++ {
		out = append(out, b.fleet.vip((2*j+1)*n/(2*k)))
	}
	return out
}

// LoadTargets is how many Services the data-plane load is spread over.
const LoadTargets = 16

// dataPlane sends Repeats load runs from the client pod over urls, in
// turn. With vips (the Services behind urls, in order) it also records
// where each Service's dispatch rule sits on the client's node, read
// after each run, and that target's median latency.
func (b *bench) dataPlane(ctx context.Context, pt *result.Point, urls []string, vips []netip.Addr) error {
	for r := 0; r < b.c.Repeats; r++ {
		o := b.c.Load
		o.URLs = urls
		res, err := load.Run(ctx, b.lab, b.client.NS, o)
		if err != nil {
			return err
		}
		if err := unanswered(res); err != nil {
			return err
		}
		if res.Errors > 0 {
			b.c.Log("  %d of %d requests got no response: %s", res.Errors, res.Requests, result.CountsByMessage(res.ErrorKinds))
			if pt.LostBy == nil {
				pt.LostBy = map[string]int{}
			}
			for k, n := range res.ErrorKinds {
				pt.LostBy[k] += n
			}
		}
		pt.Add(result.DataPlane, result.UnitLost, float64(res.Errors))
		if len(vips) > 0 {
			if err := b.recordPositions(ctx, pt, r, vips, res.Targets); err != nil {
				return err
			}
		}
		pt.Add(result.DataPlane, result.UnitP50Sec, res.P50.Seconds())
		pt.Add(result.DataPlane, result.UnitP90Sec, res.P90.Seconds())
		pt.Add(result.DataPlane, result.UnitP99Sec, res.P99.Seconds())
		pt.Add(result.DataPlane, result.UnitReqPerSec, res.RPS)
	}
	return nil
}

func (b *bench) recordPositions(ctx context.Context, pt *result.Point, rep int, vips []netip.Addr, targets []load.Target) error {
	dump, err := b.lab.IPTables(ctx, b.lab.Info().Nodes[0].NS)
	if err != nil {
		return fmt.Errorf("reading rule positions: %w", err)
	}
	at := dispatchPositions(dump, vips)
	for i, v := range vips {
		idx, ok := at[v]
		if !ok || i >= len(targets) {
			return fmt.Errorf("no dispatch rule for load target %s on %s: the position plot would miss it", v, b.node)
		}
		pt.Positions = append(pt.Positions, result.Position{Rep: rep, Index: idx, P50Sec: targets[i].P50.Seconds()})
	}
	return nil
}

// unanswered fails a load run in which a target answered nothing: that is
// a broken lab or proxier, not a figure. A few requests lost among
// answered ones are a figure (lost), with their errors kept.
func unanswered(res load.Result) error {
	for _, t := range res.Targets {
		if t.Requests > 0 && t.Errors == t.Requests {
			return fmt.Errorf("load to %s: none of its %d requests got a response (%s)", t.URL, t.Requests, result.CountsByMessage(res.ErrorKinds))
		}
	}
	return nil
}
