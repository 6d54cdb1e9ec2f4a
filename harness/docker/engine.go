package docker

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Engine is one installation's container engine: the daemon, its
// containerd, runc, and the docker CLI that matches the daemon. The
// private daemon runs the engine the machine has, whatever package it came
// from, so that preflight never installs one that conflicts with it
// (Ubuntu's docker.io and containerd conflict with Docker's containerd.io,
// which hosted Ubuntu runners ship).
type Engine struct {
	// Source says where it comes from, for messages.
	Source                         string
	Dockerd, Containerd, Runc, CLI string
}

// Layouts are the installations known by their paths, in order of
// preference.
var Layouts = []Engine{
	{Source: "Debian's docker.io, containerd and runc packages",
		Dockerd: "/usr/sbin/dockerd", Containerd: "/usr/bin/containerd", Runc: "/usr/sbin/runc", CLI: "/usr/bin/docker"},
	{Source: "Docker Engine's docker-ce, docker-ce-cli and containerd.io packages",
		Dockerd: "/usr/bin/dockerd", Containerd: "/usr/bin/containerd", Runc: "/usr/bin/runc", CLI: "/usr/bin/docker"},
}

// FindEngine returns the first complete layout, or else an engine found on
// PATH. The CLI is always taken from the daemon's own installation (its
// directory, or /usr/bin), never from elsewhere on PATH: a newer CLI than
// the daemon (these machines have a Docker 28 CLI in /usr/local/bin) wants
// buildx for `docker build`, which an older daemon cannot serve.
func FindEngine(exists func(string) bool, lookPath func(string) (string, error)) (Engine, bool) {
	for _, e := range Layouts {
		if exists(e.Dockerd) && exists(e.Containerd) && exists(e.Runc) && exists(e.CLI) {
			return e, true
		}
	}
	e := Engine{Source: "PATH"}
	for _, b := range []struct {
		name string
		to   *string
	}{{"dockerd", &e.Dockerd}, {"containerd", &e.Containerd}, {"runc", &e.Runc}} {
		p, err := lookPath(b.name)
		if err != nil {
			return Engine{}, false
		}
		*b.to = p
	}
	for _, cli := range []string{filepath.Join(filepath.Dir(e.Dockerd), "docker"), "/usr/bin/docker"} {
		if exists(cli) {
			e.CLI = cli
			return e, true
		}
	}
	return Engine{}, false
}

// LocalEngine is FindEngine on this machine.
func LocalEngine() (Engine, bool) {
	return FindEngine(func(p string) bool { _, err := os.Stat(p); return err == nil }, exec.LookPath)
}
