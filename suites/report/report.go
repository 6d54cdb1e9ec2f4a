// Package report collects what a conformance run measured, feature by
// feature and assessment by assessment, and renders it as a summary table,
// JSON and JUnit XML. It holds no test logic.
package report

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Status of an assessment or feature.
type Status string

const (
	Pass   Status = "PASS"
	Fail   Status = "FAIL"
	Skip   Status = "SKIP"
	NotRun Status = "NOT RUN"
)

// Assessment is one checked behaviour with its evidence.
type Assessment struct {
	Name     string        `json:"name"`
	Status   Status        `json:"status"`
	Duration time.Duration `json:"durationNs"`
	// Evidence lists what was measured (distributions, statistics,
	// p-values, failure fractions), in the order it was recorded.
	Evidence []string `json:"evidence,omitempty"`
	// Failures are the messages of failed checks; Reason says why it was
	// skipped or not run.
	Failures []string `json:"failures,omitempty"`
	Reason   string   `json:"reason,omitempty"`
}

// Feature is one labelled behaviour.
type Feature struct {
	Name        string        `json:"name"`
	Label       string        `json:"label"`
	Description string        `json:"description,omitempty"`
	Assessments []*Assessment `json:"assessments"`
}

// Status is FAIL if any assessment failed, PASS if any passed, else SKIP.
func (f *Feature) Status() Status {
	st := Skip
	for _, a := range f.Assessments {
		switch a.Status {
		case Fail:
			return Fail
		case Pass:
			st = Pass
		}
	}
	return st
}

// Run is a whole conformance run.
type Run struct {
	mu sync.Mutex

	Suite    string            `json:"suite"`
	Settings map[string]string `json:"settings"`
	Promise  string            `json:"promise"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Features []*Feature        `json:"features"`
	// Errors are run-level problems: setup failures, teardown failures and
	// leftovers found after the lab went down.
	Errors   []string `json:"errors,omitempty"`
	ExitCode int      `json:"exitCode"`
}

// New starts a run record.
func New(suite string, settings map[string]string, promise string) *Run {
	return &Run{Suite: suite, Settings: settings, Promise: promise, Started: time.Now()}
}

// Feature returns the record of a feature, creating it on first use.
func (r *Run) Feature(name, label, description string) *Feature {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.Features {
		if f.Name == name {
			return f
		}
	}
	f := &Feature{Name: name, Label: label, Description: description}
	r.Features = append(r.Features, f)
	return f
}

// Add appends an assessment record to a feature.
func (r *Run) Add(f *Feature, a *Assessment) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f.Assessments = append(f.Assessments, a)
}

// Errorf records a run-level error.
func (r *Run) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
}

// Failed reports whether anything failed.
func (r *Run) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.Errors) > 0 {
		return true
	}
	for _, f := range r.Features {
		if f.Status() == Fail {
			return true
		}
	}
	return false
}

// Counts returns how many assessments passed, failed and were skipped or
// not run.
func (r *Run) Counts() (pass, fail, skip int) {
	for _, f := range r.Features {
		for _, a := range f.Assessments {
			switch a.Status {
			case Pass:
				pass++
			case Fail:
				fail++
			default:
				skip++
			}
		}
	}
	return
}

// WriteTable prints the feature x result summary with the evidence.
func (r *Run) WriteTable(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := []string{"mode", "impl", "provider", "kernel"}
	var head []string
	for _, k := range keys {
		if v := r.Settings[k]; v != "" {
			head = append(head, k+"="+v)
		}
	}
	fmt.Fprintf(w, "\n=== %s summary (%s)\n", r.Suite, strings.Join(head, " "))
	fmt.Fprintf(w, "promise: %s\n", r.Promise)
	if v := r.Settings[SettingProxierSyncs]; v != "" {
		// How slow the proxiers were explains how long the waits were.
		fmt.Fprintf(w, "proxier syncs: %s\n", v)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tASSESSMENT\tRESULT\tTIME\tEVIDENCE")
	for _, f := range r.Features {
		for i, a := range f.Assessments {
			fname := f.Name
			if i > 0 {
				fname = ""
			}
			lines := append([]string(nil), a.Evidence...)
			for _, m := range a.Failures {
				lines = append(lines, "FAILED: "+FirstLine(m))
			}
			if a.Reason != "" {
				lines = append(lines, a.Reason)
			}
			if len(lines) == 0 {
				lines = []string{"-"}
			}
			for j, l := range lines {
				if j == 0 {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", fname, a.Name, a.Status, a.Duration.Round(100*time.Millisecond), l)
				} else {
					fmt.Fprintf(tw, "\t\t\t\t%s\n", l)
				}
			}
		}
	}
	tw.Flush()
	pass, fail, skip := r.Counts()
	fmt.Fprintf(w, "\n%d passed, %d failed, %d skipped or not run\n", pass, fail, skip)
	for _, e := range r.Errors {
		fmt.Fprintf(w, "RUN ERROR: %s\n", e)
	}
}

// FirstLine is a message's first line, capped at 200 bytes: what a table
// row or a JUnit message shows of it.
func FirstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// WriteJSON writes the run as indented JSON.
func (r *Run) WriteJSON(w io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	type alias Run // no mutex methods
	out := struct {
		*alias
		Summary map[string]int `json:"summary"`
	}{alias: (*alias)(r)}
	pass, fail, skip := r.Counts()
	out.Summary = map[string]int{"passed": pass, "failed": fail, "skipped": skip}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// SettingProxierSyncs is the setting in which a run records each node's
// proxier sync count and slowest sync, read by the summary and by soaks.
const SettingProxierSyncs = "proxier syncs"

// ResultsFile is the name WriteFiles gives the JSON results.
const ResultsFile = "results.json"

// ReadDir reads the results.json that WriteFiles wrote into dir.
func ReadDir(dir string) (*Run, error) {
	path := filepath.Join(dir, ResultsFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var run Run
	if err := json.Unmarshal(b, &run); err != nil {
		return nil, fmt.Errorf("unreadable %s: %w", path, err)
	}
	return &run, nil
}

// JUnit types: the subset CI systems read.
type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Class     string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// WriteJUnit writes one testsuite with a testcase per assessment; run-level
// errors become an extra testcase with an <error>.
func (r *Run) WriteJUnit(w io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := junitSuite{Name: r.Suite, Timestamp: r.Started.UTC().Format(time.RFC3339),
		Time: secs(r.Finished.Sub(r.Started))}
	for _, k := range sortedKeys(r.Settings) {
		s.Properties = append(s.Properties, junitProperty{k, r.Settings[k]})
	}
	s.Properties = append(s.Properties, junitProperty{"promise", r.Promise})
	for _, f := range r.Features {
		for _, a := range f.Assessments {
			c := junitCase{Class: r.Suite + "." + f.Name, Name: a.Name, Time: secs(a.Duration),
				SystemOut: strings.Join(a.Evidence, "\n")}
			switch a.Status {
			case Fail:
				s.Failures++
				msg := "failed"
				if len(a.Failures) > 0 {
					msg = FirstLine(a.Failures[0])
				}
				c.Failure = &junitMessage{Message: msg, Text: strings.Join(a.Failures, "\n\n")}
			case Skip, NotRun:
				s.Skipped++
				c.Skipped = &junitMessage{Message: a.Reason}
			}
			s.Tests++
			s.Cases = append(s.Cases, c)
		}
	}
	if len(r.Errors) > 0 {
		s.Tests++
		s.Errors++
		s.Cases = append(s.Cases, junitCase{Class: r.Suite, Name: "setup and teardown",
			Error: &junitMessage{Message: FirstLine(r.Errors[0]), Text: strings.Join(r.Errors, "\n")}})
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(junitSuites{Suites: []junitSuite{s}}); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}

// WriteFiles writes summary.txt, results.json and junit.xml into dir.
func (r *Run) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	r.WriteTable(&b)
	if err := os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{ResultsFile: r.WriteJSON, "junit.xml": r.WriteJUnit} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		werr := write(f)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return fmt.Errorf("%s: %w", name, werr)
		}
	}
	return nil
}
