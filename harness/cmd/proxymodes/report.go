package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/proxymodes/proxymodes/bench/compare"
	"github.com/proxymodes/proxymodes/bench/result"
)

const reportUsage = `usage:
  proxymodes report DIR       render DIR's README.md and plots again from its results.json
  proxymodes report OLD NEW   compare two result sets like benchstat (each a result set directory or its bench.txt)
`

// runReport renders one result set again, so a set written before the
// summary or the plots changed gets the new ones, or compares two sets.
// It returns an error rather than an exit code, like the other commands of
// run.
func runReport(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), reportUsage) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch fs.NArg() {
	case 1:
		dir := fs.Arg(0)
		// Accept a file of the set too (results.json, bench.txt, README.md).
		if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
			dir = filepath.Dir(dir)
		}
		set, err := result.Load(dir)
		if err != nil {
			return err
		}
		files, err := result.Render(dir, set)
		if err != nil {
			return err
		}
		for _, f := range files {
			fmt.Fprintf(out, "wrote %s\n", f)
		}
		return nil
	case 2:
		return compare.Compare(out, fs.Arg(0), fs.Arg(1))
	}
	fmt.Fprint(os.Stderr, reportUsage)
	return errors.New("report takes DIR (render one result set again) or OLD NEW (compare two), e.g. proxymodes report results/2026-11-26-default")
}
