package scale

import (
	"strings"
	"testing"
	"time"
)

// The page has a column per size measured, the targets beside them, and says which sizes did not run.
func TestReportRenders(t *testing.T) {
	rep := &report{Date: "2026-01-02", Machine: "a machine", Code: "abc", Planned: []int{5000, 20000, 150000},
		Results: []*result{
			{Pods: 5000, FirstApply: 1500 * time.Millisecond, Learn: []time.Duration{time.Second, 3 * time.Second},
				ControlPlanePeak: map[string]uint64{"etcd": 1 << 20}},
			{Pods: 20000, Skipped: "not run: needs about 4.0 GiB of free memory, 1.0 GiB available"},
		}}
	page := rep.render()
	for _, want := range []string{"| | 5000 pods | 20000 pods | target at 150,000 pods |", "| 1500 ms |",
		"1000 ms / 3000 ms (n=2)", "p99 <= 1 s |", "- 20000 pods: not run: needs", "- 150000 pods: not measured"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q:\n%s", want, page)
		}
	}
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, "|") && strings.Count(line, "|") != 5 {
			t.Errorf("a table line without a cell for each size and the target: %q", line)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	if p50, p99 := percentile(d, 0.5), percentile(d, 0.99); p50 != 50*time.Millisecond || p99 != 99*time.Millisecond {
		t.Errorf("p50 %v p99 %v, want 50ms 99ms", p50, p99)
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("percentile of nothing is not zero")
	}
}
