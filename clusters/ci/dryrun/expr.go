package dryrun

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Context is what `${{ }}` expressions see.
type Context struct {
	// Matrix is the leg's matrix values; nil for a job without one.
	Matrix map[string]string
	// RunnerTemp is runner.temp: the leg's RUNNER_TEMP, or the
	// placeholder "$RUNNER_TEMP" in a plan.
	RunnerTemp string
	// Workspace is github.workspace, the checkout hashFiles reads.
	Workspace string
	// Env is the env context: the workflow's, the job's and the step's
	// env: and what earlier steps appended to GITHUB_ENV.
	Env map[string]string
	// Pending names env variables that an earlier step writes to
	// GITHUB_ENV, whose values only a run knows; a plan shows them as
	// placeholders.
	Pending map[string]string
	// Github answers github.<field>.
	Github func(field string) (string, error)
}

var (
	exprRE      = regexp.MustCompile(`\$\{\{(.*?)\}\}`)
	contextRE   = regexp.MustCompile(`^(matrix|runner|env|github)\.([A-Za-z_][A-Za-z0-9_-]*)$`)
	hashFilesRE = regexp.MustCompile(`^hashFiles\((.*)\)$`)
	quotedRE    = regexp.MustCompile(`^'((?:[^']|'')*)'$`)
)

// Expand replaces every `${{ expr }}` in s. It knows matrix.*, runner.temp,
// runner.os, env.*, the github.* fields in githubFields and hashFiles();
// any other expression is an error naming it, so a new one in the
// workflow fails the dry run instead of running with a guess.
func (c *Context) Expand(s string) (string, error) {
	if strings.Count(s, "${{") != len(exprRE.FindAllStringIndex(s, -1)) {
		return "", fmt.Errorf("unclosed ${{ in %q", s)
	}
	var firstErr error
	out := exprRE.ReplaceAllStringFunc(s, func(m string) string {
		v, err := c.eval(strings.TrimSpace(m[3 : len(m)-2]))
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", m, err)
		}
		return v
	})
	return out, firstErr
}

// githubFields are the github context's fields the dry run can answer.
var githubFields = []string{"workspace", "job", "event_name", "ref", "sha"}

func (c *Context) eval(e string) (string, error) {
	if m := contextRE.FindStringSubmatch(e); m != nil {
		switch ctx, key := m[1], m[2]; ctx {
		case "matrix":
			if c.Matrix == nil {
				return "", fmt.Errorf("matrix.%s in a job without a matrix", key)
			}
			v, ok := c.Matrix[key]
			if !ok {
				return "", fmt.Errorf("the matrix has no %s", key)
			}
			return v, nil
		case "runner":
			switch key {
			case "temp":
				return c.RunnerTemp, nil
			case "os":
				return "Linux", nil
			}
			return "", fmt.Errorf("runner.%s is not known to the dry run (it knows runner.temp and runner.os)", key)
		case "env":
			if v, ok := c.Env[key]; ok {
				return v, nil
			}
			if p, ok := c.Pending[key]; ok {
				return p, nil
			}
			return "", fmt.Errorf("env.%s is set by no env: and no earlier step's GITHUB_ENV", key)
		case "github":
			if !slices.Contains(githubFields, key) || c.Github == nil {
				return "", fmt.Errorf("github.%s is not known to the dry run (it knows github.%s)", key, strings.Join(githubFields, ", github."))
			}
			return c.Github(key)
		}
	}
	if m := hashFilesRE.FindStringSubmatch(e); m != nil {
		var pats []string
		for _, a := range strings.Split(m[1], ",") {
			q := quotedRE.FindStringSubmatch(strings.TrimSpace(a))
			if q == nil {
				return "", fmt.Errorf("hashFiles takes quoted patterns, not %s", strings.TrimSpace(a))
			}
			pats = append(pats, strings.ReplaceAll(q[1], "''", "'"))
		}
		return HashFiles(c.Workspace, pats)
	}
	return "", fmt.Errorf("unknown expression: the dry run knows matrix.*, runner.temp, runner.os, env.*, github.{%s} and hashFiles()", strings.Join(githubFields, ","))
}

// HashFiles is Actions' hashFiles(): a SHA-256 over the SHA-256 of each
// file the patterns match under the workspace. The dry run only shows the
// key (its cache is always this machine's), so the file order is the
// sorted paths'. A key over no file never changes, so the cache would go
// stale silently: that is an error here, where Actions returns "".
func HashFiles(workspace string, patterns []string) (string, error) {
	var files []string
	for _, p := range patterns {
		m, err := Glob(workspace, p, true)
		if err != nil {
			return "", err
		}
		if len(m) == 0 {
			return "", fmt.Errorf("hashFiles: %q matches no file in %s", p, workspace)
		}
		files = append(files, m...)
	}
	slices.Sort(files)
	files = slices.Compact(files)
	all := sha256.New()
	for _, f := range files {
		h := sha256.New()
		r, err := os.Open(f)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			return "", err
		}
		all.Write(h.Sum(nil))
	}
	return hex.EncodeToString(all.Sum(nil)), nil
}

// Glob matches a pattern relative to base (or absolute) with *, ?, [...]
// within a path element and ** across elements, as Actions' globs do.
// filesOnly leaves directories out (hashFiles); upload-artifact takes both.
func Glob(base, pattern string, filesOnly bool) ([]string, error) {
	if strings.HasPrefix(pattern, "!") {
		return nil, fmt.Errorf("pattern %q: exclusions are not emulated", pattern)
	}
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(base, pattern)
	}
	pattern = filepath.Clean(pattern)
	var out []string
	keep := func(p string, isDir bool) {
		if !(filesOnly && isDir) {
			out = append(out, p)
		}
	}
	if !strings.Contains(pattern, "**") {
		m, err := filepath.Glob(pattern)
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", pattern, err)
		}
		for _, p := range m {
			fi, err := os.Stat(p)
			if err != nil {
				continue
			}
			keep(p, fi.IsDir())
		}
		return out, nil
	}
	// Walk from the longest prefix without a wildcard.
	parts := strings.Split(pattern, "/")
	i := 0
	for i < len(parts) && !strings.ContainsAny(parts[i], "*?[") {
		i++
	}
	root := "/" + path.Join(parts[:i]...)
	rest := parts[i:]
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && os.IsNotExist(err) {
				return filepath.SkipDir
			}
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if matchSegments(rest, strings.Split(rel, "/")) {
			keep(p, d.IsDir())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// matchSegments matches path elements against pattern elements, "**"
// standing for any number of elements.
func matchSegments(pat, name []string) bool {
	if len(pat) == 0 {
		return len(name) == 0
	}
	if pat[0] == "**" {
		for i := 0; i <= len(name); i++ {
			if matchSegments(pat[1:], name[i:]) {
				return true
			}
		}
		return false
	}
	if len(name) == 0 {
		return false
	}
	ok, err := path.Match(pat[0], name[0])
	return err == nil && ok && matchSegments(pat[1:], name[1:])
}

// Condition is a step's if:.
type Condition int

const (
	IfSuccess Condition = iota
	IfAlways
	IfFailure
)

// ParseIf knows the status functions a step's if: uses; any other
// condition is an error naming it.
func ParseIf(s string) (Condition, error) {
	e := strings.TrimSpace(s)
	if strings.HasPrefix(e, "${{") && strings.HasSuffix(e, "}}") {
		e = strings.TrimSpace(e[3 : len(e)-2])
	}
	switch e {
	case "", "success()":
		return IfSuccess, nil
	case "always()":
		return IfAlways, nil
	case "failure()":
		return IfFailure, nil
	}
	return 0, fmt.Errorf("if: %q is not known to the dry run (it knows success(), always() and failure())", s)
}

// Runs says whether a step with this condition runs after the earlier
// steps, given whether one of them failed.
func (c Condition) Runs(failed bool) bool {
	switch c {
	case IfAlways:
		return true
	case IfFailure:
		return failed
	}
	return !failed
}

func (c Condition) String() string {
	return [...]string{"success()", "always()", "failure()"}[c]
}
