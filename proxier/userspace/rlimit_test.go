package userspace

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The bench sweeps the userspace mode to 30k Services, one listening
// socket each: a soft limit left at 1024 fails a 1000-Service point with
// EMFILE, and the hard limit must rise too where the process may raise it.
func TestRaiseOpenFileLimit(t *testing.T) {
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Setrlimit(unix.RLIMIT_NOFILE, &before) })
	low := unix.Rlimit{Cur: 1024, Max: before.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	ceiling, err := OpenFileCeiling()
	if err != nil {
		t.Fatal(err)
	}
	got, err := RaiseOpenFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var now unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &now); err != nil {
		t.Fatal(err)
	}
	if now.Cur != got || got != ceiling || got < before.Max {
		t.Errorf("open-file limit after raising from 1024 (hard %d): returned %d, in force %d, ceiling %d; want all three equal and at least the hard limit",
			before.Max, got, now.Cur, ceiling)
	}
	if hasSysResource() && got < 64000 {
		t.Errorf("with CAP_SYS_RESOURCE the limit rose only to %d; want at least 64000", got)
	}
}
