package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/proxymodes/proxymodes/suites/selftest"
)

// runSelftest serves make selftest: "cases MODE" lists the runs to make,
// "report DIR MODE" judges them into DIR/SELFTEST.md and fails unless
// every fault was caught and the unbroken proxier passed.
func runSelftest(args []string, out io.Writer) error {
	switch {
	case len(args) == 2 && args[0] == "cases":
		cs, err := selftest.Cases(args[1])
		if err != nil {
			return err
		}
		fmt.Fprintln(out, strings.Join(selftest.Runs(cs), "\n"))
		return nil
	case len(args) == 3 && args[0] == "report":
		dir, err := filepath.Abs(args[1])
		if err != nil {
			return err
		}
		res, err := selftest.Evaluate(dir, args[2])
		if err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(dir, "SELFTEST.md"))
		if err != nil {
			return err
		}
		res.WriteMarkdown(io.MultiWriter(f, out))
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(out, "\nwrote %s\n", filepath.Join(dir, "SELFTEST.md"))
		if !res.OK() {
			return errors.New("the self-test failed: a broken proxier was not caught, the unbroken one failed, or a run broke (listed above)")
		}
		return nil
	}
	return errors.New("usage: proxymodes selftest cases MODE | proxymodes selftest report DIR MODE")
}
