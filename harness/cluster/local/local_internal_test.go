package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local/plane"
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
	if _, err := lockLab(ctx, hostLockPath, cluster.Discard); !errors.Is(err, ErrHostBusy) {
		t.Fatalf("lockLab while another holds the host: %v, want ErrHostBusy", err)
	}

}

// LAB_ISOLATED takes 1 or 0; anything else is refused with what to use,
// never read as "not isolated".
func TestLabIsolatedEnv(t *testing.T) {
	for _, c := range []struct {
		env  string
		want bool
		err  bool
	}{{"", false, false}, {"0", false, false}, {"1", true, false}, {"yes", false, true}} {
		t.Setenv("LAB_ISOLATED", c.env)
		o := Options{}
		err := o.complete()
		if (err != nil) != c.err || o.Isolated != c.want {
			t.Errorf("LAB_ISOLATED=%q: isolated %v, err %v; want %v, error %v", c.env, o.Isolated, err, c.want, c.err)
		}
	}
}

// execRecorder is a data plane that only records the commands run in it.
type execRecorder struct {
	plane.Plane
	argv [][]string
}

func (e *execRecorder) Exec(ctx context.Context, ns string, argv []string) (string, error) {
	e.argv = append(e.argv, argv)
	return "", nil
}

// A proxier's --cleanup runs with the environment its runs had: kube-proxy
// given a PATH to one iptables backend must clean that backend's rules.
func TestCleanupHasTheProxiersEnv(t *testing.T) {
	rec := &execRecorder{}
	l := &Lab{plane: rec}
	n := cluster.Node{Name: "node-1", NS: "pm-x-node-1"}
	if err := l.cleanup(context.Background(), &ProxierOptions{Impl: ImplKubeProxy, Binary: "/bin/kube-proxy", Env: []string{"PATH=/tmp/legacy:/usr/sbin"}}, n); err != nil {
		t.Fatal(err)
	}
	if err := l.cleanup(context.Background(), &ProxierOptions{Binary: "/bin/proxier"}, n); err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"env", "PATH=/tmp/legacy:/usr/sbin", "/bin/kube-proxy", "--cleanup"}, {"/bin/proxier", "--cleanup"}}
	if !reflect.DeepEqual(rec.argv, want) {
		t.Errorf("cleanup ran %q, want %q", rec.argv, want)
	}
}
