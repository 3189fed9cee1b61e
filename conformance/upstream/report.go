package upstream

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Result is a test's outcome in one pass.
type Result string

const (
	Passed  Result = "passed"
	Failed  Result = "failed" // also Ginkgo's panicked, timedout, interrupted and aborted: Reason says which
	Skipped Result = "skipped"
	Pending Result = "pending"
	NotRun  Result = "not run" // in the focus, but the suite stopped before it
)

// Row is one test of a pass.
type Row struct {
	Name     string // the full Ginkgo text: [sig-network] DNS should provide DNS for services [Conformance]
	Result   Result
	Reason   string // why it was skipped, or how it failed (the first line of the message); empty when it passed
	Duration time.Duration
}

// Report is one pass's tests, in name order, and what failed outside them.
type Report struct {
	Rows []Row
	// SuiteFailures are failures of the suite's own nodes (its setup before any test, its teardown): when the
	// setup fails, every test is NotRun.
	SuiteFailures []string
	Elapsed       time.Duration // set by Run
	ExitStatus    int           // set by Run: the binary's
}

// Counts are the number of rows with each result.
func (r Report) Counts() map[Result]int {
	c := map[Result]int{}
	for _, row := range r.Rows {
		c[row.Result]++
	}
	return c
}

// ginkgoReport is what this package reads of Ginkgo v2's JSON report (github.com/onsi/ginkgo/v2/types.Report).
type ginkgoReport struct {
	SuiteDescription string
	SuiteSucceeded   bool
	SpecReports      []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
		RunTime                 time.Duration
		Failure                 *struct {
			Message        string
			ForwardedPanic string
		}
	}
}

// ParseReport reads a Ginkgo JSON report (--ginkgo.json-report) and returns a row for every test whose name
// focus matches: the ones skip matches (and the framework did not run) are Skipped with SkipReason; Ginkgo's
// failure states are Failed with the state in the reason unless it is "failed".
func ParseReport(r io.Reader, focus, skip *regexp.Regexp) (Report, error) {
	var suites []ginkgoReport
	if err := json.NewDecoder(r).Decode(&suites); err != nil {
		return Report{}, fmt.Errorf("ginkgo JSON report: %w", err)
	}
	if len(suites) == 0 {
		return Report{}, fmt.Errorf("ginkgo JSON report: no suite")
	}
	var rep Report
	for _, s := range suites {
		for _, sr := range s.SpecReports {
			message := ""
			if sr.Failure != nil {
				message = firstLine(sr.Failure.Message)
				if message == "" {
					message = firstLine(sr.Failure.ForwardedPanic)
				}
			}
			if sr.LeafNodeType != "It" {
				if isFailure(sr.State) {
					rep.SuiteFailures = append(rep.SuiteFailures,
						fmt.Sprintf("%s %s: %s", sr.LeafNodeType, sr.State, message))
				}
				continue
			}
			name := strings.Join(append(append([]string(nil), sr.ContainerHierarchyTexts...), sr.LeafNodeText), " ")
			if !focus.MatchString(name) {
				continue
			}
			row := Row{Name: name, Duration: sr.RunTime}
			switch {
			case sr.State == "passed":
				row.Result = Passed
			case sr.State == "pending":
				row.Result = Pending
			case sr.State == "skipped" && message != "":
				row.Result, row.Reason = Skipped, message
			case sr.State == "skipped" && skip != nil && skip.MatchString(name):
				row.Result, row.Reason = Skipped, SkipReason
			case sr.State == "skipped":
				row.Result, row.Reason = NotRun, "the suite stopped before it"
			case isFailure(sr.State):
				row.Result, row.Reason = Failed, message
				if sr.State != "failed" {
					row.Reason = sr.State + ": " + message
				}
			default:
				return Report{}, fmt.Errorf("ginkgo JSON report: test %q has an unknown state %q", name, sr.State)
			}
			rep.Rows = append(rep.Rows, row)
		}
	}
	sort.SliceStable(rep.Rows, func(i, j int) bool { return rep.Rows[i].Name < rep.Rows[j].Name })
	return rep, nil
}

func isFailure(state string) bool {
	switch state {
	case "failed", "panicked", "timedout", "interrupted", "aborted":
		return true
	}
	return false
}

// firstLine is the first non-empty line of s, trimmed, at most 300 bytes.
func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			if len(l) > 300 {
				l = strings.ToValidUTF8(l[:297], "") + "..."
			}
			return l
		}
	}
	return ""
}
