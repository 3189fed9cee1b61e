package main

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The headings of the plugin and pod churn sections: each runs to the next heading of its level (benchdoc -pods
// rewrites only these two).
const (
	pluginHeading = "## Plugin: Moat's own ADD and DEL\n"
	churnHeading  = "## Pod churn: the whole chain\n"
)

// addedTarget is issue 16's target for the default attach mode: what Moat adds to the whole chain's ADD p99 at a
// sustained 20 pods/s, beside the same chain without Moat, in milliseconds.
const addedTarget = 10

// podSections runs the plugin, attach and pod churn benchmarks and renders their sections. The churn benchmark
// runs its own rounds, in which the modes (none, default, tcx, clsact) take turns.
func podSections(count int, attaches, churn string) (plugin, churned string) {
	var pluginRaw bytes.Buffer
	pluginRaw.ReadFrom(benchmark("^BenchmarkPluginAddDel$", "1x", min(count, 2), "./plugin/"))
	pluginRaw.ReadFrom(benchmark("^BenchmarkAttach$", attaches, 1, "./bpf/"))
	return renderPlugin(&pluginRaw), renderChurn(benchmark(churn, "1x", 1, "./internal/simnode/"))
}

// replaceSection puts section (which begins with its heading, after a blank line) in the place of the section of
// page that heading opens.
func replaceSection(page, heading, section string) (string, error) {
	start := strings.Index(page, heading)
	if start < 0 {
		return "", fmt.Errorf("no %q heading", strings.TrimSpace(heading))
	}
	end := len(page)
	if next := strings.Index(page[start+len(heading):], "\n## "); next >= 0 {
		end = start + len(heading) + next + 1
	}
	return page[:start] + strings.TrimPrefix(section, "\n") + "\n" + page[end:], nil
}

// chainName is how the churn tables name a mode.
func chainName(mode string) string {
	switch mode {
	case "none":
		return "without Moat"
	case "default":
		return "moat, default (staged)"
	}
	return "moat, " + mode
}

// cell is a median with its spread when there was more than one run.
func cell(v []float64) string {
	s := summarize(slices.Clone(v))
	if len(v) < 2 {
		return fmt.Sprintf("%.1f", s.median)
	}
	return fmt.Sprintf("%.1f (%.1f-%.1f)", s.median, s.min, s.max)
}

// renderChurn is the pod churn section: the whole chain at a sustained rate and in a burst, without Moat and with
// each attach mode, and what Moat adds to the sustained ADD p99, round by round.
func renderChurn(raw io.Reader) string {
	text, _ := io.ReadAll(raw)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", churnHeading)
	fmt.Fprintf(&b, "`go test -bench BenchmarkPodChurn ./internal/simnode/`: bridge, host-local through moat-ipam,\n")
	fmt.Fprintf(&b, "portmap and moat through libcni on a simulated node with its enforcer, as a runtime runs them: %.0f pods\n",
		summarize(parseMetrics(bytes.NewReader(text), "BenchmarkPodChurn/")["sustained-pods"]).median)
	fmt.Fprintf(&b, "asked at 20 a second (each deleted a second later), then 100 pods asked at once. First the same chain\n")
	fmt.Fprintf(&b, "without Moat (bridge, host-local and portmap as the cluster's CNI wrote them, no enforcer), then with each\n")
	fmt.Fprintf(&b, "`attachMode`, the modes taking turns in each round. Milliseconds for the whole chain, median (min-max)\n")
	fmt.Fprintf(&b, "over the rounds; DEL over both phases; left behind afterwards: records, pinned and released links, host veths.\n\n")
	fmt.Fprintf(&b, "| chain | phase | ADD p50 | ADD p99 | rate reached | failures | DEL p50 | DEL p99 | left behind |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|\n")
	clean := true
	p99 := map[string][]float64{}
	p50 := map[string][]float64{}
	var mover map[string][]float64
	for mode, m := range byMode(text, "BenchmarkPodChurn") {
		if len(m["add-p50-ms"]) == 0 {
			continue
		}
		p99[mode], p50[mode] = slices.Clone(m["add-p99-ms"]), slices.Clone(m["add-p50-ms"])
		if mode == "default" {
			mover = m
		}
		v := func(k string) float64 { return summarize(m[k]).median }
		fmt.Fprintf(&b, "| %s | sustained, 20 pods/s asked | %s | %s | %.1f pods/s | %.0f | %s | %s | %.0f |\n", chainName(mode),
			cell(m["add-p50-ms"]), cell(m["add-p99-ms"]), v("sustained-pods/s"), v("sustained-failures"),
			cell(m["del-p50-ms"]), cell(m["del-p99-ms"]), v("leaks"))
		fmt.Fprintf(&b, "| %s | burst, 100 pods at once | %s | %s | %.1f pods/s | %.0f | | | |\n", chainName(mode),
			cell(m["burst-add-p50-ms"]), cell(m["burst-add-p99-ms"]), v("burst-pods/s"), v("burst-failures"))
		clean = clean && v("sustained-failures")+v("burst-failures")+v("leaks") == 0
	}
	fmt.Fprintf(&b, "\nZero failures and zero leaks: **%s**.\n", met(clean))
	b.WriteString(renderAdded(p50, p99))
	if mover != nil && len(mover["moved"]) > 0 {
		fmt.Fprintf(&b, "\nIn the default mode the enforcer's mover took %s pods per round to tcx while the pods came and went (the\n",
			cell(mover["moved"]))
		fmt.Fprintf(&b, "others were deleted first, still in clsact); those ran in clsact for p50 %s ms, p99 %s ms before the move.\n",
			cell(mover["staged-p50-ms"]), cell(mover["staged-p99-ms"]))
	}
	fmt.Fprintf(&b, "Why pods wait on one another: [benchmarks-findings.md](%s#plugin-and-pod-churn-the-kernels-grace-periods).\n", findings)
	return b.String()
}

// renderAdded is what each attach mode adds to the chain's sustained ADD latency: in each round, the mode's p50
// and p99 less those of the chain without Moat in the same round; the default mode is held to the target.
func renderAdded(p50, p99 map[string][]float64) string {
	base := p99["none"]
	if len(base) == 0 {
		return "\nNo run of the chain without Moat: what Moat adds is not measured.\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nWhat Moat adds to the chain's ADD at 20 pods/s: in each round, a mode's ADD p50 and p99 less the chain's\n")
	fmt.Fprintf(&b, "without Moat in the same round; milliseconds, median (min-max) over %d round(s).\n\n", len(base))
	fmt.Fprintf(&b, "| attachMode | added ADD p50 | added ADD p99 | target (added p99) |\n|---|---|---|---|\n")
	for _, mode := range []string{"default", "tcx", "clsact"} {
		a50, a99 := added(p50[mode], p50["none"]), added(p99[mode], base)
		if len(a99) == 0 {
			continue
		}
		target := "-"
		if mode == "default" {
			target = fmt.Sprintf("<= %d: **%s**", addedTarget, met(summarize(slices.Clone(a99)).median <= addedTarget))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", mode, cell(a50), cell(a99), target)
	}
	return b.String()
}

// added is with less without, round by round (the rounds both have).
func added(with, without []float64) []float64 {
	var out []float64
	for i := 0; i < len(with) && i < len(without); i++ {
		out = append(out, with[i]-without[i])
	}
	return out
}
