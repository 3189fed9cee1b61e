package main

import (
	"strings"
	"testing"
)

const scalePageSample = `# Benchmarks: the enforcer against a large cluster

| | 5000 pods | 50000 pods | 150000 pods | target at 150,000 pods |
|---|---|---|---|---|
| remote pod learn p50 / p99 (steady rate) | 87 ms / 141 ms (n=200) | 90 ms / 130 ms (n=200) | 85 ms / 134 ms (n=200) | p99 <= 1 s |
| policy change -> enforced p50 / p99, one at a time | 146 ms / 333 ms (n=50) | 243 ms / 507 ms (n=50) | 225 ms / 509 ms (n=50) | p99 <= 1 s |
| enforcer peak RSS (VmHWM) | 149.7 MiB | 265.5 MiB | 764.6 MiB | <= 256 MiB |

- 20000 pods: not measured.
`

// The comparison takes Moat's columns at 50,000 and 150,000 pods from the scale page, the p99 of "p50 / p99"
// cells, leaves out rows the page lacks, and the section it makes replaces the old one up to the page's footer.
func TestScaleComparison(t *testing.T) {
	got := scaleComparison(scalePageSample)
	for _, want := range []string{
		"| | Moat, 50,000 pods | Moat, 150,000 pods | Cilium, 50,000 pods (published) |",
		"| policy change enforced, p99 | 507 ms | 509 ms | under 600 ms",
		"| remote pod known, p99 | 130 ms | 134 ms | not published |",
		"| agent memory | peak 265.5 MiB | peak 764.6 MiB |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("comparison lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "eBPF map memory") || strings.Contains(got, "149.7") {
		t.Errorf("comparison has a row the page lacks, or the 5,000-pod column:\n%s", got)
	}
	if scaleComparison("# no table yet\n") != "" {
		t.Errorf("a page without the sizes gave a comparison")
	}

	page := "# Benchmarks\n\n## Enforcer: memory\n\nx\n\n## API-server scale\n\nold text\n\n---\n`make bench` took 1s.\n"
	out, err := replaceScale(page, renderScale(scalePageSample))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "old text") || !strings.Contains(out, "| agent memory |") ||
		!strings.HasSuffix(out, "---\n`make bench` took 1s.\n") || !strings.Contains(out, "## Enforcer: memory\n\nx\n") {
		t.Errorf("replaced page:\n%s", out)
	}
}
