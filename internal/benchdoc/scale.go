package main

import (
	"fmt"
	"strings"
)

// scaleHeading starts the API-server scale section, the last of the page.
const scaleHeading = "## API-server scale\n"

// renderScale points to the API-server scale benchmark, which `make scale` runs and writes to a page of its own
// (it fills an API server for an hour or more), and sets its figures beside Cilium's published ones. page is
// that page's content ("" when there is none yet).
func renderScale(page string) string {
	text := `
## API-server scale

` + "`make scale`" + ` (not part of ` + "`make bench`" + `; an hour or more) runs the real ` + "`moat-enforcer`" + ` against a real API server
with 2,000 namespaces, 1,000 Nodes, 2,000 Services, 500 FirewallPolicies and 5,000 to 150,000 pods: the time to
the first apply, what a pod, a namespace and a policy change cost until the datapath holds them, the remote-pod
learn latency, the enforcer's memory and CPU under pod churn, the kernel's map memory and the bytes a node
receives from the API server. Its page, written by its own run: [benchmarks-scale.md](benchmarks-scale.md).

Cilium's published figures, for comparison ([Cilium's scalability report](https://docs.cilium.io/en/stable/operations/performance/scalability/report/),
CRD mode, 1,000 worker nodes of 2 vCPUs and 4 GB): with 50,000 pods in 5 namespaces (250 identities), 250
policies selecting the 10,000 pods of one namespace were enforced on an endpoint in under 600 ms at most, and
every agent had them within 5 s; 250 cluster-wide policies selecting all 50,000 pods took endpoint regeneration
to a little over 3 s at peak. While the 50,000 pods were created, the agents used 3.38% CPU of a 2-vCPU
machine on average, 438 MiB of memory on average (573 MiB at most, about 10.5 KiB more per pod in the cluster)
and up to 462.7 MiB of eBPF map memory.
`
	if t := scaleComparison(page); t != "" {
		text += "\n" + t
	}
	return text
}

// scaleTable reads the table of benchmarks-scale.md: its sizes ("50000 pods") and each row's cells by its label.
func scaleTable(page string) (sizes []string, rows map[string][]string) {
	cells := func(line string) []string {
		parts := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts
	}
	rows = map[string][]string{}
	in := false
	for _, line := range strings.Split(page, "\n") {
		switch {
		case !in && strings.HasPrefix(line, "| | "):
			c := cells(line)
			for _, s := range c[1:] {
				if strings.HasSuffix(s, " pods") {
					sizes = append(sizes, s)
				}
			}
			in = true
		case in && strings.HasPrefix(line, "|---"):
		case in && strings.HasPrefix(line, "| "):
			c := cells(line)
			if len(c) > len(sizes) {
				rows[c[0]] = c[1 : 1+len(sizes)]
			}
		case in:
			return sizes, rows
		}
	}
	return sizes, rows
}

// scaleComparison is Moat's figures at 50,000 and 150,000 pods beside Cilium's published ones at 50,000, from
// the scale page ("" when it has neither size).
func scaleComparison(page string) string {
	sizes, rows := scaleTable(page)
	var cols []int
	var heads []string
	for i, s := range sizes {
		if s == "50000 pods" || s == "150000 pods" {
			cols = append(cols, i)
			heads = append(heads, "Moat, "+strings.Replace(strings.Replace(s, "150000", "150,000", 1), "50000", "50,000", 1))
		}
	}
	if len(cols) == 0 {
		return ""
	}
	// p99 is the second of "p50 / p99 (n=...)"
	p99 := func(v string) string {
		if _, after, ok := strings.Cut(v, " / "); ok {
			v = after
		}
		before, _, _ := strings.Cut(v, " (")
		return before
	}
	keep := func(v string) string { return v }
	lines := []struct {
		what, row string
		pick      func(string) string
		cilium    string
	}{
		{"policy change enforced, p99", "policy change -> enforced p50 / p99, one at a time", p99,
			"under 600 ms on an endpoint at most; every agent within 5 s"},
		{"remote pod known, p99", "remote pod learn p50 / p99 (steady rate)", p99, "not published"},
		{"agent memory", "enforcer peak RSS (VmHWM)", func(v string) string { return "peak " + v },
			"438 MiB on average, 573 MiB at most"},
		{"agent CPU while pods come and go (pods/s)", "enforcer CPU under churn (pods/s reached)", keep,
			"3.38% on average while the 50,000 pods were created"},
		{"eBPF map memory", "kernel map memory, all maps", keep, "up to 462.7 MiB"},
	}
	var b strings.Builder
	b.WriteString("Side by side ([benchmarks-scale.md](benchmarks-scale.md) for Moat's every figure). Not the same test:\n" +
		"Cilium's agents ran on 1,000 real nodes with the API server elsewhere; Moat's one enforcer ran on a 2-vCPU\n" +
		"machine that also ran the API server and etcd, with 999 other nodes that exist only as API objects.\n\n")
	fmt.Fprintf(&b, "| | %s | Cilium, 50,000 pods (published) |\n|---|", strings.Join(heads, " | "))
	for range heads {
		b.WriteString("---|")
	}
	b.WriteString("---|\n")
	for _, l := range lines {
		v, ok := rows[l.row]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "| %s |", l.what)
		for _, c := range cols {
			fmt.Fprintf(&b, " %s |", l.pick(v[c]))
		}
		fmt.Fprintf(&b, " %s |\n", l.cilium)
	}
	return b.String()
}

// replaceScale puts section in place of the page's API-server scale section, up to the page's footer or the next
// heading of its level.
func replaceScale(page, section string) (string, error) {
	start := strings.Index(page, scaleHeading)
	if start < 0 {
		return "", fmt.Errorf("no %q heading", strings.TrimSpace(scaleHeading))
	}
	end := len(page)
	for _, sep := range []string{"\n---\n", "\n## "} { // a section after it (benchdoc -dns puts one there) stays
		if i := strings.Index(page[start+len(scaleHeading):], sep); i >= 0 {
			end = min(end, start+len(scaleHeading)+i+1)
		}
	}
	return page[:start] + strings.TrimPrefix(section, "\n") + "\n" + page[end:], nil
}
