package dryrun

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/proxymodes/proxymodes/harness/hostipvs"
)

// TestIPVSRuleOnTheNightly: the rule picks out the nightly's Load IPVS
// steps and nothing else, and only the kind ipvs legs need the module
// for the rest of their run.
func TestIPVSRuleOnTheNightly(t *testing.T) {
	wf := loadNightly(t)
	lim := IPVSLimit(hostipvs.Probe{})
	var loads []string
	for _, j := range wf.Jobs {
		for _, s := range j.Steps {
			if lim.Loads(s) {
				loads = append(loads, j.ID+"/"+s.Name)
			}
		}
	}
	if want := []string{"conformance/Load IPVS", "bench/Load IPVS"}; !slices.Equal(loads, want) {
		t.Errorf("the rule loads ip_vs in %v, want %v", loads, want)
	}
	var needs []string
	legs, _ := SelectLegs(wf, nil)
	for _, l := range legs {
		n, why := lim.Needs(l)
		if n {
			needs = append(needs, l.ID())
		}
		if why == "" && slices.ContainsFunc(l.Job.Steps, lim.Loads) {
			t.Errorf("%s: no reason why it does or does not need ip_vs", l.ID())
		}
	}
	if want := []string{"conformance/ipvs/reference", "conformance/ipvs/kube-proxy"}; !slices.Equal(needs, want) {
		t.Errorf("legs needing the host's ip_vs: %v, want %v", needs, want)
	}
}

func TestSudoShim(t *testing.T) {
	dir := t.TempDir()
	if err := WriteSudoShim(dir); err != nil {
		t.Fatal(err)
	}
	sudo := filepath.Join(dir, "sudo")
	out, err := exec.Command(sudo, "-E", "env", "X=1", "sh", "-c", `echo "$X $0"`, "arg").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1 arg" {
		t.Errorf("sudo -E env X=1 sh -c …: %q, %v", out, err)
	}
	for _, args := range [][]string{{"-u", "nobody", "true"}, {"-E"}, {}} {
		out, err := exec.Command(sudo, args...).CombinedOutput()
		if err == nil {
			t.Errorf("sudo %v: ran: %s", args, out)
		}
	}
	if out, _ := exec.Command(sudo, "-u", "nobody", "true").CombinedOutput(); !strings.Contains(string(out), "-u") {
		t.Errorf("the shim's refusal does not name the option: %s", out)
	}
}
