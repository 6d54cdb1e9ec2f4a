// Package netnstest runs test code inside a scratch network namespace, so
// tests can drive real iptables without ever touching the host's rules.
package netnstest

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Execer is the command runner the proxier packages inject (the same
// method set as iptables.Exec).
type Execer interface {
	Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error)
	LookPath(name string) (string, error)
}

// Guarded wraps an Execer and refuses to run anything from a thread that
// is in the host network namespace.
type Guarded struct {
	Inner Execer
	host  netns.NsHandle
}

// Run implements Execer.
func (g *Guarded) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	cur, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer cur.Close()
	if cur.Equal(g.host) {
		return nil, fmt.Errorf("netnstest: refusing to run %s in the host network namespace", name)
	}
	return g.Inner.Run(ctx, name, args, stdin)
}

// LookPath implements Execer.
func (g *Guarded) LookPath(name string) (string, error) { return g.Inner.LookPath(name) }

// Run runs fn on a goroutine locked to an OS thread that has been moved
// into a brand-new network namespace; commands fn starts are forked from
// that thread and so live in that namespace. fn must not start goroutines
// that run commands, and must report failures with t.Error (it is not on
// the test goroutine). Skips when not root.
func Run(t testing.TB, inner Execer, fn func(ex *Guarded)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a scratch network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: if anything below fails half-way, the thread
		// exits with this goroutine instead of going back to the pool
		// inside the wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Errorf("reading current netns: %v", err)
			return
		}
		defer orig.Close()
		scratch, err := netns.New()
		if err != nil {
			t.Errorf("creating scratch netns: %v", err)
			return
		}
		defer scratch.Close()
		defer func() {
			if err := netns.Set(orig); err != nil {
				t.Errorf("restoring netns: %v", err)
			}
		}()
		if scratch.Equal(orig) {
			t.Errorf("netns.New returned the original namespace; refusing to go on")
			return
		}
		fn(&Guarded{Inner: inner, host: orig})
	}()
	<-done
}
