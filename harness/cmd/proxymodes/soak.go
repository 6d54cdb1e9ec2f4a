package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/proxymodes/proxymodes/suites/soak"
)

// runSoak tallies a soak directory (make soak fills it with run-NN
// results) into SOAK.md there and prints it. It fails when any assessment
// failed in any run or any run broke, so the make target fails too.
func runSoak(args []string, out io.Writer) error {
	if len(args) != 1 {
		return errors.New("soak takes the soak directory that make soak wrote, e.g. proxymodes soak /tmp/proxymodes-soaks/20261202-180000-ipvs-reference-local")
	}
	dir, err := filepath.Abs(args[0])
	if err != nil {
		return err
	}
	t, err := soak.Load(dir)
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "SOAK.md"))
	if err != nil {
		return err
	}
	t.WriteMarkdown(io.MultiWriter(f, out), "Soak: "+filepath.Base(dir))
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nwrote %s\n", filepath.Join(dir, "SOAK.md"))
	if n := t.Failed(); n > 0 {
		return fmt.Errorf("%d failures in %d runs (listed above)", n, t.Runs)
	}
	return nil
}
