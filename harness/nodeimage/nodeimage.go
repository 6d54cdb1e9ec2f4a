// Package nodeimage builds, without any registry, the kind node image for
// the pinned Kubernetes and the images kubeadm deploys, and the base,
// proxier and echo images the kind provider loads into its nodes. Every
// layer is cached: root file systems and saved images under CacheDir(),
// images in the private Docker daemon's persistent data root. A cold build
// takes 20-30 minutes on two cores, once per machine; a warm Ensure takes
// about a second.
//
// The recipe follows sigs.k8s.io/kind v0.33's images/base and
// pkg/build/nodeimage: a systemd root file system with containerd and
// kind's /kind files, Kubernetes' binaries in /usr/bin, and kubeadm's
// images preloaded into containerd's k8s.io namespace.
package nodeimage

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/proxymodes/proxymodes/harness/binaries"
	"github.com/proxymodes/proxymodes/harness/docker"
)

// KubernetesVersion is the pinned version the node image runs.
const KubernetesVersion = "v1.37.2"

// Repository of the node image; tags are <version>-<hash of the inputs>.
const Repository = "proxymodes/kind-node"

// recipeVersion changes whenever this package builds something
// differently, so that caches keyed by it rebuild.
const recipeVersion = "1"

// kubeadm v1.37.2's images (cmd/kubeadm/app/constants: DefaultEtcdVersion,
// CoreDNSVersion, PauseVersion). The build checks them against
// `kubeadm config images list` in the node.
const (
	registry   = "registry.k8s.io"
	etcdTag    = "3.7.0-0"
	corednsTag = "v1.14.6"
	pauseTag   = "3.10.2"
	// crictlVersion is clusters/crictl's cri-tools, for `crictl --version`.
	crictlVersion = "v1.37.0"
	k8sBinaries   = "kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd"
)

//go:embed all:files
var nodeFiles embed.FS

// CacheDir holds root file system tars, saved images and built helper
// binaries.
func CacheDir() string { return filepath.Join(binaries.CacheDir(), "kind") }

// inputs are everything the node image is made of, resolved (and built
// when missing) so their identity can key the image's tag.
type inputs struct {
	k8sDir  string // clusters/k8s/build.sh's output: its name carries the source hash
	root    string // module root
	coredns string // clusters/coredns source hash
	crictl  string // clusters/crictl source hash
	pauseC  string // path of kubernetes' pause.c
	files   string // hash of the embedded node files
	recipe  string // hash of this package's and harness/docker's sources
}

func resolve(progress io.Writer) (*inputs, error) {
	root, err := binaries.ModuleRoot()
	if err != nil {
		return nil, err
	}
	in := &inputs{root: root}
	if in.k8sDir, err = binaries.KubernetesDir(progress, strings.Fields(k8sBinaries)...); err != nil {
		return nil, err
	}
	if in.coredns, err = hashFiles(filepath.Join(root, "clusters", "coredns"), "go.mod", "go.sum", "main.go"); err != nil {
		return nil, fmt.Errorf("clusters/coredns: %w", err)
	}
	if in.crictl, err = hashFiles(filepath.Join(root, "clusters", "crictl"), "go.mod", "go.sum"); err != nil {
		return nil, fmt.Errorf("clusters/crictl: %w", err)
	}
	if in.pauseC, err = pauseSource(root); err != nil {
		return nil, err
	}
	h := sha256.New()
	fs.WalkDir(nodeFiles, "files", func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			b, _ := nodeFiles.ReadFile(p)
			fmt.Fprintf(h, "%s %x\n", p, sha256.Sum256(b))
		}
		return nil
	})
	in.files = hex.EncodeToString(h.Sum(nil))
	// The recipe is code (image names, setup script, tar writing): any
	// change to it must make a new tag rather than reuse a stale image.
	rh := sha256.New()
	for _, pkg := range []string{"harness/nodeimage", "harness/docker"} {
		srcs, _ := filepath.Glob(filepath.Join(root, pkg, "*.go"))
		sort.Strings(srcs)
		for _, f := range srcs {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			fmt.Fprintln(rh, filepath.Base(f))
			if err := hashFile(rh, f); err != nil {
				return nil, err
			}
		}
	}
	in.recipe = hex.EncodeToString(rh.Sum(nil))
	return in, nil
}

func (in *inputs) tag() string {
	pc, _ := os.ReadFile(in.pauseC)
	h := sha256.Sum256([]byte(strings.Join([]string{recipeVersion, filepath.Base(in.k8sDir), in.coredns, in.crictl,
		fmt.Sprintf("%x", sha256.Sum256(pc)), in.files, in.recipe, rootfsKey("node", nodePackages), rootfsKey("base", basePackages)}, "\n")))
	return Repository + ":" + KubernetesVersion + "-" + hex.EncodeToString(h[:])[:12]
}

// Prepare builds every part of the node image that needs no Docker
// daemon: the Kubernetes binaries, CoreDNS, crictl, pause and both root
// file systems (cached; about a second when warm). Ensure does the same
// itself; calling Prepare before docker.Start keeps the daemon, of which a
// machine runs one at a time, free during the long part of a cold build.
func Prepare(ctx context.Context, progress io.Writer) error {
	if progress == nil {
		progress = io.Discard
	}
	in, err := resolve(progress)
	if err != nil {
		return err
	}
	b := &builder{in: in, progress: progress}
	for _, build := range []func(context.Context) (string, error){b.coredns, b.crictl, b.pause} {
		if _, err := build(ctx); err != nil {
			return err
		}
	}
	if _, err := ensureRootfs(ctx, "base", basePackages, progress); err != nil {
		return err
	}
	_, err = ensureRootfs(ctx, "node", nodePackages, progress)
	return err
}

// Ensure returns the node image's tag, building the image in d when it is
// missing. progress gets a line per step.
func Ensure(ctx context.Context, d *docker.Daemon, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	in, err := resolve(progress)
	if err != nil {
		return "", err
	}
	tag := in.tag()
	if d.HasImage(ctx, tag) {
		return tag, nil
	}
	fmt.Fprintf(progress, "proxymodes: building kind node image %s, cold ~25 min (once per machine)\n", tag)
	start := time.Now()
	b := &builder{d: d, in: in, progress: progress}
	if err := b.node(ctx, tag); err != nil {
		return "", fmt.Errorf("building kind node image %s: %w", tag, err)
	}
	fmt.Fprintf(progress, "proxymodes: built kind node image %s in %s\n", tag, time.Since(start).Round(time.Second))
	b.prune(ctx, tag)
	return tag, nil
}

// keepNodeImages is how many node images stay in the daemon: a node image
// is over 1 GB, but branches that differ in the recipe would otherwise
// rebuild (about 30 s each) every time they alternate.
const keepNodeImages = 3

// prune drops what the build just replaced: older node images beyond
// keepNodeImages, intermediate images, and cache files this build did not
// use. It runs only after a build, never on the warm path.
func (b *builder) prune(ctx context.Context, tag string) {
	out, err := b.d.Output(ctx, "images", Repository, "--format", "{{.Repository}}:{{.Tag}}")
	if err == nil {
		// docker lists the newest first.
		kept := 0
		for _, ref := range strings.Fields(out) {
			if ref == tag || kept < keepNodeImages-1 {
				if ref != tag {
					kept++
				}
				continue
			}
			b.d.Output(ctx, "rmi", ref)
		}
	}
	out, err = b.d.Output(ctx, "images", "proxymodes/kind-node-rootfs", "--format", "{{.Repository}}:{{.Tag}}")
	if err == nil {
		for _, ref := range strings.Fields(out) {
			if !b.used[ref] {
				b.d.Output(ctx, "rmi", ref)
			}
		}
	}
	b.d.Output(ctx, "image", "prune", "-f")
	for _, dir := range []string{"images", "bin"} {
		files, _ := filepath.Glob(filepath.Join(CacheDir(), dir, "*"))
		for _, f := range files {
			if !b.used[f] {
				os.Remove(f)
			}
		}
	}
}

type builder struct {
	d        *docker.Daemon
	in       *inputs
	progress io.Writer
	used     map[string]bool // cache files and images this build used
}

func (b *builder) use(s string) string {
	if b.used == nil {
		b.used = map[string]bool{}
	}
	b.used[s] = true
	return s
}

func (b *builder) step(what string, fn func() error) error {
	start := time.Now()
	if err := fn(); err != nil {
		return err
	}
	if dt := time.Since(start); dt > 2*time.Second {
		fmt.Fprintf(b.progress, "proxymodes: %s took %s\n", what, dt.Round(time.Second))
	}
	return nil
}

// image is one image kubeadm deploys, saved to a tar under the cache.
type image struct {
	ref     string
	base    string // root file system tar under it, "" for none
	files   []docker.File
	changes []string
}

func (b *builder) images(ctx context.Context) ([]image, error) {
	k := func(name string) string { return filepath.Join(b.in.k8sDir, name) }
	var out []image
	for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		files, err := withLibs(k(c), "/usr/local/bin/"+c)
		if err != nil {
			return nil, err
		}
		out = append(out, image{ref: registry + "/" + c + ":" + KubernetesVersion, files: files,
			changes: []string{"ENV PATH=/usr/local/bin:/usr/bin:/bin"}})
	}
	etcd, err := withLibs(k("etcd"), "/usr/local/bin/etcd")
	if err != nil {
		return nil, err
	}
	out = append(out, image{ref: registry + "/etcd:" + etcdTag, files: etcd,
		changes: []string{"ENV PATH=/usr/local/bin:/usr/bin:/bin"}})
	// kube-proxy programs rules with the tools, so it gets the base root
	// file system, as upstream's image has them.
	baseTar, err := ensureRootfs(ctx, "base", basePackages, b.progress)
	if err != nil {
		return nil, err
	}
	out = append(out, image{ref: registry + "/kube-proxy:" + KubernetesVersion, base: baseTar,
		files:   []docker.File{{Path: "/usr/local/bin/kube-proxy", Src: k("kube-proxy"), Mode: 0o755}},
		changes: []string{"ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}})
	coredns, err := b.coredns(ctx)
	if err != nil {
		return nil, err
	}
	out = append(out, image{ref: registry + "/coredns/coredns:" + corednsTag,
		files:   append(minimalEtc(), docker.File{Path: "/coredns", Src: coredns, Mode: 0o755}),
		changes: []string{`ENTRYPOINT ["/coredns"]`}})
	pause, err := b.pause(ctx)
	if err != nil {
		return nil, err
	}
	out = append(out, image{ref: registry + "/pause:" + pauseTag,
		files:   []docker.File{{Path: "/pause", Src: pause, Mode: 0o755}},
		changes: []string{`ENTRYPOINT ["/pause"]`, "USER 65535:65535"}})
	return out, nil
}

// save makes im and saves it to a tar keyed by its contents, or reuses
// that tar.
func (b *builder) save(ctx context.Context, im image) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, recipeVersion, im.ref, im.base, im.changes)
	for _, f := range im.files {
		fmt.Fprintln(h, f.Path, f.Mode, f.Link, f.Data)
		if f.Src != "" {
			if err := hashFile(h, f.Src); err != nil {
				return "", err
			}
		}
	}
	name := strings.NewReplacer("/", "_", ":", "_").Replace(strings.TrimPrefix(im.ref, registry+"/"))
	out := filepath.Join(CacheDir(), "images", name+"-"+hex.EncodeToString(h.Sum(nil))[:12]+".tar")
	b.use(out)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	err := b.step("image "+im.ref, func() error {
		if err := b.d.ImportOnto(ctx, im.ref, im.base, im.files, im.changes...); err != nil {
			return err
		}
		// The saved tar is the cache; the daemon's copy is not needed.
		defer b.d.Output(context.WithoutCancel(ctx), "rmi", im.ref)
		tmp := out + ".tmp"
		if err := b.d.Run(ctx, nil, "save", "-o", tmp, im.ref); err != nil {
			os.Remove(tmp)
			return err
		}
		return os.Rename(tmp, out)
	})
	return out, err
}

// node assembles the node image: the node root file system, kind's files
// and the Kubernetes binaries, then kubeadm's images imported into the
// node's containerd, committed as tag.
func (b *builder) node(ctx context.Context, tag string) error {
	ims, err := b.images(ctx)
	if err != nil {
		return err
	}
	var tars []string
	for _, im := range ims {
		t, err := b.save(ctx, im)
		if err != nil {
			return err
		}
		tars = append(tars, t)
	}
	rootfs, err := ensureRootfs(ctx, "node", nodePackages, b.progress)
	if err != nil {
		return err
	}
	rootImage := b.use("proxymodes/kind-node-rootfs:" + strings.TrimSuffix(filepath.Base(rootfs), ".tar"))
	if !b.d.HasImage(ctx, rootImage) {
		if err := b.step("import "+rootImage, func() error { return b.d.ImportOnto(ctx, rootImage, rootfs, nil) }); err != nil {
			return err
		}
	}
	name := fmt.Sprintf("pm-kind-build-%d", os.Getpid())
	b.d.Output(ctx, "rm", "-f", "-v", name)
	// kind's builder runs the same way: no network, seccomp off so
	// containerd can start inside.
	if _, err := b.d.Output(ctx, "run", "-d", "--name", name, "--network", "none",
		"--security-opt", "seccomp=unconfined", "--entrypoint", "sleep", rootImage, "infinity"); err != nil {
		return err
	}
	defer b.d.Output(context.WithoutCancel(ctx), "rm", "-f", "-v", name)

	crictl, err := b.crictl(ctx)
	if err != nil {
		return err
	}
	files, err := b.nodeFiles(crictl)
	if err != nil {
		return err
	}
	if err := b.step("copy kind files and Kubernetes binaries", func() error { return b.d.CopyTo(ctx, name, files) }); err != nil {
		return err
	}
	if err := b.exec(ctx, name, nil, setupScript); err != nil {
		return fmt.Errorf("setting the node up: %w", err)
	}
	if err := b.step("preload images into the node's containerd", func() error { return b.preload(ctx, name, ims, tars) }); err != nil {
		return err
	}
	return b.step("commit "+tag, func() error {
		committed := tag + "-committed"
		if _, err := b.d.Output(ctx, "commit",
			"--change", `ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]`,
			"--change", "ENV container=docker",
			name, committed); err != nil {
			return err
		}
		defer b.d.Output(context.WithoutCancel(ctx), "rmi", committed)
		// docker commit cannot set STOPSIGNAL; systemd stops cleanly only
		// on SIGRTMIN+3. A one-line build adds it without a new layer.
		cmd := b.d.Command(ctx, "build", "-t", tag, "-")
		cmd.Stdin = strings.NewReader("FROM " + committed + "\nSTOPSIGNAL SIGRTMIN+3\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("docker build (STOPSIGNAL): %v: %s", err, out)
		}
		return nil
	})
}

// setupScript is kind's base image Dockerfile RUN steps, adapted to a
// debootstrap tree with Debian's containerd and CNI plugins.
const setupScript = `set -eu
chmod 755 /kind /kind/bin
find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete
rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
  /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
  /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> /etc/systemd/journald.conf
ln -sf /usr/lib/systemd/systemd /sbin/init
systemctl enable kubelet.service containerd.service undo-mount-hacks.service
systemctl mask systemd-binfmt.service
mkdir -p /etc/kubernetes/manifests /opt/cni /etc/cni/net.d
# Debian installs the CNI plugins where containerd does not look.
ln -sfn /usr/lib/cni /opt/cni/bin
ctr oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
test "$(kubeadm version -o short)" = "$KUBERNETES_VERSION"
crictl --version >/dev/null
`

func (b *builder) exec(ctx context.Context, name string, stdin io.Reader, script string) error {
	cmd := b.d.Command(ctx, "exec", "-i", "-e", "KUBERNETES_VERSION="+KubernetesVersion, name, "bash", "-c", script)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (b *builder) preload(ctx context.Context, name string, ims []image, tars []string) error {
	if _, err := b.d.Output(ctx, "exec", "-d", name, "bash", "-c", "containerd >/var/log/containerd-build.log 2>&1"); err != nil {
		return err
	}
	if err := b.exec(ctx, name, nil, `for i in $(seq 100); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.1; done; cat /var/log/containerd-build.log; exit 1`); err != nil {
		return fmt.Errorf("containerd in the build container: %w", err)
	}
	for i, t := range tars {
		f, err := os.Open(t)
		if err != nil {
			return err
		}
		err = b.exec(ctx, name, f, `ctr --namespace=k8s.io images import --all-platforms --no-unpack --digests - >/dev/null && `+
			`ctr --namespace=k8s.io images label `+ims[i].ref+` io.cri-containerd.pinned=pinned >/dev/null`)
		f.Close()
		if err != nil {
			return fmt.Errorf("importing %s: %w", ims[i].ref, err)
		}
	}
	// The names must be exactly kubeadm's, or the kubelet would try to
	// pull them from a registry that does not answer.
	check := `want=$(kubeadm config images list --kubernetes-version "$KUBERNETES_VERSION" 2>/dev/null)
have=$(ctr --namespace=k8s.io images list -q)
for w in $want; do echo "$have" | grep -qx "$w" || { echo "kubeadm wants $w, the node has: $have"; exit 1; }; done
pkill -x containerd; for i in $(seq 100); do pgrep -x containerd >/dev/null || exit 0; sleep 0.1; done; exit 1`
	return b.exec(ctx, name, nil, check)
}

// nodeFiles are kind's files, kind's version file and the node's
// Kubernetes binaries, where kind's units expect them.
func (b *builder) nodeFiles(crictl string) ([]docker.File, error) {
	var out []docker.File
	err := fs.WalkDir(nodeFiles, "files", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || p == "files/README.txt" {
			return err
		}
		data, err := nodeFiles.ReadFile(p)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(p, "files/kind/bin/") || strings.HasPrefix(p, "files/usr/local/bin/") {
			mode = 0o755
		}
		out = append(out, docker.File{Path: strings.TrimPrefix(p, "files"), Data: data, Mode: mode})
		return nil
	})
	if err != nil {
		return nil, err
	}
	out = append(out, docker.File{Path: "/kind/version", Data: []byte(KubernetesVersion), Mode: 0o644},
		docker.File{Path: "/usr/local/bin/crictl", Src: crictl, Mode: 0o755})
	for _, bin := range []string{"kubeadm", "kubelet", "kubectl"} {
		out = append(out, docker.File{Path: "/usr/bin/" + bin, Src: filepath.Join(b.in.k8sDir, bin), Mode: 0o755})
	}
	return out, nil
}

// coredns builds clusters/coredns statically (no libc in its image).
func (b *builder) coredns(ctx context.Context) (string, error) {
	return b.goTool(ctx, "coredns", b.in.coredns, ".", "")
}

// crictl builds cri-tools' crictl, which kind runs in nodes (export logs,
// image checks) and Debian does not package.
func (b *builder) crictl(ctx context.Context) (string, error) {
	return b.goTool(ctx, "crictl", b.in.crictl, "sigs.k8s.io/cri-tools/cmd/crictl",
		"-X sigs.k8s.io/cri-tools/pkg/version.Version="+crictlVersion)
}

// goTool builds pkg in the nested module clusters/<name> statically, once
// per source hash.
func (b *builder) goTool(ctx context.Context, name, hash, pkg, ldflags string) (string, error) {
	out := b.use(filepath.Join(CacheDir(), "bin", name+"-"+hash[:12]))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	fmt.Fprintf(b.progress, "proxymodes: building %s from clusters/%s (cold: a few minutes)\n", name, name)
	err := b.step(name+" build", func() error {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", strings.TrimSpace("-s -w "+ldflags), "-o", out+".tmp", pkg)
		cmd.Dir = filepath.Join(b.in.root, "clusters", name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build in clusters/%s: %v: %s", name, err, o)
		}
		return os.Rename(out+".tmp", out)
	})
	return out, err
}

// pause compiles kubernetes' own pause.c from the pinned module, static.
func (b *builder) pause(ctx context.Context) (string, error) {
	src, err := os.ReadFile(b.in.pauseC)
	if err != nil {
		return "", err
	}
	out := b.use(filepath.Join(CacheDir(), "bin", fmt.Sprintf("pause-%x", sha256.Sum256(src))[:18]))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	cmd := exec.CommandContext(ctx, "gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v"+pauseTag+"-proxymodes", "-o", out+".tmp", b.in.pauseC)
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc -static pause.c: %v: %s (needs gcc and libc6-dev: `apt-get install gcc libc6-dev`)", err, o)
	}
	return out, os.Rename(out+".tmp", out)
}

// pauseSource finds build/pause/linux/pause.c in the pinned
// k8s.io/kubernetes module, which clusters/k8s has downloaded.
func pauseSource(root string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes")
	cmd.Dir = filepath.Join(root, "clusters", "k8s")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("finding the k8s.io/kubernetes module: %w (run `make k8s` first)", err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "build", "pause", "linux", "pause.c")
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// withLibs is a binary at dst plus the shared libraries it loads (the
// Kubernetes binaries are linked against the host's glibc, the same
// bookworm glibc the node has) and a minimal /etc.
func withLibs(src, dst string) ([]docker.File, error) {
	out := append(minimalEtc(), docker.File{Path: dst, Src: src, Mode: 0o755})
	b, err := exec.Command("ldd", src).Output()
	if err != nil {
		if strings.Contains(string(b), "not a dynamic executable") {
			return out, nil
		}
		// ldd exits 1 for static binaries.
		if _, ok := err.(*exec.ExitError); ok {
			return out, nil
		}
		return nil, err
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		var lib string
		if _, after, ok := strings.Cut(line, "=> "); ok {
			lib = strings.Fields(after)[0]
		} else if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "/") {
			lib = f[0]
		}
		if lib == "" || seen[lib] {
			continue
		}
		seen[lib] = true
		out = append(out, docker.File{Path: lib, Src: lib, Mode: 0o755})
	}
	return out, nil
}

// minimalEtc is what distroless images have that programs look up.
func minimalEtc() []docker.File {
	return []docker.File{
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"), Mode: 0o644},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\n"), Mode: 0o644},
		{Path: "/etc/nsswitch.conf", Data: []byte("hosts: files dns\n"), Mode: 0o644},
		{Path: "/tmp", Mode: 0o1777 | os.ModeSticky},
	}
}

func hashFiles(dir string, names ...string) (string, error) {
	h := sha256.New()
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintln(h, n)
		if err := hashFile(h, filepath.Join(dir, n)); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
