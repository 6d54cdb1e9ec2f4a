package uml

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/leak"
	"github.com/proxymodes/proxymodes/harness/logs"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/proc"
)

// Modules are loaded before the command runs. Besides these, stage 2 loads
// every iptables table, match and target module and every ipset type: in the guest, loading on
// demand from inside a program's modprobe call fails ("could not get
// modinfo ... Invalid argument"), while loading them up front works.
// nf_conntrack_netlink is easy to miss: without it every conntrack dump
// or delete fails with a bare EINVAL (nfnetlink's answer for an unknown
// subsystem), so stale UDP entries were never cleared in the guest.
var Modules = []string{"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh",
	"ip_vs_sed", "ip_vs_nq", "dummy", "veth", "bridge", "br_netfilter", "tun", "nf_conntrack", "nf_nat", "ip_tables", "x_tables",
	"nfnetlink", "nf_conntrack_netlink"}

// RunOptions describe one guest run.
type RunOptions struct {
	// Argv runs in the guest; its path is a host path (the host root is
	// the guest's lower layer).
	Argv []string
	Env  []string
	// Dir is the working directory in the guest (default /).
	Dir string
	// MemMB is the guest's memory (default 1024).
	MemMB int
	// NetNS, if set, is the host lab namespace linux.uml runs in, and Taps
	// the tap devices in it that become the guest's vec0, vec1, ... The
	// guest then has no other network.
	NetNS string
	Taps  []Tap
	// Lab tags the UML processes for leak checks and cleanup.
	Lab     string
	Timeout time.Duration
}

// Tap is a host tap device that a guest sees as one of its vecN links.
type Tap struct {
	Name string
	// MAC fixes the guest side's hardware address; without it the guest
	// picks a random one, which bridged guests could share by chance.
	MAC net.HardwareAddr
}

// Result is what the command in the guest did.
type Result struct {
	ExitCode int
	Stdout   string
	Stderr   string
	// RunDir holds stdout, stderr, rc and the console log.
	RunDir  string
	Elapsed time.Duration
}

// Started is a guest that is running.
type Started struct {
	k      *Kernel
	cmd    *exec.Cmd
	runDir string
	start  time.Time
	exited chan struct{}
}

// RunDir is the host directory shared with the guest (mounted at the same
// path there): the command's output, rc, and anything it writes there.
func (s *Started) RunDir() string { return s.runDir }

// Start boots a guest that runs opts.Argv and powers off when it exits.
func (k *Kernel) Start(ctx context.Context, opts RunOptions) (*Started, error) {
	if len(opts.Argv) == 0 {
		return nil, errors.New("uml: nothing to run")
	}
	if opts.MemMB == 0 {
		opts.MemMB = 1024
	}
	id := make([]byte, 4)
	rand.Read(id)
	umid := "pm" + hex.EncodeToString(id)
	if opts.Lab != "" {
		// Named for the lab, so that a later `lab down` finds the run
		// directories of a run that was killed.
		umid = leak.Prefix(opts.Lab) + hex.EncodeToString(id)
	}
	runDir := filepath.Join(runsDir(), umid)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(runDir, "stage2.sh"), []byte(stage2(opts, runDir)), 0o755); err != nil {
		return nil, err
	}
	args := []string{
		"mem=" + strconv.Itoa(opts.MemMB) + "M", "initrd=" + k.Initrd,
		"con=null", "ssl=null", "con0=fd:0,fd:1", "quiet", "panic=-1",
		"uml_dir=" + runDir, "umid=" + umid,
		"pm_moddir=" + k.ModDir, "pm_kver=" + k.Version, "pm_run=" + runDir,
	}
	for i, t := range opts.Taps {
		// gro=1: without it bulk TCP stalls ("Incoming GSO frames and GRO disabled").
		v := fmt.Sprintf("vec%d:transport=tap,ifname=%s,gro=1", i, t.Name)
		if t.MAC != nil {
			v += ",mac=" + t.MAC.String()
		}
		args = append(args, v)
	}
	args = append(args, guestEnv...) // the kernel hands these to init's environment
	cmd, err := agent.Command(opts.Lab, launchRole, k.Binary)
	if err != nil {
		return nil, err
	}
	cmd.Args = append(cmd.Args, args...)
	cmd.Env = append(cmd.Env, "TMPDIR=/dev/shm")
	console, err := os.Create(filepath.Join(runDir, "console.log"))
	if err != nil {
		return nil, err
	}
	defer console.Close()
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Forked from a thread inside opts.NetNS (or ours), so the guest's
	// tap is the only network it can reach.
	if err := netlab.Do(opts.NetNS, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s: %w", k.Binary, err)
	}
	s := &Started{k: k, cmd: cmd, runDir: runDir, start: time.Now(), exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	return s, nil
}

// Wait waits for the guest to power off, killing it when ctx ends or the
// timeout passes, and returns the command's result.
func (s *Started) Wait(ctx context.Context, timeout time.Duration) (Result, error) {
	var timer <-chan time.Time
	if timeout > 0 {
		timer = time.After(timeout)
	}
	select {
	case <-s.exited:
	case <-ctx.Done():
		s.Kill()
		return s.result(), fmt.Errorf("uml run interrupted: %w", ctx.Err())
	case <-timer:
		s.Kill()
		return s.result(), fmt.Errorf("uml run timed out after %s; console: %s", timeout, filepath.Join(s.runDir, "console.log"))
	}
	r := s.result()
	if _, err := os.Stat(filepath.Join(s.runDir, "rc")); err != nil {
		return r, fmt.Errorf("the guest stopped without running the command; console log:\n%s", logs.Tail(filepath.Join(s.runDir, "console.log"), 30))
	}
	return r, nil
}

// CPU is the host CPU time the guest's processes have used so far: a
// guest with one vCPU can use at most one core.
func (s *Started) CPU() time.Duration { return proc.GroupCPU(s.cmd.Process.Pid) }

// Done is closed when the guest has powered off or died.
func (s *Started) Done() <-chan struct{} { return s.exited }

// Kill stops the guest and all its helper processes.
func (s *Started) Kill() {
	select {
	case <-s.exited:
		return
	default:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
}

// Remove deletes the run directory.
func (s *Started) Remove() error { return os.RemoveAll(s.runDir) }

func runsDir() string { return filepath.Join(cacheDir(), "runs") }

func init() { leak.RegisterFiles(LabRunDirs) }

// LabRunDirs lists the run directories of a lab's guests.
func LabRunDirs(lab string) []string {
	dirs, _ := filepath.Glob(filepath.Join(runsDir(), leak.Prefix(lab)+"*"))
	return dirs
}

// RemoveLabRuns removes the run directories of a lab's guests; their
// processes must have stopped.
func RemoveLabRuns(lab string) error {
	var errs []error
	for _, d := range LabRunDirs(lab) {
		errs = append(errs, os.RemoveAll(d))
	}
	return errors.Join(errs...)
}

func (s *Started) result() Result {
	r := Result{ExitCode: -1, RunDir: s.runDir, Elapsed: time.Since(s.start)}
	if b, err := os.ReadFile(filepath.Join(s.runDir, "rc")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			r.ExitCode = n
		}
	}
	b, _ := os.ReadFile(filepath.Join(s.runDir, "stdout"))
	r.Stdout = string(b)
	b, _ = os.ReadFile(filepath.Join(s.runDir, "stderr"))
	r.Stderr = string(b)
	return r
}

// Run boots a guest, runs the command and returns its result. The run
// directory is removed afterwards.
func (k *Kernel) Run(ctx context.Context, opts RunOptions) (Result, error) {
	s, err := k.Start(ctx, opts)
	if err != nil {
		return Result{}, err
	}
	defer s.Remove()
	return s.Wait(ctx, opts.Timeout)
}

// stage2 is the script the guest runs as init after switching root.
func stage2(o RunOptions, runDir string) string {
	var b strings.Builder
	b.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n")
	b.WriteString("mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t tmpfs tmpfs /run\n")
	b.WriteString("mkdir -p /dev/pts /dev/shm /run/netns; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm\n")
	b.WriteString("ip link set lo up\n")
	// Only legacy iptables works in this kernel (no IPv4 nf_tables), and
	// programs that run plain "iptables" (upstream kube-proxy) must get it.
	b.WriteString("mkdir -p /run/pm-legacy; for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do ln -s /usr/sbin/xtables-legacy-multi /run/pm-legacy/$t; done; export PATH=/run/pm-legacy:$PATH\n")
	b.WriteString("nf=$(cd /lib/modules/$(uname -r)/kernel/net && ls netfilter/xt_*.ko netfilter/ipset/ip_set*.ko ipv4/netfilter/iptable_*.ko ipv4/netfilter/ipt_*.ko 2>/dev/null | sed 's#.*/##; s#[.]ko$##' | grep -v CLUSTERIP)\n")
	fmt.Fprintf(&b, "modprobe -a %s $nf 2>>%s/stderr || echo \"proxymodes: some modules failed to load\" >>%s/stderr\n",
		strings.Join(Modules, " "), runDir, runDir)
	// With every module loaded, turn off the kernel's module autoloading.
	// This kernel has CONFIG_BPFILTER: every iptables get/setsockopt asks
	// for module "bpfilter" first, and each ask starts a modprobe process,
	// which costs 15-80 ms in the guest. An iptables-save of a few dozen
	// rules made 32 asks and took 1.2 s against 0.13 s without; kube-proxy's
	// ipvs syncs, several such calls each, took 20-30 s.
	b.WriteString("echo > /proc/sys/kernel/modprobe\n")
	for _, e := range o.Env {
		fmt.Fprintf(&b, "export %s\n", shellQuote(e))
	}
	dir := o.Dir
	if dir == "" {
		dir = "/"
	}
	fmt.Fprintf(&b, "cd %s\n", shellQuote(dir))
	quoted := make([]string, len(o.Argv))
	for i, a := range o.Argv {
		quoted[i] = shellQuote(a)
	}
	fmt.Fprintf(&b, "%s >%s/stdout 2>>%s/stderr </dev/null\n", strings.Join(quoted, " "), runDir, runDir)
	fmt.Fprintf(&b, "echo $? >%s/rc\nsync\npoweroff -f\n", runDir)
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
