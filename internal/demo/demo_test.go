package demo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

// The demo as `make demo` runs it: every verdict as expected, both rounds, and the node gone afterwards.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := simnode.Build(bin, nil); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	bad, err := Run(ctx, Options{BinDir: bin, Examples: "../../examples/demo", Dir: dir, Out: &out})
	if err != nil || bad != 0 {
		t.Fatalf("demo: %d verdicts differ, %v\n%s", bad, err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"all 22 verdicts as expected",
		"payments-egress egress[0]",                     // the decider column, from trace
		"denied-by-rule     shared/db",                  // the flow log of a denial
		`moat_flow_verdicts_total{namespace="payments"`, // the counters
		"payments   payments  tcp/443 198.51.100.0/24",  // the report
		"namespace dev labelled moat.dev/egress=Deny: enforced in",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if n := strings.Count(text, "\n*   "); n != 2 {
		t.Errorf("%d verdicts marked changed in round 2, want 2 (the label and the policy edit)\n%s", n, text)
	}
	if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), dir) {
		t.Errorf("the demo left a mount under %s", dir)
	}
}

// A verdict that differs from the expected one is counted and shown.
func TestTableCountsMismatches(t *testing.T) {
	var b bytes.Buffer
	rs := []result{
		{attempt: attempt{from: "a/x", to: "198.51.100.1:443", what: "ok", want: true}, got: true, decided: "p egress[0]"},
		{attempt: attempt{from: "a/x", to: "203.0.113.1:443", what: "leak", want: false}, got: true, decided: "allowed-by-default"},
		{attempt: attempt{from: "b/y", to: "169.254.169.254:80", what: "blocked", want: true}, got: false, decided: "metadata-api"},
	}
	if bad := table(&b, rs, nil); bad != 2 {
		t.Errorf("%d mismatches counted, want 2:\n%s", bad, b.String())
	}
	if strings.Count(b.String(), "NOT AS EXPECTED") != 2 || !strings.Contains(b.String(), "ALLOWED  <-- NOT AS EXPECTED") {
		t.Errorf("the table does not show the mismatches:\n%s", b.String())
	}
}
