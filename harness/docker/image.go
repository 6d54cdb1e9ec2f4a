package docker

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// File is one entry of an image made with Import: a copy of a host file
// (Src), literal Data, a symlink (Link) or, with none of them, a directory.
type File struct {
	Path string // absolute path inside the image
	Mode os.FileMode
	Src  string
	Data []byte
	Link string
}

// Import makes image ref from files with `docker import`, applying
// Dockerfile-style changes such as `ENTRYPOINT ["/pause"]`. No registry and
// no base image are needed, which is the point.
func (d *Daemon) Import(ctx context.Context, ref string, files []File, changes ...string) error {
	return d.ImportOnto(ctx, ref, "", files, changes...)
}

// ImportOnto is Import with the entries of the tar file base (a root file
// system, "" for none) first, so files can be added to it in one layer.
func (d *Daemon) ImportOnto(ctx context.Context, ref, base string, files []File, changes ...string) error {
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	args = append(args, "-", ref)
	return d.streamTar(ctx, "import "+ref, base, files, args...)
}

// streamTar runs the docker CLI with a tar of base and files on its stdin.
func (d *Daemon) streamTar(ctx context.Context, what, base string, files []File, args ...string) error {
	cmd := d.Command(ctx, args...)
	// An OS pipe, not an io.Pipe: if docker exits early, writes fail
	// instead of blocking forever.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		return err
	}
	werr := writeTar(stdin, base, files)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("docker %s: %v: %s", what, err, strings.TrimSpace(errOut.String()))
	}
	if werr != nil {
		return fmt.Errorf("docker %s: writing the archive: %w", what, werr)
	}
	return nil
}

// CopyTo writes files into a container's file system (`docker cp -`).
// Never name a path under /bin, /lib or /sbin: on a merged-/usr root those
// are symlinks, which docker replaces with the archive's directories.
func (d *Daemon) CopyTo(ctx context.Context, container string, files []File) error {
	return d.streamTar(ctx, "cp into "+container, "", files, "cp", "-", container+":/")
}

func writeTar(w io.Writer, base string, files []File) error {
	tw := tar.NewWriter(w)
	if base != "" {
		if err := copyTar(tw, base); err != nil {
			return err
		}
	}
	now := time.Unix(0, 0)
	dirs := map[string]bool{"/": true}
	var mkdirs func(p string) error
	mkdirs = func(p string) error {
		if dirs[p] {
			return nil
		}
		if err := mkdirs(path.Dir(p)); err != nil {
			return err
		}
		dirs[p] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: 0o755, ModTime: now})
	}
	if base != "" {
		// The base holds every parent directory already; a second entry
		// would reset its mode.
		for _, f := range files {
			for p := path.Dir(path.Clean("/" + f.Path)); p != "/"; p = path.Dir(p) {
				dirs[p] = true
			}
		}
	}
	sorted := append([]File(nil), files...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		p := path.Clean("/" + f.Path)
		if err := mkdirs(path.Dir(p)); err != nil {
			return err
		}
		name := strings.TrimPrefix(p, "/")
		mode := int64(f.Mode.Perm())
		if f.Mode&os.ModeSticky != 0 {
			mode |= 0o1000
		}
		switch {
		case f.Link != "":
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: f.Link, Mode: 0o777, ModTime: now}); err != nil {
				return err
			}
		case f.Src != "":
			if err := copyFile(tw, name, f.Src, mode, now); err != nil {
				return err
			}
		case f.Data != nil:
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(f.Data)), Mode: mode, ModTime: now}); err != nil {
				return err
			}
			if _, err := tw.Write(f.Data); err != nil {
				return err
			}
		default:
			if dirs[p] {
				continue
			}
			dirs[p] = true
			if mode == 0 {
				mode = 0o755
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: now}); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

func copyFile(tw *tar.Writer, name, src string, mode int64, now time.Time) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if mode == 0 {
		mode = int64(st.Mode().Perm())
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: st.Size(), Mode: mode, ModTime: now}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

func copyTar(tw *tar.Writer, base string) error {
	f, err := os.Open(base)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", base, err)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}
