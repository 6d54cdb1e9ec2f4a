package dryrun

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// ParseGithubEnv reads what a step appended to its GITHUB_ENV file, in
// Actions' two forms: NAME=value on one line, and NAME<<DELIMITER, the
// value's lines, DELIMITER.
func ParseGithubEnv(b []byte) ([]KV, error) {
	var out []KV
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l == "" {
			continue
		}
		eq, heredoc := strings.Index(l, "="), strings.Index(l, "<<")
		switch {
		case heredoc > 0 && (eq < 0 || heredoc < eq):
			name, delim := l[:heredoc], l[heredoc+2:]
			if !envNameRE.MatchString(name) || delim == "" {
				return nil, fmt.Errorf("GITHUB_ENV line %d: %q is not NAME<<DELIMITER", i+1, l)
			}
			var val []string
			end := -1
			for j := i + 1; j < len(lines); j++ {
				if lines[j] == delim {
					end = j
					break
				}
				val = append(val, lines[j])
			}
			if end < 0 {
				return nil, fmt.Errorf("GITHUB_ENV line %d: %s's value never reaches its delimiter %q", i+1, name, delim)
			}
			out = append(out, KV{name, strings.Join(val, "\n")})
			i = end
		case eq > 0:
			name := l[:eq]
			if !envNameRE.MatchString(name) {
				return nil, fmt.Errorf("GITHUB_ENV line %d: %q is not a variable name", i+1, name)
			}
			out = append(out, KV{name, l[eq+1:]})
		default:
			return nil, fmt.Errorf("GITHUB_ENV line %d: %q is neither NAME=value nor NAME<<DELIMITER", i+1, l)
		}
	}
	return out, nil
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// githubEnvWriteRE finds `echo "NAME=...` or `NAME<<` written to
// GITHUB_ENV on one line of a run: script, so that a plan can say which
// env.NAME a later step will see without running anything.
var githubEnvWriteRE = regexp.MustCompile(`(?:echo|printf)\s+(?:-[a-zA-Z]+\s+)*["']?([A-Za-z_][A-Za-z0-9_]*)(?:=|<<).*>>\s*"?\$\{?GITHUB_ENV\b`)

// GithubEnvWrites lists the variables a run: script visibly appends to
// GITHUB_ENV.
func GithubEnvWrites(run string) []string {
	var out []string
	for _, l := range strings.Split(run, "\n") {
		if m := githubEnvWriteRE.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// Runner variables the dry run sets for every step (besides GITHUB_ENV,
// RUNNER_TEMP and GITHUB_WORKSPACE, which are per leg and step).
var runnerEnv = []KV{{"CI", "true"}, {"GITHUB_ACTIONS", "true"}, {"RUNNER_OS", "Linux"}}

// HostEnv is the environment a step starts from: this machine's, less
// what a fresh runner would not have. make passes its command-line
// variables down in MAKEFLAGS (`make nightly-dry-run ONLY=…` would reach
// the jobs' own make), and the Makefile reads its ?= variables, the
// suites their PROXYMODES_* and the labs LAB_* from the environment: left
// in, a setting of the shell that started the dry run would change what
// the jobs run. dropped lists the names it left out.
func HostEnv(environ []string, makefileVars []string) (env []string, dropped []string) {
	// make also exports its command-line variables (ONLY=, PLAN=) to the
	// recipe's environment; MAKEFLAGS names them after "--".
	var cmdline []string
	for _, e := range environ {
		if v, ok := strings.CutPrefix(e, "MAKEFLAGS="); ok {
			if _, vars, ok := strings.Cut(" "+v, " -- "); ok {
				for _, m := range makeCmdlineVarRE.FindAllStringSubmatch("  "+vars, -1) {
					cmdline = append(cmdline, m[1])
				}
			}
		}
	}
	for _, e := range environ {
		name, _, _ := strings.Cut(e, "=")
		if dropHostVar(name) || slices.Contains(makefileVars, name) || slices.Contains(cmdline, name) {
			dropped = append(dropped, name)
			continue
		}
		env = append(env, e)
	}
	slices.Sort(dropped)
	return env, dropped
}

// makeCmdlineVarRE finds NAME= at the start of each of MAKEFLAGS's
// variable words (a space inside a value is escaped with a backslash).
var makeCmdlineVarRE = regexp.MustCompile(`[^\\] ([A-Za-z_][A-Za-z0-9_]*)=`)

func dropHostVar(name string) bool {
	for _, p := range []string{"PROXYMODES_", "GITHUB_", "RUNNER_", "ACTIONS_", "LAB_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return slices.Contains([]string{"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "MAKE_TERMOUT", "MAKE_TERMERR", "CI"}, name)
}

// MakefileVars lists the variables a Makefile assigns, of any flavour:
// besides its ?= ones, those it sets only when empty (ifeq ($(SOAK_DIR),))
// take the environment's value too. SHELL is left out: make never takes
// it from the environment.
func MakefileVars(makefile []byte) []string {
	var out []string
	for _, m := range makefileAssignRE.FindAllSubmatch(makefile, -1) {
		if n := string(m[2]); n != "SHELL" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

var makefileAssignRE = regexp.MustCompile(`(?m)^(export\s+|override\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|::=|\+=|=)`)

// CheckEnvWins checks that the environment decides a Makefile variable:
// it is assigned with ?= and nowhere unconditionally (which would
// override the environment), so a shortening passed as environment
// reaches the job's make.
func CheckEnvWins(makefile []byte, name string) error {
	conditional := false
	for _, m := range makefileAssignRE.FindAllSubmatch(makefile, -1) {
		if string(m[2]) != name {
			continue
		}
		if string(m[3]) != "?=" || len(m[1]) > 0 && strings.TrimSpace(string(m[1])) == "override" {
			return fmt.Errorf("the Makefile assigns %s with %s%s: the environment would not win", name, m[1], m[3])
		}
		conditional = true
	}
	if !conditional {
		return fmt.Errorf("the Makefile has no %s ?= …: the job's make would not read it", name)
	}
	return nil
}

func environMap(env []string) map[string]string {
	m := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	return m
}

// setEnv returns env with the entries of kv set (replacing earlier ones).
func setEnv(env []string, kv ...KV) []string {
	out := slices.Clone(env)
	for _, p := range kv {
		out = slices.DeleteFunc(out, func(e string) bool { return strings.HasPrefix(e, p.Key+"=") })
		out = append(out, p.Key+"="+p.Value)
	}
	return out
}

func getenv(env []string, k string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], k+"="); ok {
			return v
		}
	}
	return ""
}
