// Package agent lets one binary play helper roles (a pod's backend server,
// for instance) by re-executing itself. The lab starts helpers from
// whatever binary is running, a test binary or the CLI, so users never have
// to build or install a second program. Every main that starts a lab must
// call Init first.
package agent

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
)

const (
	roleEnv = "PROXYMODES_ROLE"
	// LabEnv marks every process a lab starts with the lab's name, so a
	// later run can find and stop them even after this one was killed.
	LabEnv = "PROXYMODES_LAB"
)

var roles = map[string]func(args []string) int{}

// Register adds a role; call it from an init function.
func Register(name string, main func(args []string) int) {
	if _, dup := roles[name]; dup {
		panic("agent: role registered twice: " + name)
	}
	roles[name] = main
}

// Init runs the role this process was started for and exits; in a normal
// start it returns at once.
func Init() {
	role := os.Getenv(roleEnv)
	if role == "" {
		return
	}
	main, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "proxymodes agent: unknown role %q (known: %s); this binary does not link the package that registers it\n", role, strings.Join(Roles(), ", "))
		os.Exit(2)
	}
	os.Exit(main(os.Args[1:]))
}

// Env is the environment that makes this binary play role, tagged with
// the lab's name.
func Env(lab, role string) []string {
	env := []string{roleEnv + "=" + role}
	if lab != "" {
		env = append(env, LabEnv+"="+lab)
	}
	return env
}

// Roles lists the registered roles.
func Roles() []string {
	var out []string
	for r := range roles {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// Command prepares this binary to run a role, tagged with the lab's name
// (lab "" leaves it untagged).
func Command(lab, role string, args ...string) (*exec.Cmd, error) {
	if _, ok := roles[role]; !ok {
		return nil, fmt.Errorf("agent: role %q is not linked into this binary", role)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), Env(lab, role)...)
	return cmd, nil
}
