package docker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/proc"
)

// LockPath is held (flock) by the run whose daemon is up; it sits outside
// StateDir, which cleanup removes.
const LockPath = "/run/proxymodes-docker.lock"

func acquire(ctx context.Context, log Logger) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(LockPath), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	waited := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			f.Truncate(0)
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if !waited {
			b, _ := os.ReadFile(LockPath)
			log.Logf("proxymodes: waiting for another run's private docker daemon (pid %s) to stop", strings.TrimSpace(string(b)))
			waited = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another proxymodes run (pid in %s) holds the private docker daemon: %w", LockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func release(f *os.File) {
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	f.Close()
}

// Cleanup removes what a killed run's daemon left: its processes and
// containers, mounts, bridges and state directory. A daemon that a live run
// still uses is left alone.
func Cleanup(ctx context.Context, log Logger) error {
	if log == nil {
		log = discard{}
	}
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		log.Logf("proxymodes: the private docker daemon belongs to a live run; leaving it")
		return nil
	}
	defer release(f)
	return cleanupLocked(ctx, log)
}

func dataRootOf() string {
	if b, err := os.ReadFile(filepath.Join(StateDir, "data-root")); err == nil {
		return strings.TrimSpace(string(b))
	}
	return DefaultDataRoot()
}

// cleanupLocked runs with the lock held: nothing of a live run exists.
func cleanupLocked(ctx context.Context, log Logger) error {
	left := Leftovers()
	if len(left) == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(StateDir, "dockerd.pid")); err == nil {
		log.Logf("proxymodes: removing a private docker daemon's leftovers: %s", strings.Join(left, "; "))
	}
	var errs []error
	// dockerd first, so it restarts no container while they are killed.
	if pid := readPid(filepath.Join(StateDir, "dockerd.pid")); pid > 0 && proc.Alive(pid) && isTagged(pid) {
		proc.Stop([]int{pid}, 20*time.Second)
	}
	if err := killCgroup(); err != nil {
		errs = append(errs, err)
	}
	if pids := tagged(); len(pids) > 0 {
		if err := proc.Stop(pids, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range ourMounts() {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	bridges, err := ourBridges()
	errs = append(errs, err)
	for _, b := range bridges {
		errs = append(errs, netlab.DeleteLink(netlab.HostNS, b))
	}
	removeCgroupDirs()
	keepLogs()
	errs = append(errs, os.RemoveAll(StateDir))
	if left := Leftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("the private docker daemon left behind: %s", strings.Join(left, "; ")))
	}
	return errors.Join(errs...)
}

// Leftovers lists what of a private docker daemon exists now: processes,
// container processes, mounts, bridges and the state directory. It is
// empty when no daemon runs and none left anything.
func Leftovers() []string {
	var out []string
	for _, pid := range tagged() {
		out = append(out, fmt.Sprintf("process %d (%s)", pid, cmdline(pid)))
	}
	for _, pid := range cgroupPids() {
		out = append(out, fmt.Sprintf("container process %d (%s)", pid, cmdline(pid)))
	}
	for _, m := range ourMounts() {
		out = append(out, "mount "+m)
	}
	bridges, err := ourBridges()
	if err != nil {
		out = append(out, "cannot list bridges: "+err.Error())
	}
	for _, b := range bridges {
		out = append(out, "bridge "+b)
	}
	if _, err := os.Stat(StateDir); err == nil {
		out = append(out, "state directory "+StateDir)
	}
	return out
}

func tagged() []int {
	var out []int
	for _, pid := range proc.Tagged(agent.LabEnv, Tag) {
		if proc.Alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func isTagged(pid int) bool {
	for _, p := range tagged() {
		if p == pid {
			return true
		}
	}
	return false
}

func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	s := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// cgroupRoots are CgroupParent in every mounted hierarchy (v1) or the
// unified one (v2).
func cgroupRoots() []string {
	var out []string
	for _, base := range []string{"/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(base, "cgroup.controllers")); err == nil {
			if _, err := os.Stat(filepath.Join(base, CgroupParent)); err == nil {
				out = append(out, filepath.Join(base, CgroupParent))
			}
			continue
		}
		hs, _ := os.ReadDir(base)
		for _, h := range hs {
			p := filepath.Join(base, h.Name(), CgroupParent)
			if st, err := os.Stat(p); err == nil && st.IsDir() {
				out = append(out, p)
			}
		}
	}
	return out
}

// cgroupPids lists the live processes in any cgroup below CgroupParent.
func cgroupPids() []int {
	seen := map[int]bool{}
	var out []int
	for _, root := range cgroupRoots() {
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] && proc.Alive(pid) {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	sort.Ints(out)
	return out
}

// killCgroup SIGKILLs container processes until none is left; a dying
// systemd in a kind node may still fork, hence the loop.
func killCgroup() error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := cgroupPids()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container processes survive SIGKILL: %v", pids)
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func removeCgroupDirs() {
	for _, root := range cgroupRoots() {
		var dirs []string
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Deepest first: a cgroup with children cannot be removed.
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			unix.Rmdir(d)
		}
	}
}

// ourMounts lists mount points under the daemon's data root or state
// directory, deepest first.
func ourMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	roots := []string{filepath.Clean(dataRootOf()) + "/", StateDir + "/"}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, r := range roots {
			if strings.HasPrefix(mp+"/", r) {
				out = append(out, mp)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ourBridges lists docker0 and br-* bridges in the host namespace that
// hold an address of the daemon's pools; a system Docker's bridges hold
// other addresses and are left alone.
func ourBridges() ([]string, error) {
	var out []string
	err := netlab.WithHandle(netlab.HostNS, func(h *netlink.Handle) error {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			name := l.Attrs().Name
			if l.Type() != "bridge" || (name != "docker0" && !strings.HasPrefix(name, "br-")) {
				continue
			}
			addrs, err := h.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && inPools(ip) {
					out = append(out, name)
					break
				}
			}
		}
		return nil
	})
	return out, err
}

// LogDir keeps the last run's dockerd and containerd logs, for a look
// after a failure; the state directory they were written to is removed.
func LogDir() string { return filepath.Join(filepath.Dir(dataRootOf()), "docker-logs") }

func keepLogs() {
	os.MkdirAll(LogDir(), 0o755)
	for _, n := range []string{"dockerd.log", "containerd.log"} {
		if b, err := os.ReadFile(filepath.Join(StateDir, n)); err == nil {
			os.WriteFile(filepath.Join(LogDir(), n), b, 0o644)
		}
	}
}
