package preflight

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// notCommands are literals the scan below takes for commands but are not:
// each with why.
var notCommands = map[string]string{
	"build": "a docker CLI subcommand (harness/docker's Run adds the CLI)",
	"save":  "a docker CLI subcommand",
	"addr":  "an ip subcommand in a table of ip argument lists",
	"link":  "an ip subcommand",
	"route": "an ip subcommand",
	// proxier/cmd/proxier's flag tests list argument lists too.
	"stray-argument": "an argument the proxier's flag test expects it to refuse",
}

var commandLike = regexp.MustCompile(`^[a-z][a-z0-9._+-]*$`)

// TestEveryCommandIsDeclared scans the module's sources, tests included
// (make test runs them on a fresh machine too), for commands: the literal
// name given to exec.Command(Context), the first literal argument of an
// Exec or Run call (the labs' and proxier's exec helpers take argv after a
// namespace or node), and the first word of every [][]string table of
// argument lists. Each must be declared with its package in Required,
// KindRequired or Base. Names held in variables are not seen: declare
// them by hand (the iptables savers and restorers are).
func TestEveryCommandIsDeclared(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	found := scanCommands(t, root)
	if len(found) < 10 {
		t.Fatalf("the scan found only %d commands (%v): it no longer sees the exec calls, so it proves nothing", len(found), found)
	}
	declared := map[string]bool{}
	for _, m := range []map[string]string{Required, KindRequired, Base} {
		for c := range m {
			declared[filepath.Base(c)] = true
		}
	}
	var missing []string
	for c, where := range found {
		if !declared[c] && notCommands[c] == "" {
			missing = append(missing, c+" (run at "+where+")")
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("commands run but not declared with their Debian package in harness/preflight (Required, KindRequired or Base), so preflight would not install them on a fresh machine:\n  %s",
			strings.Join(missing, "\n  "))
	}
	// The scan must see the command that once failed a fresh machine.
	if _, ok := found["conntrack"]; !ok {
		t.Error("the scan does not see conntrack, which the suites run: it has gone blind")
	}
}

// scanCommands returns each command found with the first place it is run.
func scanCommands(t *testing.T, root string) map[string]string {
	found := map[string]string{}
	fset := token.NewFileSet()
	note := func(e ast.Expr, s string) {
		if !commandLike.MatchString(s) {
			return
		}
		if _, ok := found[s]; !ok {
			p := fset.Position(e.Pos())
			rel, _ := filepath.Rel(root, p.Filename)
			found[s] = rel + ":" + strconv.Itoa(p.Line)
		}
	}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// clusters/k8s is the separate module that builds Kubernetes.
			if d.Name() == ".git" || d.Name() == "testdata" || p == filepath.Join(root, "clusters", "k8s") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch x := n.(type) {
			case *ast.CallExpr:
				scanCall(x, note)
			case *ast.CompositeLit:
				if isTableOfArgv(x) {
					for _, e := range x.Elts {
						if s, ok := firstOf(e); ok {
							note(e, s)
						}
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func scanCall(x *ast.CallExpr, note func(ast.Expr, string)) {
	var name string
	switch fn := x.Fun.(type) {
	case *ast.SelectorExpr:
		name = fn.Sel.Name
		if pkg, ok := fn.X.(*ast.Ident); ok && pkg.Name == "exec" && (name == "Command" || name == "CommandContext") {
			i := 0
			if name == "CommandContext" {
				i = 1
			}
			if len(x.Args) > i {
				if s, ok := stringLit(x.Args[i]); ok {
					note(x, s)
				}
			}
			return
		}
		// A subtest's name is not a command.
		if recv, ok := fn.X.(*ast.Ident); ok && (recv.Name == "t" || recv.Name == "b") {
			return
		}
	case *ast.Ident:
		name = fn.Name
	}
	if name != "Exec" && name != "Run" && name != "execEnv" {
		return
	}
	for _, a := range x.Args {
		if s, ok := stringLit(a); ok {
			note(a, s)
			return
		}
		if s, ok := firstOf(a); ok {
			note(a, s)
			return
		}
	}
}

// isTableOfArgv: a [][]string literal.
func isTableOfArgv(x *ast.CompositeLit) bool {
	outer, ok := x.Type.(*ast.ArrayType)
	if !ok {
		return false
	}
	inner, ok := outer.Elt.(*ast.ArrayType)
	if !ok {
		return false
	}
	id, ok := inner.Elt.(*ast.Ident)
	return ok && id.Name == "string"
}

// firstOf is the first element of a slice literal, or of the slice that
// append extends, when it is a string literal.
func firstOf(e ast.Expr) (string, bool) {
	switch x := e.(type) {
	case *ast.CompositeLit:
		if len(x.Elts) > 0 {
			return stringLit(x.Elts[0])
		}
	case *ast.CallExpr:
		if id, ok := x.Fun.(*ast.Ident); ok && id.Name == "append" && len(x.Args) > 0 {
			return firstOf(x.Args[0])
		}
	}
	return "", false
}

func stringLit(e ast.Expr) (string, bool) {
	b, ok := e.(*ast.BasicLit)
	if !ok || b.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(b.Value)
	return s, err == nil
}

// With an engine of its own (Docker CE on an Ubuntu runner, say) the
// machine gets none of Debian's engine packages, which would conflict;
// without one it gets them all, and the rest of the kind tools either way.
func TestKindToolsLeaveAnExistingEngineAlone(t *testing.T) {
	with, without := kindTools(true), kindTools(false)
	if len(without) != len(KindRequired) {
		t.Errorf("without an engine: %d tools, want all %d", len(without), len(KindRequired))
	}
	for _, e := range engineTools {
		if _, ok := with[e]; ok {
			t.Errorf("with an engine, preflight still asks for %s (%s)", e, KindRequired[e])
		}
		if _, ok := KindRequired[e]; !ok {
			t.Errorf("engine tool %s is not in KindRequired", e)
		}
	}
	if len(with) != len(KindRequired)-len(engineTools) || with["/usr/sbin/debootstrap"] == "" {
		t.Errorf("with an engine: %v", with)
	}
}
