package userspace

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// WantOpenFiles is the open-file limit the userspace mode asks for. Each
// service port holds a socket and each proxied connection two, so the
// usual 1024 or 20000 runs out below the 30k Services the bench sweeps to;
// kube-proxy's userspace mode raised its limit to 64000 for the same reason.
const WantOpenFiles = 1 << 20

// OpenFileHeadroom is what the proxier needs beyond one socket per service
// port: its API and metrics connections and the proxied connections of a
// moderate load.
const OpenFileHeadroom = 1000

// OpenFileCeiling is the open-file limit RaiseOpenFileLimit reaches in this
// process (and in a child of it with the same credentials): WantOpenFiles
// capped by fs.nr_open with CAP_SYS_RESOURCE, else the hard limit, which
// only that capability can raise. Some container runtimes drop it even for
// root; this machine type's does.
func OpenFileCeiling() (uint64, error) {
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &cur); err != nil {
		return 0, fmt.Errorf("reading the open-file limit: %w", err)
	}
	if !hasSysResource() {
		return cur.Max, nil
	}
	want := uint64(WantOpenFiles)
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n < want {
			want = n
		}
	}
	return max(want, cur.Max), nil
}

// RaiseOpenFileLimit raises the process's RLIMIT_NOFILE to
// OpenFileCeiling and returns the limit in force.
func RaiseOpenFileLimit() (uint64, error) {
	want, err := OpenFileCeiling()
	if err != nil {
		return 0, err
	}
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &cur); err != nil {
		return 0, fmt.Errorf("reading the open-file limit: %w", err)
	}
	if cur.Cur >= want {
		return cur.Cur, nil
	}
	next := unix.Rlimit{Cur: want, Max: max(want, cur.Max)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &next); err != nil {
		return cur.Cur, fmt.Errorf("raising the open-file limit from %d to %d: %w", cur.Cur, want, err)
	}
	return want, nil
}

// capSysResource is CAP_SYS_RESOURCE's bit in /proc/self/status's CapEff.
const capSysResource = 24

func hasSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<capSysResource) != 0
		}
	}
	return false
}
