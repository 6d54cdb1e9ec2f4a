// Package ci checks the repository's CI definitions. `go test ./...` skips
// directories whose names start with a dot, so the checks of
// .github/workflows live here and run in `make test`. Package dryrun and
// cmd/nightly-dry-run run the nightly workflow's jobs on this machine
// (make nightly-dry-run).
package ci
