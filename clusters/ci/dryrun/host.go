package dryrun

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/proxymodes/proxymodes/harness/hostipvs"
)

// HostLimit is something a step needs from the machine that this machine
// may lack by its nature (a kernel module), where a hosted runner has it.
// When a step the limit names fails and the probe confirms the lack, the
// step is "cannot run here" instead of failed; a failure the probe does
// not explain stays a failure, so no error is ignored.
type HostLimit struct {
	Name string
	// Loads says whether a step is the one that loads the feature.
	Loads func(s *Step) bool
	// Missing probes the host: why the feature is missing, or "".
	Missing func() string
	// Needs says whether the rest of a leg needs the feature on the host,
	// and why it does or does not. A leg that needs it stops there as
	// "cannot run here"; one that does not goes on, its later steps being
	// the workflow's own.
	Needs func(l Leg) (bool, string)
}

var modprobeIPVSRE = regexp.MustCompile(`(^|[\s;&|])modprobe\s[^\n]*\bip_vs\b`)

// IPVSLimit is the rule for the nightly's "Load IPVS" steps: a runner's
// kernel has ip_vs; a machine whose kernel has none (the harness then runs
// ipvs in user-mode Linux guests) cannot load it. The local lab and the
// benchmark do without it (they put ipvs in the guests), but kind nodes
// share the host's kernel: harness/cluster/kind.Up refuses MODE=ipvs
// there without host ip_vs, so those legs cannot run here at all.
func IPVSLimit(probe hostipvs.Probe) HostLimit {
	return HostLimit{
		Name:    "ip_vs",
		Loads:   func(s *Step) bool { return s.Run != "" && modprobeIPVSRE.MatchString(s.Run) },
		Missing: probe.Missing,
		Needs: func(l Leg) (bool, string) {
			mode, _ := l.MatrixValue("mode")
			for _, s := range l.Job.Steps {
				if !strings.Contains(s.Run, "PROVIDER=kind") {
					continue
				}
				if mode == "ipvs" {
					return true, "kind nodes share the host's kernel, and the harness refuses MODE=ipvs on kind without the host's ip_vs"
				}
				return false, fmt.Sprintf("kind runs MODE=%s without ip_vs", mode)
			}
			return false, "without the host's ip_vs the harness runs ipvs in user-mode Linux guests (the local lab's and the benchmark's ipvs points)"
		},
	}
}

// sudoShim stands in for sudo on a machine that runs the dry run as root
// and has none: the workflow's `sudo -E env "PATH=$PATH" make …` then runs
// the command as it is. It takes only options without arguments (-E, -H,
// -n): one with an argument (-u user) would mean something the shim
// cannot do, so it refuses it by name.
const sudoShim = `#!/bin/bash
# nightly-dry-run's stand-in for sudo: the dry run already runs as root.
while [ $# -gt 0 ]; do
	case $1 in
	--) shift; break;;
	-E|-H|-n|-S|--preserve-env|--set-home|--non-interactive) shift;;
	-*) echo "nightly-dry-run's sudo shim: option $1 is not emulated" >&2; exit 1;;
	*) break;;
	esac
done
[ $# -gt 0 ] || { echo "nightly-dry-run's sudo shim: no command" >&2; exit 1; }
exec "$@"
`

// WriteSudoShim writes the shim as dir/sudo.
func WriteSudoShim(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sudo"), []byte(sudoShim), 0o755)
}

// ForeignOwned returns a file under dir that neither root nor gid 0
// owns, or "". Run as root, the workflow's "Hand root's files back" step
// (chown -R "$(id -u):$(id -g)" … "$GITHUB_WORKSPACE") hands the checkout
// to root, which on a runner is the runner's user: harmless in a checkout
// root owns already, not in one another user does.
func ForeignOwned(dir string) (string, error) {
	found := ""
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && (st.Uid != 0 || st.Gid != 0) {
			found = fmt.Sprintf("%s (uid %d, gid %d)", p, st.Uid, st.Gid)
			return filepath.SkipAll
		}
		return nil
	})
	return found, err
}

// MountsUnder lists mount points under dir: removing a RUNNER_TEMP with a
// file system still mounted in it (a leftover docker overlay) would
// delete through the mount.
func MountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		// Octal escapes (\040 for a space) are not undone: a RUNNER_TEMP
		// has none.
		if mp := fields[4]; mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}
