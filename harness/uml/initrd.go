package uml

import (
	"compress/gzip"
	"os"

	"github.com/cavaliergopher/cpio"
)

// stage1 mounts the host root read-only through hostfs, puts a tmpfs
// overlay on top, binds the kernel's modules and the run directory, and
// switches into that root to run the run's own script. Its parameters
// come from the kernel command line (pm_*=...).
const stage1 = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /lower /newroot /rw
mount -t proc proc /proc
for kv in $(cat /proc/cmdline); do case "$kv" in pm_*=*) eval "${kv%%=*}='${kv#*=}'";; esac; done
fail() { echo "proxymodes stage1: $*"; poweroff -f; }
mount -t hostfs -o ro,/ hostfs /lower || fail "hostfs mount failed"
insmod /lower$pm_moddir/kernel/fs/overlayfs/overlay.ko || fail "overlay module failed"
mount -t tmpfs -o size=${pm_tmpfs:-1g} tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay mount failed"
mkdir -p /newroot/lib/modules/$pm_kver /newroot$pm_run
mount --bind /lower$pm_moddir /newroot/lib/modules/$pm_kver
mount -t hostfs -o $pm_run hostfs /newroot$pm_run || fail "run dir mount failed"
umount /proc
exec switch_root /newroot /bin/sh $pm_run/stage2.sh
`

// writeInitrd builds a gzipped newc archive holding busybox and stage1.
func writeInitrd(path, busybox string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	w := cpio.NewWriter(gz)
	dir := func(name string) error {
		return w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeDir | 0o755})
	}
	file := func(name string, data []byte) error {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | 0o755, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := w.Write(data)
		return err
	}
	for _, step := range []func() error{
		func() error { return dir("bin") },
		func() error { return dir("dev") },
		func() error { return file("bin/busybox", bb) },
		func() error { return file("init", []byte(stage1)) },
		w.Close, gz.Close, f.Close,
	} {
		if err := step(); err != nil {
			return err
		}
	}
	return os.Rename(path+".tmp", path)
}
