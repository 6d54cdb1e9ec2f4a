package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strings"
)

const (
	tableFilter = "filter"
	tableNAT    = "nat"
)

// builtinChains are the chains each modelled table starts with.
var builtinChains = map[string][]string{
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// Table is one iptables table as iptables-save shows it.
type Table struct {
	Name   string
	Chains map[string]*Chain
	// Order is the order chains were created in (builtins first).
	Order []string
}

// Chain is one chain of a table.
type Chain struct {
	Name    string
	Builtin bool
	Policy  string // builtins only
	Rules   []Rule
}

// Rule is one rule: its arguments after "-A CHAIN", unquoted.
type Rule struct {
	Args []string
}

// String renders the rule arguments the way iptables-save does, quoting
// arguments that contain spaces.
func (r Rule) String() string { return joinArgs(r.Args) }

// Target returns the -j argument, or "".
func (r Rule) Target() string {
	for i := 0; i+1 < len(r.Args); i++ {
		if r.Args[i] == "-j" || r.Args[i] == "--jump" || r.Args[i] == "-g" || r.Args[i] == "--goto" {
			return r.Args[i+1]
		}
	}
	return ""
}

// Comment returns the --comment argument, or "".
func (r Rule) Comment() string {
	for i := 0; i+1 < len(r.Args); i++ {
		if r.Args[i] == "--comment" {
			return r.Args[i+1]
		}
	}
	return ""
}

func newTable(name string) *Table {
	t := &Table{Name: name, Chains: map[string]*Chain{}}
	for _, c := range builtinChains[name] {
		t.Chains[c] = &Chain{Name: c, Builtin: true, Policy: "ACCEPT"}
		t.Order = append(t.Order, c)
	}
	return t
}

func (t *Table) clone() *Table {
	n := &Table{Name: t.Name, Chains: make(map[string]*Chain, len(t.Chains)), Order: append([]string(nil), t.Order...)}
	for name, c := range t.Chains {
		cc := *c
		cc.Rules = append([]Rule(nil), c.Rules...)
		n.Chains[name] = &cc
	}
	return n
}

// SortedChains returns chain names: builtins in their usual order, then
// user chains sorted, as iptables-save prints them.
func (t *Table) SortedChains() []string {
	var builtin, user []string
	for _, name := range t.Order {
		if c, ok := t.Chains[name]; ok {
			if c.Builtin {
				builtin = append(builtin, name)
			} else {
				user = append(user, name)
			}
		}
	}
	sort.Strings(user)
	return append(builtin, user...)
}

// writeSave renders the table in iptables-save format.
func (t *Table) writeSave(buf *bytes.Buffer) {
	fmt.Fprintf(buf, "*%s\n", t.Name)
	names := t.SortedChains()
	for _, name := range names {
		c := t.Chains[name]
		policy := "-"
		if c.Builtin {
			policy = c.Policy
		}
		fmt.Fprintf(buf, ":%s %s [0:0]\n", name, policy)
	}
	for _, name := range names {
		for _, r := range t.Chains[name].Rules {
			fmt.Fprintf(buf, "-A %s %s\n", name, r.String())
		}
	}
	buf.WriteString("COMMIT\n")
}

// ParseSave parses iptables-save output into tables. Rules keep their
// arguments as printed, so they can be fed back as "-D CHAIN <args>".
func ParseSave(data []byte) (map[string]*Table, error) {
	tables := map[string]*Table{}
	var cur *Table
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = &Table{Name: line[1:], Chains: map[string]*Chain{}}
			tables[cur.Name] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("line %d: %q outside a table", lineNo, line)
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return nil, fmt.Errorf("line %d: bad chain line %q", lineNo, line)
			}
			c := &Chain{Name: f[0], Builtin: f[1] != "-", Policy: f[1]}
			cur.Chains[c.Name] = c
			cur.Order = append(cur.Order, c.Name)
		case strings.HasPrefix(line, "-A "):
			args, err := splitArgs(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %v", lineNo, err)
			}
			if len(args) < 2 {
				return nil, fmt.Errorf("line %d: bad rule %q", lineNo, line)
			}
			c := cur.Chains[args[1]]
			if c == nil {
				return nil, fmt.Errorf("line %d: rule for undeclared chain %q", lineNo, args[1])
			}
			c.Rules = append(c.Rules, Rule{Args: args[2:]})
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", lineNo, line)
		}
	}
	return tables, sc.Err()
}

// splitArgs splits a rule line into arguments, honouring double quotes
// and backslash escapes as iptables-restore does.
func splitArgs(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, inQuote := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && i+1 < len(line) && inQuote:
			i++
			cur.WriteByte(line[i])
			inArg = true
		case ch == '"':
			inQuote = !inQuote
			inArg = true
		case (ch == ' ' || ch == '\t') && !inQuote:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(ch)
			inArg = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

func joinArgs(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a == "" || strings.ContainsAny(a, " \t\"") {
			b.WriteByte('"')
			b.WriteString(strings.ReplaceAll(a, `"`, `\"`))
			b.WriteByte('"')
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}
