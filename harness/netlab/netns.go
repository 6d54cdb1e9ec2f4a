// Package netlab builds the lab's network out of named network namespaces,
// veth pairs and bridges, through netlink. Every operation names the
// namespace it acts in, so nothing here can touch the host's root namespace
// by accident: the only host-side objects the lab owns are the management
// veth ends, and those are created explicitly with HostNS.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where iproute2 and the netns library keep named namespaces.
const RunDir = "/run/netns"

// HostNS names the namespace the calling process started in.
const HostNS = ""

// shareRunDir makes /run/netns a shared mount of its own, as iproute2's
// `ip netns add` does. Without that, a later `ip netns add` bind-mounts the
// directory over itself and hides the namespace files created before it,
// which then can be neither unmounted nor removed.
func shareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return err
	}
	mounted, err := isMountPoint(RunDir)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount(RunDir, RunDir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s: %w", RunDir, err)
		}
	}
	if err := unix.Mount("", RunDir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", RunDir, err)
	}
	return nil
}

func isMountPoint(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true, nil
		}
	}
	return false, nil
}

var shareOnce = sync.OnceValue(shareRunDir)

// CreateNS creates a named network namespace with lo up.
func CreateNS(name string) error {
	if err := shareOnce(); err != nil {
		return err
	}
	err := onLockedThread(func() error {
		h, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		return h.Close()
	})
	if err != nil {
		return err
	}
	return WithHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
}

// DeleteNS removes a named namespace. Links inside it die with it, and so do
// their veth peers in other namespaces. A missing namespace is not an error.
func DeleteNS(name string) error {
	err := netns.DeleteNamed(name)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// A half-created namespace file may exist without a mount.
	if rmErr := os.Remove(filepath.Join(RunDir, name)); rmErr == nil || errors.Is(rmErr, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("delete netns %s: %w", name, err)
}

// ListNS returns the named namespaces whose names start with prefix.
func ListNS(prefix string) ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Path is the file that holds a named namespace; HostNS maps to the
// caller's own.
func Path(name string) string {
	if name == HostNS {
		return "/proc/self/ns/net"
	}
	return filepath.Join(RunDir, name)
}

func open(name string) (netns.NsHandle, error) {
	if name == HostNS {
		return netns.Get()
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		return h, fmt.Errorf("open netns %s: %w", name, err)
	}
	return h, nil
}

// WithHandle runs fn with a netlink handle bound to the namespace. The
// calling thread never changes namespace.
func WithHandle(name string, fn func(*netlink.Handle) error) error {
	ns, err := open(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // some kernels (UML) lack XFRM
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", name, err)
	}
	defer h.Close()
	return fn(h)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// opens and processes it starts belong to that namespace. fn must not start
// goroutines that expect to share the namespace.
func Do(name string, fn func() error) error {
	if name == HostNS {
		return fn()
	}
	target, err := open(name)
	if err != nil {
		return err
	}
	defer target.Close()
	return onLockedThread(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", name, err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a locked thread and puts the thread back into
// its original namespace afterwards. If that fails the thread stays locked,
// so the Go runtime discards it instead of reusing a thread that sits in a
// lab namespace.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("restore netns: %w", err)
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dialer returns a DialContext function whose connections start inside the
// named namespace; a socket keeps its namespace for life, so only the dial
// runs there. d may be nil.
func Dialer(ns string, d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(ns, func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
