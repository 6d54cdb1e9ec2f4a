//go:build pm_selftest

package fault

import "flag"

// Built says whether this binary can break promises.
const Built = true

var current Fault

// Register adds --selftest-fault to the proxier's flags.
func Register(fs *flag.FlagSet) {
	fs.Func("selftest-fault", "break one promise on purpose, for make selftest (one of: "+joinNames()+")", func(s string) error {
		f, err := Parse(s)
		current = f
		return err
	})
}

// Current is the fault this process runs with, or "".
func Current() Fault { return current }

// Reset clears the fault, for tests that set one with Register.
func Reset() { current = "" }

// Set makes f the current fault and returns Reset, so that a test can
// write t.Cleanup(fault.Set(f)) and leave the package's other tests
// unbroken.
func Set(f Fault) (reset func()) {
	current = f
	return Reset
}
