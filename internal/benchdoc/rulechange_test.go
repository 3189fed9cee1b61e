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
