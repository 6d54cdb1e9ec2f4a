package docker

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// layout is a fake file system: the paths that exist.
type layout map[string]bool

func (l layout) exists(p string) bool { return l[p] }

// lookPath searches a fake PATH of /usr/local/bin, /usr/sbin, /usr/bin, /opt/engine/bin.
func (l layout) lookPath(name string) (string, error) {
	for _, dir := range []string{"/usr/local/bin", "/usr/sbin", "/usr/bin", "/opt/engine/bin"} {
		if p := filepath.Join(dir, name); l[p] {
			return p, nil
		}
	}
	return "", errors.New("not found")
}

func fsWith(ps ...string) layout {
	l := layout{}
	for _, p := range ps {
		l[p] = true
	}
	return l
}

func TestFindEngine(t *testing.T) {
	debian := []string{"/usr/sbin/dockerd", "/usr/bin/containerd", "/usr/sbin/runc", "/usr/bin/docker"}
	dockerCE := []string{"/usr/bin/dockerd", "/usr/bin/containerd", "/usr/bin/runc", "/usr/bin/docker"}
	for _, tc := range []struct {
		name   string
		fs     layout
		want   Engine
		wantOK bool
	}{
		{"Debian's docker.io", fsWith(debian...), Layouts[0], true},
		// This machine type: Debian's engine plus a Docker 28 CLI first on PATH.
		{"Debian's docker.io beside a newer CLI on PATH", fsWith(append(debian, "/usr/local/bin/docker")...), Layouts[0], true},
		{"Docker CE on an Ubuntu runner", fsWith(dockerCE...), Layouts[1], true},
		{"an engine elsewhere on PATH, with its own CLI", fsWith("/opt/engine/bin/dockerd", "/opt/engine/bin/containerd", "/opt/engine/bin/runc", "/opt/engine/bin/docker", "/usr/local/bin/docker"),
			Engine{Source: "PATH", Dockerd: "/opt/engine/bin/dockerd", Containerd: "/opt/engine/bin/containerd", Runc: "/opt/engine/bin/runc", CLI: "/opt/engine/bin/docker"}, true},
		{"no engine", fsWith("/usr/local/bin/docker"), Engine{}, false},
		{"a daemon without runc", fsWith("/usr/sbin/dockerd", "/usr/bin/containerd", "/usr/bin/docker"), Engine{}, false},
	} {
		got, ok := FindEngine(tc.fs.exists, tc.fs.lookPath)
		if ok != tc.wantOK || got != tc.want {
			t.Errorf("%s: got %+v (%v), want %+v (%v)", tc.name, got, ok, tc.want, tc.wantOK)
		}
	}
}

// The runc wrapper runs the engine's own runc.
func TestRuncWrapperUsesTheEngine(t *testing.T) {
	for _, e := range Layouts {
		w := runcWrapperFor(e)
		if !strings.HasSuffix(w, "\nexec "+e.Runc+" \"$@\"\n") || strings.Contains(w, "%!") {
			t.Errorf("%s: the wrapper does not end by running %s:\n%s", e.Source, e.Runc, w)
		}
	}
}
