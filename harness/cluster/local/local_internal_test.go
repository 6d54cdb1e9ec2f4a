package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/cluster"
)

// TestLockHostSaysWhenTheHostIsBusy: a run that never gets the host says
// why, in an error the suite tells from its own lab's failures (it then
// does not leak-check the other run's lab, which has the same name).
func TestLockHostSaysWhenTheHostIsBusy(t *testing.T) {
	saved := hostLockPath
	hostLockPath = filepath.Join(t.TempDir(), "host.lock")
	defer func() { hostLockPath = saved }()
	holder, err := os.OpenFile(hostLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := lockHost(ctx, cluster.Discard); !errors.Is(err, ErrHostBusy) {
		t.Fatalf("lockHost while another holds the host: %v, want ErrHostBusy", err)
	}

}
