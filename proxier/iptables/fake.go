package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// standardTargets are the -j targets that are not chains, with the tables
// they are valid in ("" = any).
var standardTargets = map[string]string{
	"ACCEPT": "", "DROP": "", "RETURN": "", "MARK": "", "LOG": "",
	"REJECT":     tableFilter,
	"DNAT":       tableNAT,
	"SNAT":       tableNAT,
	"MASQUERADE": tableNAT,
}

// Fake is an in-memory iptables that models the filter and nat tables the
// way iptables-restore --noflush changes them. It implements Interface, and
// Trace walks packets through its rules.
//
// A batch is applied all-or-nothing: on any error nothing changes, and the
// error names the failing line, like iptables-restore does.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*Table

	// FailRestore, when set, makes every Restore fail with this error
	// without changing state (to test the retry path).
	FailRestore error
	// Restores records every batch passed to Restore, failed or not.
	Restores [][]byte
	// Saves counts Save calls.
	Saves int
}

// NewFake returns a Fake with empty filter and nat tables.
func NewFake() *Fake {
	return &Fake{tables: map[string]*Table{
		tableFilter: newTable(tableFilter),
		tableNAT:    newTable(tableNAT),
	}}
}

// Save implements Interface: the filter and nat tables in iptables-save
// format (with zeroed counters).
func (f *Fake) Save() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Saves++
	var buf bytes.Buffer
	f.tables[tableFilter].writeSave(&buf)
	f.tables[tableNAT].writeSave(&buf)
	return buf.Bytes(), nil
}

// Dump returns Save's text.
func (f *Fake) Dump() string {
	b, _ := f.Save()
	return string(b)
}

// Table returns a copy of one table, or nil.
func (f *Fake) Table(name string) *Table {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t, ok := f.tables[name]; ok {
		return t.clone()
	}
	return nil
}

// Restore implements Interface with --noflush semantics.
func (f *Fake) Restore(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Restores = append(f.Restores, append([]byte(nil), data...))
	if f.FailRestore != nil {
		return f.FailRestore
	}
	committed := map[string]*Table{}
	var cur *Table
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 64*1024*1024)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		fail := func(format string, a ...any) error {
			return fmt.Errorf("iptables-restore (fake): line %d failed: %s: %q", lineNo, fmt.Sprintf(format, a...), line)
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			if cur != nil {
				return fail("table %s not committed", cur.Name)
			}
			name := line[1:]
			base, ok := committed[name]
			if !ok {
				base, ok = f.tables[name]
			}
			if !ok {
				return fail("table %q is not modelled", name)
			}
			cur = base.clone()
			continue
		case cur == nil:
			return fail("not inside a table")
		case line == "COMMIT":
			committed[cur.Name] = cur
			cur = nil
			continue
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) < 2 {
				return fail("bad chain line")
			}
			name, policy := fields[0], fields[1]
			if err := checkChainName(name); err != nil {
				return fail("%v", err)
			}
			if c, ok := cur.Chains[name]; ok {
				if c.Builtin {
					if policy != "-" {
						c.Policy = policy
					}
				} else {
					c.Rules = nil // a chain line flushes an existing chain
				}
			} else {
				if policy != "-" {
					return fail("policy %s on user chain %s", policy, name)
				}
				cur.Chains[name] = &Chain{Name: name}
				cur.Order = append(cur.Order, name)
			}
			continue
		}
		args, err := splitArgs(line)
		if err != nil {
			return fail("%v", err)
		}
		if err := applyCommand(cur, args); err != nil {
			return fail("%v", err)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if cur != nil {
		return fmt.Errorf("iptables-restore (fake): table %s: missing COMMIT", cur.Name)
	}
	for name, t := range committed {
		f.tables[name] = t
	}
	return nil
}

func checkChainName(name string) error {
	// The kernel's limit is 29 bytes including the terminating NUL.
	if len(name) > 28 {
		return fmt.Errorf("chain name %q longer than 28 characters", name)
	}
	if name == "" || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!") {
		return fmt.Errorf("bad chain name %q", name)
	}
	return nil
}

// applyCommand runs one -A/-I/-D/-F/-X/-N command on a working table.
func applyCommand(t *Table, args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("missing chain")
	}
	cmd, chainName, rest := args[0], args[1], args[2:]
	c := t.Chains[chainName]
	if c == nil && cmd != "-N" {
		return fmt.Errorf("chain %s does not exist", chainName)
	}
	switch cmd {
	case "-A", "--append":
		if err := checkRule(t, rest); err != nil {
			return err
		}
		c.Rules = append(c.Rules, Rule{Args: rest})
	case "-I", "--insert":
		pos := 1
		if len(rest) > 0 {
			if n, err := strconv.Atoi(rest[0]); err == nil {
				pos, rest = n, rest[1:]
			}
		}
		if pos < 1 || pos > len(c.Rules)+1 {
			return fmt.Errorf("index %d out of range", pos)
		}
		if err := checkRule(t, rest); err != nil {
			return err
		}
		c.Rules = append(c.Rules[:pos-1], append([]Rule{{Args: rest}}, c.Rules[pos-1:]...)...)
	case "-D", "--delete":
		if len(rest) == 1 {
			if n, err := strconv.Atoi(rest[0]); err == nil {
				if n < 1 || n > len(c.Rules) {
					return fmt.Errorf("index %d out of range", n)
				}
				c.Rules = append(c.Rules[:n-1], c.Rules[n:]...)
				return nil
			}
		}
		want := joinArgs(rest)
		for i, r := range c.Rules {
			if r.String() == want {
				c.Rules = append(c.Rules[:i], c.Rules[i+1:]...)
				return nil
			}
		}
		return fmt.Errorf("bad rule (does a matching rule exist in that chain?)")
	case "-F", "--flush":
		c.Rules = nil
	case "-N", "--new-chain":
		if c != nil {
			return fmt.Errorf("chain %s already exists", chainName)
		}
		if err := checkChainName(chainName); err != nil {
			return err
		}
		t.Chains[chainName] = &Chain{Name: chainName}
		t.Order = append(t.Order, chainName)
	case "-X", "--delete-chain":
		if c.Builtin {
			return fmt.Errorf("cannot delete built-in chain %s", chainName)
		}
		if len(c.Rules) > 0 {
			return fmt.Errorf("chain %s is not empty", chainName)
		}
		for _, other := range t.Chains {
			for _, r := range other.Rules {
				if r.Target() == chainName {
					return fmt.Errorf("chain %s is still referenced from %s", chainName, other.Name)
				}
			}
		}
		delete(t.Chains, chainName)
		for i, n := range t.Order {
			if n == chainName {
				t.Order = append(t.Order[:i], t.Order[i+1:]...)
				break
			}
		}
	default:
		return fmt.Errorf("unsupported command %s", cmd)
	}
	return nil
}

// checkRule validates a rule's target and parses its matches, so the fake
// rejects what the tracer could not understand.
func checkRule(t *Table, args []string) error {
	r := Rule{Args: args}
	target := r.Target()
	if target == "" {
		return fmt.Errorf("rule has no target")
	}
	if table, ok := standardTargets[target]; ok {
		if table != "" && table != t.Name {
			return fmt.Errorf("target %s is not valid in table %s", target, t.Name)
		}
	} else if c, ok := t.Chains[target]; !ok {
		return fmt.Errorf("target %s: no such chain", target)
	} else if c.Builtin {
		return fmt.Errorf("cannot jump to built-in chain %s", target)
	}
	_, err := parseRule(args)
	return err
}
