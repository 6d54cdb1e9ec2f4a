package iptables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Exec runs external commands. The real one wraps os/exec; tests inject
// their own to check command lines without touching the host.
type Exec interface {
	// Run runs name with args, feeding stdin, and returns stdout. A non-zero
	// exit is an error that includes stderr.
	Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error)
	// LookPath reports whether a command exists, like exec.LookPath.
	LookPath(name string) (string, error)
}

// OSExec runs commands with os/exec. The zero value is ready to use.
type OSExec struct{}

// Run implements Exec.
func (OSExec) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &ExecError{Command: name + " " + strings.Join(args, " "), Err: err, Stderr: strings.TrimSpace(stderr.String())}
	}
	return stdout.Bytes(), nil
}

// LookPath implements Exec.
func (OSExec) LookPath(name string) (string, error) { return exec.LookPath(name) }

// ExecError is a failed command with its stderr.
type ExecError struct {
	Command string
	Err     error
	Stderr  string
}

func (e *ExecError) Error() string {
	if e.Stderr == "" {
		return fmt.Sprintf("%s: %v", e.Command, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.Command, e.Err, e.Stderr)
}

func (e *ExecError) Unwrap() error { return e.Err }

// commandTimeout bounds every iptables command by default: a hung
// iptables (lock held by someone else) must fail the sync, which is then
// retried. It is generous because iptables-nft-restore takes minutes for
// ~10k Services (measured; see README).
const commandTimeout = 10 * time.Minute
