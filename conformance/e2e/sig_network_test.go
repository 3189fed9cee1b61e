package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatfw/moat/conformance/upstream"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// TestUpstreamConformance runs a subset of Kubernetes' own [sig-network] conformance tests (upstream.SubsetTests:
// the API-only ones and the quick ones with traffic through Moat on both nodes) with the e2e binary of `make
// conformance-bins`, on this cluster with Moat installed as the suite deploys it. Each must pass. `make
// conformance` runs them all, without Moat, with it and with a restrictive policy (docs/conformance.md). It runs
// after the suite's own cases (its file sorts after theirs) and before TestUninstall, so the pods it leaves
// terminating disturb no case.
func TestUpstreamConformance(t *testing.T) {
	e2e := filepath.Join(kubetest.BinDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		t.Fatalf("%v: make e2e (or make e2e-bins) builds it", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	start := time.Now()
	rep, err := upstream.RunSharded(ctx, upstream.Options{E2E: e2e, Kubeconfig: suite.cluster.Kubeconfig,
		ReportDir: dir, Focus: upstream.FocusOn(upstream.SubsetTests), Timeout: 8 * time.Minute}, 2, nil)
	if err != nil {
		t.Errorf("the e2e binary: %v", err)
	}
	got := map[string]upstream.Row{}
	for _, r := range rep.Rows {
		got[r.Name] = r
	}
	for _, name := range upstream.SubsetTests {
		r, ok := got[name]
		result := string(r.Result)
		if !ok {
			result = "absent"
		}
		short := strings.TrimSuffix(strings.TrimPrefix(name, "[sig-network] "), " [Conformance]")
		if !record(t, short, string(upstream.Passed), result, r.Duration) {
			t.Errorf("%s: %s: %s", name, result, r.Reason)
		}
	}
	for _, f := range rep.SuiteFailures {
		t.Errorf("the e2e suite's setup or teardown: %s", f)
	}
	t.Logf("%d tests in %s", len(rep.Rows), time.Since(start).Round(time.Second))
	if t.Failed() {
		logs, _ := filepath.Glob(filepath.Join(dir, "shard-*", upstream.LogFile))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			if len(b) > 12000 {
				b = b[len(b)-12000:]
			}
			t.Logf("tail of %s:\n%s", l, b)
		}
	}
}
