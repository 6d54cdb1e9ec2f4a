package nftables

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// Packet is what the tracer knows about a packet.
type Packet struct {
	Protocol string // "tcp", "udp" or "sctp"
	Src, Dst netip.Addr
	DstPort  uint16
	// LocalDst answers "fib daddr type local": the destination is one of
	// the node's own addresses.
	LocalDst bool
	// LocalSrc answers "fib saddr type local": the packet comes from one
	// of the node's own addresses (the node itself sent it).
	LocalSrc bool
	// Established is true for a packet of a connection conntrack knows;
	// false means ct state new.
	Established bool
	// Mark is the packet mark on entry.
	Mark uint32
}

// Outcome is one way a packet can leave a walk of the table.
type Outcome struct {
	// Verdict is accept, drop, reject, dnat or masquerade. A walk that
	// falls off a base chain is accepted (our base chains' policy).
	Verdict string
	// DNAT is the address of a dnat verdict.
	DNAT string
	// Mark is the packet mark at the end of the walk.
	Mark uint32
	// Chains lists the chains entered, in order.
	Chains []string
	// Random is true when the outcome is one of several that numgen or an
	// affinity set chooses between.
	Random bool
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

// Trace walks p through the base chain (e.g. "nat-prerouting",
// "filter-forward") of the table the Fake holds and returns every possible
// outcome: numgen picks and affinity-set matches are followed both ways,
// so a Service with N endpoints yields N outcomes (more with affinity).
// It understands the rule forms this mode writes, and fails on any other,
// so a change to the rules cannot silently escape the trace tests.
func Trace(fake *knftables.Fake, base string, p Packet) ([]Outcome, error) {
	if fake.Table == nil {
		return nil, fmt.Errorf("no table %s", TableName)
	}
	tr := &tracer{fake: fake, pkt: p}
	ends, err := tr.walk(base, state{mark: p.Mark}, 0)
	if err != nil {
		return nil, err
	}
	var out []Outcome
	seen := map[string]bool{}
	for _, e := range ends {
		o := e.outcome
		if e.kind != verdict {
			o = Outcome{Verdict: "accept", Mark: e.st.mark, Chains: e.st.chains, Random: e.st.random}
		}
		if k := o.String(); !seen[k] {
			seen[k] = true
			out = append(out, o)
		}
	}
	return out, nil
}

type state struct {
	mark   uint32
	chains []string
	random bool
}

func (s state) enter(chain string) state {
	s.chains = append(append([]string(nil), s.chains...), chain)
	return s
}

// How one branch of a rule or chain ends.
type endKind int

const (
	next    endKind = iota // the rule did not decide: on to the next rule
	back                   // the chain ended (return, or its end): on in the caller
	verdict                // a final verdict
)

type end struct {
	kind    endKind
	outcome Outcome // verdict only
	st      state
}

type tracer struct {
	fake *knftables.Fake
	pkt  Packet
}

func (tr *tracer) walk(chain string, st state, depth int) ([]end, error) {
	if depth > 32 {
		return nil, fmt.Errorf("chain %s: jumps nest deeper than 32", chain)
	}
	c := tr.fake.Table.Chains[chain]
	if c == nil {
		return nil, fmt.Errorf("no chain %s", chain)
	}
	branches := []state{st.enter(chain)}
	var ends []end
	for _, r := range c.Rules {
		var cont []state
		for _, b := range branches {
			res, err := tr.rule(r.Rule, b, depth)
			if err != nil {
				return nil, fmt.Errorf("chain %s, rule %q: %w", chain, r.Rule, err)
			}
			for _, e := range res {
				if e.kind == next {
					cont = append(cont, e.st)
				} else {
					ends = append(ends, e)
				}
			}
		}
		branches = cont
	}
	for _, b := range branches {
		ends = append(ends, end{kind: back, st: b})
	}
	return ends, nil
}

func (tr *tracer) rule(rule string, st state, depth int) ([]end, error) {
	f := strings.Fields(rule)
	maybe, skip := false, false
	// Matches first: one that fails skips the rule, but only after the
	// statement is known, so that a rule this packet does not match
	// cannot hide a form the tracer does not understand.
	for {
		n, m, err := tr.match(f)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
		switch m {
		case no:
			skip = true
		case perhaps:
			maybe = true
		}
		f = f[n:]
	}
	run, err := tr.parse(f)
	if err != nil {
		return nil, err
	}
	if skip {
		return []end{{kind: next, st: st}}, nil
	}
	res, err := run(st, depth)
	if err != nil || !maybe {
		return res, err
	}
	// The rule may not match at all: both ways, each one of several.
	out := []end{{kind: next, st: st}}
	for _, e := range res {
		e.st.random = true
		e.outcome.Random = true
		out = append(out, e)
	}
	return out, nil
}

type matched int

const (
	yes matched = iota
	no
	perhaps
)

func truth(b bool) matched {
	if b {
		return yes
	}
	return no
}

// match consumes one match expression at the start of f: how many words
// it took (0: f starts with a statement) and whether the packet matches.
func (tr *tracer) match(f []string) (int, matched, error) {
	p := tr.pkt
	switch {
	case len(f) >= 3 && f[0] == "ct" && f[1] == "state" && f[2] == "new":
		return 3, truth(!p.Established), nil
	case len(f) >= 8 && strings.Join(f[:8], " ") == "fib daddr type local ip daddr != 127.0.0.0/8":
		return 8, truth(p.LocalDst && !netip.MustParsePrefix("127.0.0.0/8").Contains(p.Dst)), nil
	case len(f) >= 4 && strings.Join(f[:4], " ") == "fib saddr type local":
		return 4, truth(p.LocalSrc), nil
	case len(f) >= 6 && strings.Join(f[:3], " ") == "numgen random mod" && f[4] == "==":
		// One step of a pick cascade: taken or not, each one of several.
		if _, err := strconv.Atoi(f[3]); err != nil {
			return 0, no, fmt.Errorf("bad numgen modulus in %q", strings.Join(f[:6], " "))
		}
		return 6, perhaps, nil
	case len(f) >= 3 && f[0] == "meta" && f[1] == "l4proto" && f[2] != ".":
		return 3, truth(f[2] == p.Protocol), nil
	case len(f) >= 3 && f[0] == "ip" && f[1] == "saddr":
		v, n, neg := f[2], 3, false
		if v == "!=" {
			if len(f) < 4 {
				return 0, no, fmt.Errorf("bad saddr match")
			}
			v, n, neg = f[3], 4, true
		}
		if strings.HasPrefix(v, "@") {
			// An affinity set: it may hold the client or not.
			return n, perhaps, nil
		}
		if v == "{" {
			// An anonymous set: "{ a , b/16 , c }".
			in := false
			for ; ; n++ {
				if n >= len(f) {
					return 0, no, fmt.Errorf("unterminated set in %q", strings.Join(f, " "))
				}
				w := f[n]
				if w == "}" {
					return n + 1, truth(in != neg), nil
				}
				if w == "{" || w == "," {
					continue
				}
				c, err := contains(w, p.Src)
				if err != nil {
					return 0, no, err
				}
				in = in || c
			}
		}
		in, err := contains(v, p.Src)
		return n, truth(in != neg), err
	case len(f) >= 3 && f[0] == "ip" && f[1] == "daddr" && f[2] != ".":
		// Only a plain address: the dispatch rules' "ip daddr . ..."
		// keys are map lookups, and nothing here writes a prefix or a
		// negation for the destination.
		a, err := netip.ParseAddr(f[2])
		if err != nil {
			return 0, no, fmt.Errorf("the tracer does not know the daddr match %q", strings.Join(f[:3], " "))
		}
		return 3, truth(a == p.Dst), nil
	}
	return 0, yes, nil
}

func contains(v string, a netip.Addr) (bool, error) {
	if strings.Contains(v, "/") {
		pr, err := netip.ParsePrefix(v)
		return err == nil && pr.Contains(a), err
	}
	b, err := netip.ParseAddr(v)
	return err == nil && a == b, err
}

func parseMark(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 0, 32)
	return uint32(v), err
}

func final(v string, st state, dnat string) end {
	return end{kind: verdict, outcome: Outcome{Verdict: v, DNAT: dnat, Mark: st.mark, Chains: st.chains, Random: st.random}}
}

func (tr *tracer) statement(f []string, st state, depth int) ([]end, error) {
	run, err := tr.parse(f)
	if err != nil {
		return nil, err
	}
	return run(st, depth)
}

// step runs a parsed statement on one branch.
type step func(st state, depth int) ([]end, error)

func continues(st state, _ int) ([]end, error) { return []end{{kind: next, st: st}}, nil }

// parse recognises a statement without running it.
func (tr *tracer) parse(f []string) (step, error) {
	s := strings.Join(f, " ")
	switch {
	case len(f) == 2 && (f[0] == "jump" || f[0] == "goto"):
		return func(st state, depth int) ([]end, error) {
			ends, err := tr.walk(f[1], st, depth+1)
			if err != nil {
				return nil, err
			}
			if f[0] == "goto" {
				// The callee's end is this chain's end.
				return ends, nil
			}
			for i := range ends {
				if ends[i].kind == back {
					ends[i].kind = next
				}
			}
			return ends, nil
		}, nil
	case s == "return":
		return func(st state, _ int) ([]end, error) { return []end{{kind: back, st: st}}, nil }, nil
	case s == "reject" || s == "drop":
		return func(st state, _ int) ([]end, error) { return []end{final(s, st, "")}, nil }, nil
	case s == "masquerade fully-random":
		return func(st state, _ int) ([]end, error) { return []end{final("masquerade", st, "")}, nil }, nil
	case len(f) == 3 && f[0] == "dnat" && f[1] == "to":
		return func(st state, _ int) ([]end, error) { return []end{final("dnat", st, f[2])}, nil }, nil
	case len(f) == 7 && strings.Join(f[:5], " ") == "meta mark set meta mark" && (f[5] == "|" || f[5] == "^"):
		m, err := parseMark(f[6])
		if err != nil {
			return nil, err
		}
		return func(st state, _ int) ([]end, error) {
			if f[5] == "|" {
				st.mark |= m
			} else {
				st.mark ^= m
			}
			return []end{{kind: next, st: st}}, nil
		}, nil
	case len(f) == 7 && f[0] == "meta" && f[1] == "mark" && f[2] == "&" && f[4] == "==" && f[6] == "return":
		m, err1 := parseMark(f[3])
		want, err2 := parseMark(f[5])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad mark test %q", s)
		}
		return func(st state, _ int) ([]end, error) {
			if st.mark&m == want {
				return []end{{kind: back, st: st}}, nil
			}
			return []end{{kind: next, st: st}}, nil
		}, nil
	case len(f) >= 2 && f[0] == "update" && strings.HasPrefix(f[1], "@"):
		return continues, nil
	case len(f) >= 3 && f[len(f)-2] == "vmap" && strings.HasPrefix(f[len(f)-1], "@"):
		if _, err := tr.mapKey(strings.Join(f[:len(f)-2], " ")); err != nil {
			return nil, err
		}
		return func(st state, depth int) ([]end, error) { return tr.mapLookup(f, st, depth) }, nil
	case len(f) > 6 && f[0] == "numgen" && f[1] == "random" && f[2] == "mod" && f[4] == "vmap":
		return func(st state, depth int) ([]end, error) { return tr.numgen(f, st, depth) }, nil
	}
	return nil, fmt.Errorf("the tracer does not know the statement %q", s)
}

// mapLookup handles "<key expression> vmap @map".
func (tr *tracer) mapLookup(f []string, st state, depth int) ([]end, error) {
	name := strings.TrimPrefix(f[len(f)-1], "@")
	k, err := tr.mapKey(strings.Join(f[:len(f)-2], " "))
	if err != nil {
		return nil, err
	}
	m := tr.fake.Table.Maps[name]
	if m == nil {
		return nil, fmt.Errorf("no map %s", name)
	}
	e := m.FindElement(k...)
	if e == nil {
		return []end{{kind: next, st: st}}, nil
	}
	return tr.statement(strings.Fields(strings.Join(e.Value, " ")), st, depth)
}

// mapKey is the packet's key for a map lookup's key expression, for the
// two keys the mode uses.
func (tr *tracer) mapKey(key string) ([]string, error) {
	p := tr.pkt
	switch key {
	case "ip daddr . meta l4proto . th dport":
		return []string{p.Dst.String(), p.Protocol, strconv.Itoa(int(p.DstPort))}, nil
	case "meta l4proto . th dport":
		return []string{p.Protocol, strconv.Itoa(int(p.DstPort))}, nil
	}
	return nil, fmt.Errorf("the tracer does not know the map key %q", key)
}

// numgen follows every pick of "numgen random mod N vmap { i : goto c , ... }".
func (tr *tracer) numgen(f []string, st state, depth int) ([]end, error) {
	body := strings.Join(f[5:], " ")
	body = strings.TrimSuffix(strings.TrimPrefix(body, "{"), "}")
	n, err := strconv.Atoi(f[3])
	if err != nil {
		return nil, err
	}
	picks := strings.Split(body, ",")
	if len(picks) != n {
		return nil, fmt.Errorf("numgen mod %d with %d picks", n, len(picks))
	}
	var out []end
	for _, pick := range picks {
		_, verdict, ok := strings.Cut(pick, ":")
		if !ok {
			return nil, fmt.Errorf("bad numgen pick %q", pick)
		}
		b := st
		b.random = true
		ends, err := tr.statement(strings.Fields(verdict), b, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, ends...)
	}
	return out, nil
}

// TraceHooks walks p through every base chain of the table on each of
// hooks in turn (e.g. prerouting then forward), each hook's chains in
// priority order, as the kernel passes a packet through them: what one
// chain accepts, DNATs or masquerades goes on into the next, addressed
// to the DNAT target from then on; drop and reject end the walk. The
// outcome's verdict is the last DNAT (or masquerade) on the way, else
// accept; its chains are those of every base chain it went through.
//
// A DNAT target is taken for a remote address (a pod's): the tracer
// does not know whether it is one of the node's own.
func TraceHooks(fake *knftables.Fake, p Packet, hooks ...knftables.BaseChainHook) ([]Outcome, error) {
	if fake.Table == nil {
		return nil, fmt.Errorf("no table %s", TableName)
	}
	var bases []string
	for _, h := range hooks {
		type base struct {
			name string
			prio int
		}
		var bs []base
		for name, c := range fake.Table.Chains {
			if c.Hook == nil || *c.Hook != h {
				continue
			}
			prio, err := knftables.ParsePriority(knftables.IPv4Family, string(*c.Priority))
			if err != nil {
				return nil, fmt.Errorf("chain %s: %w", name, err)
			}
			bs = append(bs, base{name, prio})
		}
		// Equal priorities run in an order nft does not promise; the
		// mode gives none of its chains on one hook the same priority.
		slices.SortFunc(bs, func(a, b base) int { return cmp.Or(cmp.Compare(a.prio, b.prio), strings.Compare(a.name, b.name)) })
		for _, b := range bs {
			bases = append(bases, b.name)
		}
	}

	type branch struct {
		pkt Packet
		o   Outcome
	}
	branches := []branch{{pkt: p, o: Outcome{Verdict: "accept", Mark: p.Mark}}}
	var done []Outcome
	for _, base := range bases {
		var next []branch
		for _, br := range branches {
			pkt := br.pkt
			pkt.Mark = br.o.Mark
			outs, err := Trace(fake, base, pkt)
			if err != nil {
				return nil, err
			}
			for _, o := range outs {
				b := br
				b.o.Chains = slices.Concat(br.o.Chains, o.Chains)
				b.o.Mark = o.Mark
				b.o.Random = br.o.Random || o.Random
				switch o.Verdict {
				case "accept":
				case "dnat":
					ap, err := netip.ParseAddrPort(o.DNAT)
					if err != nil {
						return nil, fmt.Errorf("chain %s: dnat to %q: %w", base, o.DNAT, err)
					}
					b.o.Verdict, b.o.DNAT = "dnat", o.DNAT
					b.pkt.Dst, b.pkt.DstPort, b.pkt.LocalDst = ap.Addr(), ap.Port(), false
				case "masquerade":
					b.o.Verdict = "masquerade"
				default:
					b.o.Verdict, b.o.DNAT = o.Verdict, ""
					done = append(done, b.o)
					continue
				}
				next = append(next, b)
			}
		}
		branches = next
	}
	for _, br := range branches {
		done = append(done, br.o)
	}
	var out []Outcome
	seen := map[string]bool{}
	for _, o := range done {
		if k := o.String(); !seen[k] {
			seen[k] = true
			out = append(out, o)
		}
	}
	return out, nil
}
