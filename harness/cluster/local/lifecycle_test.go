package local_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/cluster"
	"github.com/proxymodes/proxymodes/harness/cluster/local"
	"github.com/proxymodes/proxymodes/harness/labtest"
	"github.com/proxymodes/proxymodes/harness/leak"
)

// holderRole is this test binary re-executed to own a lab in a separate
// process, so the tests can interrupt or kill that process.
const holderRole = "test-lab-holder"

const holderLab = "lhold"

func init() { agent.Register(holderRole, holderMain) }

// holderMain takes the lab's kernel (local.KernelHost or KernelUML) as
// its argument.
func holderMain(args []string) int {
	ctx := context.Background()
	kernel := ""
	if len(args) > 0 {
		kernel = args[0]
	}
	// Before Up, as a suite does: an interrupt while the lab is being
	// created must remove it too.
	labtest.HandleSignals()
	l, err := local.Up(ctx, local.Options{Name: holderLab, Nodes: 2, Kernel: kernel})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	labtest.OnInterrupt(l.Down)
	for i := 0; i < 2; i++ {
		if _, err := l.AddPod(ctx, cluster.PodSpec{Name: fmt.Sprintf("h%d", i)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			l.Down(ctx)
			return 1
		}
	}
	fmt.Println("up")
	select {} // until a signal arrives
}

// startHolder runs a lab in a child process and waits until it is up;
// env is added to the child's environment.
func startHolder(t *testing.T, kernel string, env ...string) *os.Process {
	t.Helper()
	cmd, err := agent.Command("", holderRole, kernel)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(cmd.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
	}()
	select {
	case l := <-line:
		if l != "up" {
			cmd.Process.Kill()
			t.Fatalf("lab holder failed (printed %q)", l)
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		t.Fatal("lab holder not up after 3 minutes")
	}
	return cmd.Process
}

func expectNoLeftovers(t *testing.T, lab string) {
	t.Helper()
	if left := leak.Check(lab); len(left) > 0 {
		t.Fatalf("lab %s left behind:\n%v", lab, left)
	}
}

// TestDownLeavesNothing takes the shared lab down; later tests start it
// again.
func TestDownLeavesNothing(t *testing.T) {
	l := lab(t)
	for _, node := range []string{"node-1", "node-2"} {
		if _, err := l.AddPod(context.Background(), cluster.PodSpec{Name: "down-" + node, Node: node}); err != nil {
			t.Fatal(err)
		}
	}
	if len(leak.Check(sharedName)) == 0 {
		t.Fatal("leak check sees nothing of a running lab, so it cannot prove a clean down")
	}
	start := time.Now()
	if err := downShared(); err != nil {
		t.Fatal(err)
	}
	t.Logf("down took %s", time.Since(start))
	expectNoLeftovers(t, sharedName)
}

// killedHolder runs a lab in a child process, SIGKILLs it and returns
// what the lab left behind.
func killedHolder(t *testing.T, kernel string) []string {
	t.Helper()
	p := startHolder(t, kernel)
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Wait()
	return leak.Check(holderLab)
}

func TestInterruptedRunLeavesNothing(t *testing.T) {
	downShared()
	p := startHolder(t, local.KernelHost)
	if err := p.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode() != 130 {
		t.Errorf("interrupted holder exited with %d, want 130", st.ExitCode())
	}
	expectNoLeftovers(t, holderLab)
}

// TestInterruptDuringGuestBootLeavesNothing: Ctrl-C while the UML guests
// boot, before the lab exists for its creator, still removes the guests,
// their namespace and run directories.
func TestInterruptDuringGuestBootLeavesNothing(t *testing.T) {
	downShared()
	cmd, err := agent.Command("", holderRole, local.KernelUML)
	if err != nil {
		t.Fatal(err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer local.Down(context.Background(), holderLab, labtest.Logger(t)) // if the test fails
	// Both guests' kernels running: the lab is mid-boot, with the most to
	// leak (processes, namespace, taps, run directories).
	var seen []string
	booting := func() bool {
		seen = leak.Check(holderLab)
		kernels := 0
		for _, l := range seen {
			if strings.HasPrefix(l, "process ") && strings.Contains(l, "uml") {
				kernels++
			}
		}
		return kernels == 2
	}
	deadline := time.Now().Add(5 * time.Minute) // a cold UML kernel build comes first
	for !booting() {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("no guest started booting within 5 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	t.Logf("interrupted with %d things of the lab present", len(seen))
	start := time.Now()
	err = cmd.Wait()
	t.Logf("holder exited %v, %s after SIGINT", err, time.Since(start).Round(time.Millisecond))
	if strings.Contains(stdout.String(), "up") {
		t.Fatal("the lab came up before the interrupt, so this run tested nothing about boot; the interrupt must come sooner")
	}
	if err == nil {
		t.Error("an interrupted holder exited with status 0")
	}
	expectNoLeftovers(t, holderLab)
}

func TestKilledRunIsCleanedByNextUp(t *testing.T) {
	downShared()
	if len(killedHolder(t, local.KernelHost)) == 0 {
		t.Fatal("a SIGKILLed lab left nothing behind, so this test proves nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := local.Up(ctx, local.Options{Name: holderLab, Nodes: 1, Logger: labtest.Logger(t)})
	if err != nil {
		t.Fatalf("up after a killed run: %v", err)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	expectNoLeftovers(t, holderLab)
}

// TestKilledGuestRunIsCleanedByDown: what `lab down` does for a SIGKILLed
// run whose nodes ran in UML guests: their processes, the lab namespace
// on the host and the guests' run directories in the cache all go.
func TestKilledGuestRunIsCleanedByDown(t *testing.T) {
	downShared()
	left := killedHolder(t, local.KernelUML)
	runDirs := 0
	for _, l := range left {
		if strings.HasPrefix(l, "file ") && strings.Contains(l, "/uml/runs/"+leak.Prefix(holderLab)) {
			runDirs++
		}
	}
	if runDirs != 2 {
		t.Fatalf("a SIGKILLed lab of 2 guests left %v: want 2 guest run directories among them", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := local.Down(ctx, holderLab, labtest.Logger(t)); err != nil {
		t.Fatal(err)
	}
	expectNoLeftovers(t, holderLab)
}

// A lab in the host namespace leaves a live isolated lab alone (they share
// nothing), and removes one whose owner was killed.
func TestHostLabSparesLiveIsolatedLabAndCleansKilledOne(t *testing.T) {
	downShared()
	p := startHolder(t, local.KernelHost, "LAB_ISOLATED=1")
	up := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		l, err := local.Up(ctx, local.Options{Name: "lhost", Nodes: 1, Logger: labtest.Logger(t)})
		if err != nil {
			p.Kill()
			t.Fatalf("a host-namespace lab beside an isolated one: %v", err)
		}
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
	}
	up()
	if left := leak.Check(holderLab); len(left) == 0 || !strings.Contains(strings.Join(left, " "), "namespace "+leak.Prefix(holderLab)+"host") {
		p.Kill()
		t.Fatalf("the isolated lab beside a host-namespace one: left %v, want it whole, its sandbox namespace included", left)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Wait()
	up()
	expectNoLeftovers(t, holderLab)
}
