package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Packet is what the tracer knows about a packet.
type Packet struct {
	Protocol string // "tcp", "udp" or "sctp"
	Src, Dst netip.Addr
	SrcPort  uint16
	DstPort  uint16
	// LocalSrc and LocalDst answer "-m addrtype --src-type/--dst-type LOCAL".
	LocalSrc, LocalDst bool
	// CtState is the conntrack state; empty means NEW.
	CtState string
	// Mark is the packet mark on entry.
	Mark uint32
}

// Outcome is one way a packet can leave a chain walk.
type Outcome struct {
	// Verdict is ACCEPT, DROP, REJECT, DNAT, SNAT or MASQUERADE. A walk
	// that falls off a built-in chain gets the chain's policy.
	Verdict string
	// DNAT is the --to-destination of a DNAT verdict.
	DNAT string
	// Mark is the packet mark at the end of the walk.
	Mark uint32
	// Chains lists the chains entered, in order.
	Chains []string
	// Random is true when the outcome depends on a statistic or recent
	// match, i.e. it is one of several possible outcomes.
	Random bool
}

// EndpointChain returns the last per-endpoint (PM-SEP-) chain entered.
func (o Outcome) EndpointChain() string {
	for i := len(o.Chains) - 1; i >= 0; i-- {
		if strings.HasPrefix(o.Chains[i], sepChainPrefix) {
			return o.Chains[i]
		}
	}
	return ""
}

func (o Outcome) String() string {
	s := o.Verdict
	if o.DNAT != "" {
		s += " to " + o.DNAT
	}
	if o.Mark != 0 {
		s += fmt.Sprintf(" mark %#x", o.Mark)
	}
	return s + " via " + strings.Join(o.Chains, " -> ")
}

// Trace walks p through chain of table and returns every possible outcome.
// Statistic and recent --rcheck matches may or may not match, so both
// branches are followed: a load-balanced Service yields one outcome per
// endpoint. Outcomes that differ only in path are reported once.
func (f *Fake) Trace(table, chain string, p Packet) ([]Outcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("no table %s", table)
	}
	c, ok := t.Chains[chain]
	if !ok || !c.Builtin {
		return nil, fmt.Errorf("%s is not a built-in chain of table %s", chain, table)
	}
	if p.CtState == "" {
		p.CtState = "NEW"
	}
	tr := &tracer{table: t, pkt: p, parsed: map[*Rule]*parsedRule{}}
	ends, err := tr.walk(c, 0, walkState{mark: p.Mark, chains: []string{chain}}, 0)
	if err != nil {
		return nil, err
	}
	var out []Outcome
	seen := map[string]bool{}
	for _, e := range ends {
		o := e.outcome
		if e.returned {
			o = Outcome{Verdict: c.Policy, Mark: e.state.mark, Chains: e.state.chains, Random: e.state.random}
		}
		key := fmt.Sprintf("%s|%s|%d|%s", o.Verdict, o.DNAT, o.Mark, o.EndpointChain())
		if !seen[key] {
			seen[key] = true
			out = append(out, o)
		}
	}
	return out, nil
}

type walkState struct {
	mark   uint32
	chains []string
	random bool
}

func (s walkState) enter(chain string) walkState {
	s.chains = append(append([]string(nil), s.chains...), chain)
	return s
}

type walkEnd struct {
	returned bool // fell off the end or hit RETURN; state continues in the caller
	state    walkState
	outcome  Outcome
}

type tracer struct {
	table  *Table
	pkt    Packet
	parsed map[*Rule]*parsedRule
}

const maxTraceDepth = 32

func (tr *tracer) walk(c *Chain, from int, st walkState, depth int) ([]walkEnd, error) {
	if depth > maxTraceDepth {
		return nil, fmt.Errorf("trace deeper than %d chains at %s: loop?", maxTraceDepth, c.Name)
	}
	// notTaken collects the outcomes of rules that may not match; they are
	// reported after the outcomes of the branch that does match, so
	// outcomes come out in rule order.
	var notTaken []walkEnd
	done := func(ends ...walkEnd) ([]walkEnd, error) {
		return append(ends, notTaken...), nil
	}
	for i := from; i < len(c.Rules); i++ {
		r := &c.Rules[i]
		pr, ok := tr.parsed[r]
		if !ok {
			var err error
			if pr, err = parseRule(r.Args); err != nil {
				return nil, fmt.Errorf("chain %s rule %d: %v", c.Name, i+1, err)
			}
			tr.parsed[r] = pr
		}
		m := pr.matches(tr.pkt, st.mark)
		if m == no {
			continue
		}
		if m == maybe {
			st = withRandom(st)
			rest, err := tr.walk(c, i+1, st, depth)
			if err != nil {
				return nil, err
			}
			notTaken = append(rest, notTaken...)
		}
		tg := pr.target
		switch tg.name {
		case "MARK":
			st.mark = (st.mark &^ tg.clearMask) ^ tg.xorMark | tg.orMark
			continue
		case "LOG":
			continue
		case "RETURN":
			return done(walkEnd{returned: true, state: st})
		case "ACCEPT", "DROP", "REJECT", "DNAT", "SNAT", "MASQUERADE":
			return done(walkEnd{state: st, outcome: Outcome{
				Verdict: tg.name, DNAT: tg.toDest, Mark: st.mark, Chains: st.chains, Random: st.random,
			}})
		}
		next, ok := tr.table.Chains[tg.name]
		if !ok {
			return nil, fmt.Errorf("chain %s rule %d: jump to missing chain %s", c.Name, i+1, tg.name)
		}
		subs, err := tr.walk(next, 0, st.enter(tg.name), depth+1)
		if err != nil {
			return nil, err
		}
		var ends []walkEnd
		for _, s := range subs {
			if !s.returned {
				ends = append(ends, s)
				continue
			}
			// Back in this chain after the jump, with the sub-walk's
			// mark; the chain path keeps the sub-chains for reporting.
			more, err := tr.walk(c, i+1, s.state, depth)
			if err != nil {
				return nil, err
			}
			ends = append(ends, more...)
		}
		return done(ends...)
	}
	return done(walkEnd{returned: true, state: st})
}

func withRandom(s walkState) walkState { s.random = true; return s }

type tri int

const (
	no tri = iota
	yes
	maybe
)

type matchKind int

const (
	mProto matchKind = iota
	mSrc
	mDst
	mDport
	mSport
	mStatistic
	mRecentCheck
	mMark
	mSrcType
	mDstType
	mCtState
)

type match struct {
	kind      matchKind
	negate    bool
	str       string
	prefix    netip.Prefix
	port      uint16
	mark      uint32
	mask      uint32
	prob      float64
	ctStates  []string
	addrTypes []string
}

type target struct {
	name      string
	toDest    string
	orMark    uint32
	xorMark   uint32
	clearMask uint32
}

type parsedRule struct {
	matches_ []match
	target   target
}

// parseRule understands the options the iptables mode writes (and
// iptables-save prints back). Anything else is an error, so a typo in the
// renderer fails the fake instead of being silently ignored.
func parseRule(args []string) (*parsedRule, error) {
	pr := &parsedRule{}
	negate := false
	value := func(i int) (string, error) {
		if i+1 >= len(args) {
			return "", fmt.Errorf("option %s needs a value", args[i])
		}
		return args[i+1], nil
	}
	add := func(m match) {
		m.negate = negate
		pr.matches_ = append(pr.matches_, m)
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "!" {
			negate = true
			continue
		}
		var v string
		var err error
		flag := a == "--reap" || a == "--rcheck" || a == "--set" || a == "--rsource"
		if !flag {
			if v, err = value(i); err != nil {
				return nil, err
			}
		}
		switch a {
		case "-p", "--protocol":
			add(match{kind: mProto, str: strings.ToLower(v)})
		case "-s", "--source", "-d", "--destination":
			pfx, err := parsePrefix(v)
			if err != nil {
				return nil, err
			}
			kind := mSrc
			if a == "-d" || a == "--destination" {
				kind = mDst
			}
			add(match{kind: kind, prefix: pfx})
		case "-m", "--match", "--comment", "--name", "--seconds", "--mask":
			// Modules are implied by their options; comments and recent
			// list names do not affect matching.
		case "--mode":
			if v != "random" {
				return nil, fmt.Errorf("statistic mode %q not modelled", v)
			}
		case "--probability":
			p, err := strconv.ParseFloat(v, 64)
			if err != nil || p < 0 || p > 1 {
				return nil, fmt.Errorf("bad probability %q", v)
			}
			add(match{kind: mStatistic, prob: p})
		case "--rcheck":
			add(match{kind: mRecentCheck})
		case "--set", "--reap", "--rsource":
			// recent --set always matches; it only records the source.
		case "--dport", "--destination-port", "--sport", "--source-port":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("bad port %q", v)
			}
			kind := mDport
			if a == "--sport" || a == "--source-port" {
				kind = mSport
			}
			add(match{kind: kind, port: uint16(n)})
		case "--mark":
			val, mask, err := parseMark(v)
			if err != nil {
				return nil, err
			}
			add(match{kind: mMark, mark: val, mask: mask})
		case "--src-type", "--dst-type":
			kind := mSrcType
			if a == "--dst-type" {
				kind = mDstType
			}
			add(match{kind: kind, addrTypes: strings.Split(v, ",")})
		case "--ctstate":
			add(match{kind: mCtState, ctStates: strings.Split(v, ",")})
		case "-j", "--jump":
			pr.target.name = v
			i++
			if err := parseTarget(&pr.target, args[i+1:]); err != nil {
				return nil, err
			}
			return pr, nil
		default:
			return nil, fmt.Errorf("option %q not modelled by the fake", a)
		}
		if !flag {
			i++
		}
		negate = false
	}
	return nil, fmt.Errorf("rule has no -j target")
}

func parseTarget(t *target, args []string) error {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--random-fully" {
			continue
		}
		if i+1 >= len(args) {
			return fmt.Errorf("target option %s needs a value", a)
		}
		v := args[i+1]
		i++
		switch a {
		case "--to-destination":
			if _, err := netip.ParseAddrPort(v); err != nil {
				return fmt.Errorf("bad --to-destination %q: %v", v, err)
			}
			t.toDest = v
		case "--or-mark", "--xor-mark":
			m, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				return fmt.Errorf("bad mark %q", v)
			}
			if a == "--or-mark" {
				t.orMark = uint32(m)
			} else {
				t.xorMark = uint32(m)
			}
		case "--set-xmark":
			val, mask, err := parseMark(v)
			if err != nil {
				return err
			}
			t.clearMask, t.xorMark = mask, val
		case "--reject-with":
		default:
			return fmt.Errorf("target option %q not modelled by the fake", a)
		}
	}
	return nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parseMark(s string) (val, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("bad mark mask %q", s)
		}
	}
	return uint32(v), uint32(m), nil
}

func (pr *parsedRule) matches(p Packet, mark uint32) tri {
	result := yes
	for _, m := range pr.matches_ {
		r := m.eval(p, mark)
		if m.negate {
			switch r {
			case yes:
				r = no
			case no:
				r = yes
			}
		}
		if r == no {
			return no
		}
		if r == maybe {
			result = maybe
		}
	}
	return result
}

func (m match) eval(p Packet, mark uint32) tri {
	b := func(v bool) tri {
		if v {
			return yes
		}
		return no
	}
	switch m.kind {
	case mProto:
		return b(m.str == "all" || m.str == p.Protocol)
	case mSrc:
		return b(m.prefix.Contains(p.Src))
	case mDst:
		return b(m.prefix.Contains(p.Dst))
	case mDport:
		return b(m.port == p.DstPort)
	case mSport:
		return b(m.port == p.SrcPort)
	case mStatistic:
		if m.prob >= 1 {
			return yes
		}
		if m.prob <= 0 {
			return no
		}
		return maybe
	case mRecentCheck:
		return maybe
	case mMark:
		return b(mark&m.mask == m.mark)
	case mSrcType, mDstType:
		local := p.LocalSrc
		if m.kind == mDstType {
			local = p.LocalDst
		}
		for _, t := range m.addrTypes {
			if t == "LOCAL" {
				return b(local)
			}
		}
		return maybe
	case mCtState:
		for _, s := range m.ctStates {
			if s == p.CtState || (s == "DNAT" && p.CtState == "ESTABLISHED") {
				return yes
			}
		}
		return no
	}
	return maybe
}
