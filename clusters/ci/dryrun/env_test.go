package dryrun

import (
	"slices"
	"strings"
	"testing"
)

func TestParseGithubEnv(t *testing.T) {
	got, err := ParseGithubEnv([]byte("ARTIFACT=soak-iptables-reference\nEMPTY=\nWITH_EQ=a=b\nMULTI<<EOF\nline 1\nline 2\nEOF\n\nLAST=x"))
	if err != nil {
		t.Fatal(err)
	}
	want := []KV{{"ARTIFACT", "soak-iptables-reference"}, {"EMPTY", ""}, {"WITH_EQ", "a=b"}, {"MULTI", "line 1\nline 2"}, {"LAST", "x"}}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"no equals sign", "1X=y", "M<<EOF\nnever closed\n", "=v"} {
		if _, err := ParseGithubEnv([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestGithubEnvWritesOfTheSoak(t *testing.T) {
	s, err := findStep(loadNightly(t), "soak", "Name the artifact")
	if err != nil {
		t.Fatal(err)
	}
	if got := GithubEnvWrites(s.Run); !slices.Equal(got, []string{"ARTIFACT"}) {
		t.Errorf("the soak's Name the artifact writes %v to GITHUB_ENV, want [ARTIFACT]", got)
	}
	if got := GithubEnvWrites(`echo "X=1" > "$GITHUB_ENV"` + "\necho Y=2"); len(got) != 0 {
		t.Errorf("found writes %v where none append to GITHUB_ENV", got)
	}
}

func TestHostEnv(t *testing.T) {
	makefile := []byte("SHELL := /bin/bash\nMODE ?= iptables\nFEATURE ?=\nexport PROXYMODES_CACHE := $(CACHE)\nifeq ($(SOAK_DIR),)\nSOAK_DIR := /tmp/x\nendif\ntarget:\n\tk8s=$$(x); echo\n")
	vars := MakefileVars(makefile)
	for _, v := range []string{"MODE", "FEATURE", "PROXYMODES_CACHE", "SOAK_DIR"} {
		if !slices.Contains(vars, v) {
			t.Errorf("MakefileVars lacks %s: %v", v, vars)
		}
	}
	if slices.Contains(vars, "SHELL") || slices.Contains(vars, "k8s") {
		t.Errorf("MakefileVars has SHELL or a recipe's shell variable: %v", vars)
	}
	env, dropped := HostEnv([]string{"PATH=/bin", "HOME=/root", "SHELL=/bin/bash", `MAKEFLAGS=n -- ONLY=bench,soak PLAN=1 X=a\ Y=b`, "ONLY=bench,soak", "PLAN=1",
		"X=a Y=b", "Y=kept", "MAKELEVEL=1", "MODE=ipvs", "FEATURE=retry", "PROXYMODES_MODE=ipvs", "GITHUB_ENV=/x", "RUNNER_TEMP=/y", "LAB_ISOLATED=1", "CI=false"}, vars)
	if want := []string{"PATH=/bin", "HOME=/root", "SHELL=/bin/bash", "Y=kept"}; !slices.Equal(env, want) {
		t.Errorf("kept %v, want %v", env, want)
	}
	if len(dropped) != 12 {
		t.Errorf("dropped %v", dropped)
	}
}

func TestCheckEnvWins(t *testing.T) {
	m := []byte("A ?= 1\nB := 2\nC ?= 3\nC := 4\noverride D ?= 5\n")
	if err := CheckEnvWins(m, "A"); err != nil {
		t.Error(err)
	}
	for _, v := range []string{"B", "C", "D", "E"} {
		if err := CheckEnvWins(m, v); err == nil {
			t.Errorf("%s: the environment would not win, and the check passed", v)
		}
	}
	if err := CheckEnvWins(readMakefile(t), "MODE"); err != nil {
		t.Error(err)
	}
	if err := CheckEnvWins(readMakefile(t), "PROXYMODES"); err == nil || !strings.Contains(err.Error(), ":=") {
		t.Errorf("PROXYMODES := …: %v", err)
	}
}
