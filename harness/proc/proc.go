// Package proc finds and stops the processes a lab started. Each carries
// the lab's name in its environment (agent.LabEnv), which survives the
// death of the run that started it.
package proc

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Tagged returns the PIDs whose environment holds env=value.
func Tagged(env, value string) []int {
	want := []byte(env + "=" + value)
	self := os.Getpid()
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(b, []byte{0}) {
			if bytes.Equal(kv, want) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs what is left and
// waits for it to go. It returns an error only if something survives.
func Stop(pids []int, grace time.Duration) error {
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	if waitGone(pids, grace) {
		return nil
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	if waitGone(pids, 5*time.Second) {
		return nil
	}
	return errors.New("processes survived SIGKILL")
}

func waitGone(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		alive := false
		for _, p := range pids {
			if Alive(p) {
				alive = true
				break
			}
		}
		if !alive {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// GroupCPU is the CPU time (user and system) used so far by the live
// processes of process group pgid and the children they reaped, from
// /proc/<pid>/stat.
func GroupCPU(pgid int) time.Duration {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name: state is field 3,
		// pgrp 5, utime 14, stime 15, and cutime 16 and cstime 17 for
		// children that exited and were reaped (man 5 proc). UML runs each
		// guest process as a host process of its group, so without the
		// reaped children's time a guest's short-lived commands vanish.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 15 {
			continue
		}
		if g, err := strconv.Atoi(string(f[2])); err != nil || g != pgid {
			continue
		}
		u, _ := strconv.ParseInt(string(f[11]), 10, 64)
		s, _ := strconv.ParseInt(string(f[12]), 10, 64)
		cu, _ := strconv.ParseInt(string(f[13]), 10, 64)
		cs, _ := strconv.ParseInt(string(f[14]), 10, 64)
		ticks += u + s + cu + cs
	}
	// USER_HZ is 100 on every Linux architecture the harness runs on.
	return time.Duration(ticks) * (time.Second / 100)
}
