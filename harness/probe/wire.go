package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
)

// WireErr is an error in JSON that keeps what the suites classify by:
// refused and timed out stay errors.Is-comparable on the other side.
type WireErr struct {
	Msg     string `json:"msg"`
	Refused bool   `json:"refused,omitempty"`
	Timeout bool   `json:"timeout,omitempty"`
}

// ToWire encodes err (nil stays nil).
func ToWire(err error) *WireErr {
	if err == nil {
		return nil
	}
	return &WireErr{Msg: err.Error(), Refused: errors.Is(err, syscall.ECONNREFUSED),
		Timeout: errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)}
}

// Err decodes w (nil stays nil).
func (w *WireErr) Err() error {
	switch {
	case w == nil:
		return nil
	case w.Refused:
		return fmt.Errorf("%s (%w)", w.Msg, syscall.ECONNREFUSED)
	case w.Timeout:
		return fmt.Errorf("%s (%w)", w.Msg, context.DeadlineExceeded)
	}
	return errors.New(w.Msg)
}

// WireResult is a Result in JSON.
type WireResult struct {
	Backend string        `json:"backend"`
	Client  string        `json:"client"`
	Err     *WireErr      `json:"err,omitempty"`
	Latency time.Duration `json:"latency"`
	Status  int           `json:"status,omitempty"`
	Body    string        `json:"body,omitempty"`
}

// EncodeResults turns results into their JSON form.
func EncodeResults(rs []Result) []WireResult {
	out := make([]WireResult, 0, len(rs))
	for _, r := range rs {
		out = append(out, WireResult{Backend: r.Backend, Client: r.Client, Err: ToWire(r.Err), Latency: r.Latency, Status: r.Status, Body: r.Body})
	}
	return out
}

// DecodeResults is EncodeResults' inverse.
func DecodeResults(ws []WireResult) []Result {
	out := make([]Result, 0, len(ws))
	for _, w := range ws {
		out = append(out, Result{Backend: w.Backend, Client: w.Client, Err: w.Err.Err(), Latency: w.Latency, Status: w.Status, Body: w.Body})
	}
	return out
}

// Role probes from the namespace the process was started in, for
// providers whose nodes are not namespaces of this kernel (a kind node
// runs `ip netns exec <pod netns>` around it). Its one argument is a
// Request; it prints the results as JSON.
const Role = "probe"

// Request is the Role's argument.
type Request struct {
	Target  Target        `json:"target"`
	N       int           `json:"n"`
	Timeout time.Duration `json:"timeout"`
}

func init() { agent.Register(Role, roleMain) }

func roleMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "probe: want one JSON argument")
		return 2
	}
	var req Request
	if err := json.Unmarshal([]byte(args[0]), &req); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 2
	}
	req.Target.NS = "" // already inside it
	s := Run(context.Background(), req.Target, req.N, req.Timeout)
	if err := json.NewEncoder(os.Stdout).Encode(EncodeResults(s.Results)); err != nil {
		return 1
	}
	return 0
}
