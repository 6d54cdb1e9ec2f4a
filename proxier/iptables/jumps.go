package iptables

import "strings"

// Jump is a rule a mode keeps at the top of a built-in chain to hand
// packets to one of its own chains. Every mode checks its jumps on full
// syncs and rewrites them when they are missing, duplicated or reordered.
type Jump struct {
	Table, From, To, Comment string
	// Extra are matches that come before the comment.
	Extra []string
}

// Args renders the rule after "-A <chain>".
func (j Jump) Args() []string {
	args := append([]string(nil), j.Extra...)
	return append(args, "-m", "comment", "--comment", j.Comment, "-j", j.To)
}

// OwnedJumps returns the rules of a built-in chain whose target is one of
// ours (own(target)); own nil means any chain named PM-*.
func OwnedJumps(tables map[string]*Table, table, chain string, own func(target string) bool) []Rule {
	t := tables[table]
	if t == nil || t.Chains[chain] == nil {
		return nil
	}
	if own == nil {
		own = func(target string) bool { return strings.HasPrefix(target, ChainPrefix) }
	}
	var out []Rule
	for _, r := range t.Chains[chain].Rules {
		if own(r.Target()) {
			out = append(out, r)
		}
	}
	return out
}

// JumpsMatch reports whether the jump rules present are exactly the ones
// wanted, in order (compared by target and comment, which iptables-save
// prints back unchanged).
func JumpsMatch(have []Rule, want []Jump) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		if have[i].Target() != want[i].To || have[i].Comment() != want[i].Comment {
			return false
		}
	}
	return true
}
