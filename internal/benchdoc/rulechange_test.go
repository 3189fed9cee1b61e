package main

import (
	"fmt"
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
	line := func(mode string, p50, p99 float64, extra string) string {
		return fmt.Sprintf("BenchmarkPodChurn/mode=%s-2 1 14707804121 ns/op %g add-p50-ms %g add-p99-ms 1685 burst-add-p50-ms "+
			"2008 burst-add-p99-ms 0 burst-failures 49.24 burst-pods/s 41.26 del-p50-ms 70.27 del-p99-ms 0 leaks 100 sustained-pods "+
			"0 sustained-failures 19.93 sustained-pods/s%s\n", mode, p50, p99, extra)
	}
	// two rounds, the modes taking turns: Moat's cost is read round by round against the chain without it
	churn := line("none", 30, 50, "") + line("default", 31, 55, " 12 moved 200 staged-p50-ms 400 staged-p99-ms") +
		line("clsact", 33.81, 58.91, "") + line("none", 32, 60, "") + line("default", 33, 63, " 14 moved 220 staged-p50-ms 500 staged-p99-ms") +
		line("clsact", 34, 80, "")
	out = renderChurn(strings.NewReader(churn))
	for _, want := range []string{"100 pods\nasked at 20 a", "| moat, clsact | sustained, 20 pods/s asked | 33.9 (33.8-34.0) | 69.5 (58.9-80.0) | 19.9 pods/s | 0 |",
		"| without Moat | sustained, 20 pods/s asked | 31.0 (30.0-32.0) | 55.0 (50.0-60.0) |",
		"| default | 1.0 (1.0-1.0) | 4.0 (3.0-5.0) | <= 10: **met** |", "| clsact | 2.9 (2.0-3.8) | 14.5 (8.9-20.0) | - |",
		"took 13.0 (12.0-14.0) pods per round to tcx", "p99 450.0 (400.0-500.0) ms",
		"Zero failures and zero leaks: **met**"} {
		if !strings.Contains(out, want) {
			t.Errorf("churn section lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| moat, tcx |") {
		t.Errorf("a tcx row without tcx results:\n%s", out)
	}
	if out := renderChurn(strings.NewReader(line("default", 31, 55, ""))); !strings.Contains(out, "not measured") {
		t.Errorf("a churn section without the chain without Moat claims what Moat adds:\n%s", out)
	}
}

// -pods rewrites the plugin and churn sections in place and leaves the rest of the page as it was.
func TestReplaceSection(t *testing.T) {
	page := "# Benchmarks\n\n## Plugin: Moat's own ADD and DEL\n\nold plugin\n\n## Pod churn: the whole chain\n\nold churn\n\n## Enforcer\n\nkept\n"
	page, err := replaceSection(page, pluginHeading, "\n"+pluginHeading+"\nnew plugin\n")
	if err == nil {
		page, err = replaceSection(page, churnHeading, "\n"+churnHeading+"\nnew churn\n")
	}
	want := "# Benchmarks\n\n## Plugin: Moat's own ADD and DEL\n\nnew plugin\n\n## Pod churn: the whole chain\n\nnew churn\n\n## Enforcer\n\nkept\n"
	if err != nil || page != want {
		t.Errorf("replaced page (%v):\n%q\nwant\n%q", err, page, want)
	}
	if _, err := replaceSection("# nothing\n", churnHeading, ""); err == nil {
		t.Error("a page without the heading was rewritten")
	}
}
