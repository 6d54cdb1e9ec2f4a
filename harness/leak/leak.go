// Package leak finds what a lab left behind. Every object a lab creates is
// named with Prefix(lab) or tagged with the lab's name in its environment,
// which is what lets a later run find leftovers of a run that was killed.
package leak

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/proxymodes/proxymodes/harness/agent"
	"github.com/proxymodes/proxymodes/harness/netlab"
	"github.com/proxymodes/proxymodes/harness/proc"
)

// StateRoot holds one directory per lab.
const StateRoot = "/run/proxymodes"

// Prefix starts the name of every namespace and host link of a lab.
func Prefix(lab string) string { return "pm-" + lab + "-" }

// StateDir is where a lab keeps its state file, credentials and logs.
func StateDir(lab string) string { return filepath.Join(StateRoot, lab) }

// Check lists everything of the lab that still exists: namespaces, links in
// the host namespace, tagged processes and the state directory.
func Check(lab string) []string {
	var out []string
	p := Prefix(lab)
	ns, err := netlab.ListNS(p)
	if err != nil {
		out = append(out, "cannot list namespaces: "+err.Error())
	}
	for _, n := range ns {
		out = append(out, "network namespace "+n)
	}
	links, err := netlab.ListLinks(netlab.HostNS, p)
	if err != nil {
		out = append(out, "cannot list host links: "+err.Error())
	}
	for _, l := range links {
		out = append(out, "host link "+l)
	}
	for _, pid := range proc.Tagged(agent.LabEnv, lab) {
		if proc.Alive(pid) {
			out = append(out, fmt.Sprintf("process %d (%s)", pid, cmdline(pid)))
		}
	}
	if _, err := os.Stat(StateDir(lab)); err == nil {
		out = append(out, "state directory "+StateDir(lab))
	}
	filesMu.Lock()
	defer filesMu.Unlock()
	for _, list := range fileListers {
		for _, f := range list(lab) {
			out = append(out, "file "+f)
		}
	}
	return out
}

var (
	filesMu     sync.Mutex
	fileListers []func(lab string) []string
)

// RegisterFiles adds a lister of files a lab keeps outside its state
// directory (a UML guest's run directory lives in the cache, which the
// guest mounts), so Check reports them. Packages that make such files
// register at init, which keeps this package free of their imports.
func RegisterFiles(list func(lab string) []string) {
	filesMu.Lock()
	defer filesMu.Unlock()
	fileListers = append(fileListers, list)
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}
