// Package logs holds small helpers for the component logs a lab keeps.
package logs

import (
	"os"
	"strings"
)

// Tail returns the last n lines of a file, for error messages that should
// show what a component said before it failed.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
