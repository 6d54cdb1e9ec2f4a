// Package bench holds the load benchmarks (1k .. 30k Services). They print
// Go benchmark lines, so `benchstat -col /mode` compares modes.
package bench
