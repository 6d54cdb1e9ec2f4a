// Package rules reads the packet-filter rules of a lab namespace so tests
// can check what a proxier programmed and what it left behind. It only
// reads, and only inside the namespace it is given.
package rules

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/proxymodes/proxymodes/harness/netlab"
)

// FlavourEnv names the only iptables flavour a kernel supports, when it
// supports just one (a UML guest has legacy iptables but no nf_tables for
// IPv4). The proxier reads the same variable.
const FlavourEnv = "PROXIER_IPTABLES"

// Savers are the iptables flavours a proxier may use; all are read, so a
// rule cannot hide in the one a test did not look at.
func Savers() []string {
	switch os.Getenv(FlavourEnv) {
	case "legacy":
		return []string{"iptables-legacy-save"}
	case "nft":
		return []string{"iptables-nft-save"}
	}
	return []string{"iptables-nft-save", "iptables-legacy-save"}
}

// Command is the iptables command of the usable flavour.
func Command() string {
	if os.Getenv(FlavourEnv) == "legacy" {
		return "iptables-legacy"
	}
	return "iptables"
}

// IPTables returns the rules of ns from every flavour, without comment
// lines and packet counters, so two dumps compare equal when rules do.
func IPTables(ns string) (string, error) {
	if ns == netlab.HostNS {
		return "", fmt.Errorf("rules: refusing to inspect through the host namespace by accident; name a lab namespace")
	}
	var b strings.Builder
	for _, saver := range Savers() {
		var out, stderr bytes.Buffer
		err := netlab.Do(ns, func() error {
			cmd := exec.Command(saver)
			cmd.Stdout, cmd.Stderr = &out, &stderr
			return cmd.Run()
		})
		if err != nil {
			return "", fmt.Errorf("%s in %s: %v: %s", saver, ns, err, stderr.String())
		}
		fmt.Fprintf(&b, "# %s\n%s", saver, Normalize(out.String()))
	}
	return b.String(), nil
}

// Normalize drops comment lines and chain counters from iptables-save text.
func Normalize(save string) string {
	var b strings.Builder
	for _, line := range strings.Split(save, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexByte(line, '['); strings.HasPrefix(line, ":") && i > 0 {
			line = strings.TrimSpace(line[:i])
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// Matching returns the lines of a dump that contain any of the needles.
func Matching(dump string, needles ...string) []string {
	var out []string
	for _, line := range strings.Split(dump, "\n") {
		for _, n := range needles {
			if n != "" && strings.Contains(line, n) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}
