// Package suites holds the conformance suites: one go test package per
// behaviour family, built on sigs.k8s.io/e2e-framework, each run against the
// mode named by PROXYMODES_MODE (make conformance MODE=...).
package suites
