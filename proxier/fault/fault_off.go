//go:build !pm_selftest

package fault

import "flag"

// Built says whether this binary can break promises: the shipped proxier
// cannot.
const Built = false

// Register adds nothing: only pm_selftest builds have --selftest-fault.
func Register(*flag.FlagSet) {}

// Current is always "" in a shipped build.
func Current() Fault { return "" }
