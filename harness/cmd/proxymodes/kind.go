package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	kindprov "github.com/proxymodes/proxymodes/harness/cluster/kind"
	"github.com/proxymodes/proxymodes/harness/docker"
	"github.com/proxymodes/proxymodes/harness/nodeimage"
)

// kindCmd runs `proxymodes kind image|cleanup`.
func kindCmd(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("missing kind command: image or cleanup")
	}
	switch args[0] {
	case "image":
		fs := flag.NewFlagSet("kind image", flag.ContinueOnError)
		all := fs.Bool("all", false, "also build the base, proxier and echo images and print their tags")
		save := fs.String("save", "", "with --all: write the proxier and echo images into this directory as proxier.tar and echo.tar (`docker load` them elsewhere, e.g. to push them for PROVIDER=existing)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		*all = *all || *save != ""
		if err := nodeimage.Prepare(ctx, os.Stderr); err != nil {
			return err
		}
		d, err := docker.Start(ctx, docker.Options{Logger: stderrLogger{}})
		if err != nil {
			return err
		}
		// Stop runs even after Ctrl-C cancelled ctx: nothing of the
		// daemon may outlive the command.
		defer d.Stop(context.WithoutCancel(ctx))
		tag, err := nodeimage.Ensure(ctx, d, os.Stderr)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, tag)
		if !*all {
			return nil
		}
		for _, f := range []func(context.Context, *docker.Daemon, io.Writer) (string, error){nodeimage.Base, nodeimage.Proxier, nodeimage.Echo} {
			t, err := f(ctx, d, os.Stderr)
			if err != nil {
				return err
			}
			fmt.Fprintln(out, t)
			name, _, _ := strings.Cut(strings.TrimPrefix(t, "proxymodes/"), ":")
			if *save == "" || name == "base" {
				continue
			}
			if err := os.MkdirAll(*save, 0o755); err != nil {
				return err
			}
			dst := filepath.Join(*save, name+".tar")
			if err := d.Run(ctx, os.Stderr, "save", "-o", dst, t); err != nil {
				return fmt.Errorf("saving %s: %w", t, err)
			}
			fmt.Fprintf(os.Stderr, "proxymodes: saved %s to %s\n", t, dst)
		}
		return nil
	case "cleanup":
		// The daemon's containers are the clusters' nodes: removing the
		// daemon's leftovers removes any cluster a killed run left.
		return kindprov.Cleanup(ctx, stderrLogger{})
	}
	return fmt.Errorf("unknown kind command %q: use image or cleanup", args[0])
}
