package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// FocusOn is a focus that selects the named tests (full names, as List returns them), and any test whose name
// has one of them inside: Ginkgo matches a focus against more text than the name, so it cannot be anchored.
// None of the [sig-network] conformance tests' names is inside another's (TestFocusOnWithTheBinary).
func FocusOn(names []string) string {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return "(" + strings.Join(quoted, "|") + ")"
}

// Shard deals names out to n groups in turn (so tests of one kind, which sort together and often take as long
// as each other, are spread over the groups). No group is empty.
func Shard(names []string, n int) [][]string {
	if n > len(names) {
		n = len(names)
	}
	if n < 1 {
		return nil
	}
	groups := make([][]string, n)
	for i, name := range names {
		groups[i%n] = append(groups[i%n], name)
	}
	return groups
}

// RunSharded runs the tests o focuses on in n processes of the binary at once, each a shard of the list with
// its own report folder under o.ReportDir (shard-1, ...), and merges their reports into one. Ginkgo runs a
// process's tests one after the other; most of a network test's time is spent waiting for pods and
// connections, so on a small machine shards finish a pass in a fraction of the time. The tests run in
// namespaces of their own and none of the [sig-network] conformance tests is [Serial]. The merged report's
// Elapsed is the wall time of the whole; a shard that writes no report is an error, and the others' rows are
// returned with it.
func RunSharded(ctx context.Context, o Options, n int, progress io.Writer) (Report, error) {
	o = o.withDefaults()
	// a dry run lists what to run (reported as passed) and what Skip leaves out (skipped), which is listed
	// once, not by every shard
	lo := o
	lo.ReportDir, lo.DryRun = filepath.Join(o.ReportDir, "list"), true
	dry, err := Run(ctx, lo)
	if err != nil {
		return Report{}, fmt.Errorf("list the tests: %w", err)
	}
	var names []string
	var skipped []Row
	for _, r := range dry.Rows {
		switch r.Result {
		case Passed:
			names = append(names, r.Name)
		case Skipped:
			skipped = append(skipped, r)
		}
	}
	if len(names) == 0 {
		return Report{}, fmt.Errorf("focus %q selects no test", o.Focus)
	}
	groups := Shard(names, n)
	reports := make([]Report, len(groups))
	errs := make([]error, len(groups))
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			so := o
			so.Focus = FocusOn(g)
			so.ReportDir = filepath.Join(o.ReportDir, fmt.Sprintf("shard-%d", i+1))
			so.Output = nil
			reports[i], errs[i] = Run(ctx, so)
			if progress != nil {
				mu.Lock()
				c := reports[i].Counts()
				fmt.Fprintf(progress, "upstream: shard %d of %d (%d tests) ended after %s: %d passed, %d failed, "+
					"%d skipped (log %s)\n", i+1, len(groups), len(g), time.Since(start).Round(time.Second),
					c[Passed], c[Failed], c[Skipped], filepath.Join(so.ReportDir, LogFile))
				if errs[i] != nil {
					fmt.Fprintf(progress, "upstream: shard %d: %v\n", i+1, errs[i])
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	merged := Report{Elapsed: time.Since(start), Rows: skipped}
	for i, r := range reports {
		merged.Rows = append(merged.Rows, r.Rows...)
		for _, f := range r.SuiteFailures {
			merged.SuiteFailures = append(merged.SuiteFailures, fmt.Sprintf("shard %d: %s", i+1, f))
		}
		merged.ExitStatus = max(merged.ExitStatus, r.ExitStatus)
	}
	sort.SliceStable(merged.Rows, func(i, j int) bool { return merged.Rows[i].Name < merged.Rows[j].Name })
	return merged, errors.Join(errs...)
}
