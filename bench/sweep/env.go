package sweep

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/bench/result"
)

// kubernetesVersion is the pinned Kubernetes (clusters/k8s).
const kubernetesVersion = "v1.37.2"

// environment records the machine and versions.
func environment() result.Env {
	e := result.Env{OS: runtime.GOOS, Arch: runtime.GOARCH, Cores: runtime.NumCPU(),
		GoVersion: runtime.Version(), Kubernetes: kubernetesVersion}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	e.CPU = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseInt(strings.Fields(procField("/proc/meminfo", "MemTotal") + " 0")[0], 10, 64); err == nil {
		e.MemoryBytes = kb * 1024
	}
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		e.Commit = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			e.Commit += "-dirty"
		}
	}
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		switch v := string(out); {
		case strings.Contains(v, "nf_tables"):
			e.IPTablesBackend = "nft"
		case strings.Contains(v, "legacy"):
			e.IPTablesBackend = "legacy"
		}
	}
	return e
}

// procField returns the value of the first "key: value" line.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// progress prints which point runs and an ETA weighted by Service count
// (a point's cost grows with it).
type progress struct {
	log           func(string, ...any)
	start         time.Time
	total, done   float64
	points, index int
	current       float64
	pointStarted  time.Time
}

func newProgress(c Config, plans []kernelPlan) *progress {
	p := &progress{log: c.Log, start: time.Now()}
	for _, kp := range plans {
		for _, n := range c.Counts {
			p.points += len(kp.proxiers)
			p.total += float64(len(kp.proxiers)) * weight(n)
		}
	}
	return p
}

func weight(services int) float64 { return 200 + float64(services) }

func (p *progress) begin(kernel string, px proxier, services int) {
	p.index++
	p.current = weight(services)
	p.pointStarted = time.Now()
	eta := "unknown yet"
	if p.done > 0 {
		left := time.Duration(float64(time.Since(p.start)) / p.done * (p.total - p.done))
		eta = left.Round(time.Second).String()
	}
	p.log("[%d/%d] %s, %s, %d Services (elapsed %s, ETA %s)", p.index, p.points, kernel, px, services,
		time.Since(p.start).Round(time.Second), eta)
}

// skip drops a point that will not run from the ETA.
func (p *progress) skip(services int) {
	p.points--
	p.total -= weight(services)
}

func (p *progress) end() {
	p.done += p.current
	p.log("  done in %s", time.Since(p.pointStarted).Round(100*time.Millisecond))
}
