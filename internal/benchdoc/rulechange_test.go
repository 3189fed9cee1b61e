package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/moatfw/moat/internal/testutil"
)

// The comparison's rule changes run, take time, and leave no namespace behind.
func TestRuleChangeSmoke(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"iptables-legacy", "iptables-nft", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	rcs, err := measureRuleChanges([]int{10, 1000}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(rcs) != 6 {
		t.Fatalf("%d results, want 6", len(rcs))
	}
	for _, rc := range rcs {
		if rc.p50 <= 0 || rc.p99 < rc.p50 {
			t.Errorf("%s with %d rules: p50 %.2f ms, p99 %.2f ms", rc.tool, rc.rules, rc.p50, rc.p99)
		}
	}
	if _, err := os.Stat("/run/netns/" + benchNS); !os.IsNotExist(err) {
		t.Errorf("the namespace %s is left (%v)", benchNS, err)
	}
	doc := renderRuleChanges(rcs, map[int]float64{10: 21.9})
	if !strings.Contains(doc, "| 10 |") || !strings.Contains(doc, "21.9") {
		t.Errorf("rendered:\n%s", doc)
	}
	t.Log(doc)
}

// The plugin and churn sections take the pod counts from the benchmarks' own output, per attach mode.
func TestRenderReadsBenchmarkLines(t *testing.T) {
	plugin := "BenchmarkPluginAddDel/mode=tcx-2 1 11885571547 ns/op 27.71 add-p50-ms 55.71 add-p99-ms 28.71 del-p50-ms 52.67 del-p99-ms 50 pods\n" +
		"BenchmarkPluginAddDel/mode=clsact-2 1 1751887140 ns/op 4.35 add-p50-ms 6.77 add-p99-ms 4.03 del-p50-ms 6.84 del-p99-ms 50 pods\n"
	out := renderPlugin(strings.NewReader(plugin))
	for _, want := range []string{"ADD then DEL of 50 pods", "| tcx | ADD | 27.7 (27.7-27.7) | 55.7 (55.7-55.7) | **not met** | **not met** |",
		"| clsact | ADD | 4.3 (4.3-4.3) | 6.8 (6.8-6.8) | **met** | **met** |"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugin section lacks %q:\n%s", want, out)
		}
	}
	churn := "BenchmarkPodChurn/mode=clsact-2 1 14707804121 ns/op 33.81 add-p50-ms 58.91 add-p99-ms 1685 burst-add-p50-ms " +
		"2008 burst-add-p99-ms 0 burst-failures 49.24 burst-pods/s 41.26 del-p50-ms 70.27 del-p99-ms 0 leaks 100 sustained-pods " +
		"0 sustained-failures 19.93 sustained-pods/s\n"
	out = renderChurn(strings.NewReader(churn))
	for _, want := range []string{"100 pods asked at 20 a", "| clsact | sustained, 20 pods/s asked | 33.8 | 58.9 | 19.9 pods/s | 0 |",
		"Zero failures and zero leaks: **met**"} {
		if !strings.Contains(out, want) {
			t.Errorf("churn section lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| tcx |") {
		t.Errorf("a tcx row without tcx results:\n%s", out)
	}
}
