// Command list prints the tests the conformance pass selects, one a line, by a dry run of the e2e binary
// (`make conformance-list`): no cluster is needed.
//
//	list [-e2e PATH] [-focus RE] [-skip RE]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moatfw/moat/conformance/upstream"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

func main() {
	e2e := flag.String("e2e", filepath.Join(kubetest.BinDir(), "e2e.test"), "the e2e test binary (make conformance-bins)")
	focus := flag.String("focus", upstream.Focus, "the tests to list")
	skip := flag.String("skip", upstream.Skip, "the tests to leave out")
	flag.Parse()
	names, err := list(upstream.Options{E2E: *e2e, Focus: *focus, Skip: *skip})
	if err != nil {
		fmt.Fprintln(os.Stderr, "list:", err)
		os.Exit(1)
	}
	for _, n := range names {
		fmt.Println(n)
	}
	fmt.Fprintf(os.Stderr, "%d tests\n", len(names))
}

// list runs the dry run with its report in a temporary folder.
func list(o upstream.Options) ([]string, error) {
	dir, err := os.MkdirTemp("", "moat-conformance-list-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	o.ReportDir = dir
	return upstream.List(context.Background(), o)
}
