package proc

import (
	"syscall"
	"testing"
	"time"
)

func TestGroupCPUCountsThisProcess(t *testing.T) {
	pgid, err := syscall.Getpgid(0)
	if err != nil {
		t.Fatal(err)
	}
	before := GroupCPU(pgid)
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
	}
	if got := GroupCPU(pgid) - before; got < 100*time.Millisecond {
		t.Fatalf("300ms of busy loop counted as %s of CPU", got)
	}
	if GroupCPU(-1) != 0 {
		t.Fatal("a group that does not exist used CPU")
	}
}
