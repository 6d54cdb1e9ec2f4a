package nodeimage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMirrorFromAptSources(t *testing.T) {
	dir := t.TempDir()
	deb822 := filepath.Join(dir, "debian.sources")
	os.WriteFile(deb822, []byte(`Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
# a comment: with a colon
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
`), 0o644)
	if got := mirrorFromDeb822(deb822); got != "http://mirror.example/debian" {
		t.Errorf("deb822: got %q", got)
	}
	list := filepath.Join(dir, "sources.list")
	os.WriteFile(list, []byte("deb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n"), 0o644)
	if got := mirrorFromList(list); got != "http://list.example/debian" {
		t.Errorf("list: got %q", got)
	}
	os.WriteFile(list, []byte("deb http://old.example/debian bullseye main\n"), 0o644)
	if got := mirrorFromList(list); got != "" {
		t.Errorf("another release's mirror was taken: %q", got)
	}
}

func TestRootfsKeyFollowsPackages(t *testing.T) {
	a := rootfsKey("node", []string{"a", "b"})
	if a != rootfsKey("node", []string{"a", "b"}) {
		t.Fatal("key is not stable")
	}
	if a == rootfsKey("node", []string{"a", "c"}) {
		t.Fatal("key ignores the package list")
	}
}

func TestWithLibsCarriesTheLoader(t *testing.T) {
	files, err := withLibs("/bin/ls", "/usr/local/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	var loader, libc bool
	for _, f := range files {
		loader = loader || strings.Contains(f.Path, "ld-linux")
		libc = libc || strings.HasSuffix(f.Path, "/libc.so.6")
	}
	if !loader || !libc {
		t.Fatalf("a dynamic binary's image lacks its loader or libc: %+v", files)
	}
}

// The node's containerd must name the pause image the node preloads, and
// keep the setting that lets pods start on these VMs.
func TestContainerdConfigMatchesPreloadedImages(t *testing.T) {
	b, err := nodeFiles.ReadFile("files/etc/containerd/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`sandbox_image = "` + registry + `/pause:` + pauseTag + `"`, "restrict_oom_score_adj = true", "SystemdCgroup = true"} {
		if !strings.Contains(s, want) {
			t.Errorf("containerd config lacks %s", want)
		}
	}
	for _, p := range []string{"files/usr/local/bin/entrypoint", "files/etc/systemd/system/kubelet.service", "files/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", "files/kind/manifests/default-storage.yaml"} {
		if _, err := nodeFiles.ReadFile(p); err != nil {
			t.Errorf("node file %s: %v", p, err)
		}
	}
}
