package sidebyside

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

var metricTitles = map[string]string{
	MetricThroughput1: "TCP throughput, one stream (iperf3)",
	MetricThroughput4: "TCP throughput, four streams (iperf3)",
	MetricCPUPerGbit:  "CPU per Gbit/s, one stream (whole machine from /proc/stat, all CPUs, softirq included)",
	MetricRRP50:       "TCP request-response p50 (sockperf ping-pong, 64 B, one connection, round trip)",
	MetricRRP99:       "TCP request-response p99",
	MetricConnRate:    "Connection rate (connect, one 64 B exchange, close)",
}

// table indexes results by configuration, N and metric.
type table map[string]map[int]map[string]Result

func index(results []Result) (table, []int, []string) {
	t := table{}
	var ns []int
	var cfgs []string
	for _, r := range results {
		if t[r.Config] == nil {
			t[r.Config] = map[int]map[string]Result{}
			cfgs = append(cfgs, r.Config)
		}
		if t[r.Config][r.N] == nil {
			t[r.Config][r.N] = map[string]Result{}
		}
		t[r.Config][r.N][r.Metric] = r
		if !slices.Contains(ns, r.N) {
			ns = append(ns, r.N)
		}
	}
	slices.Sort(ns)
	slices.SortStableFunc(cfgs, func(a, b string) int { return slices.Index(Configs, a) - slices.Index(Configs, b) })
	return t, ns, cfgs
}

func (t table) get(cfg string, n int, metric string) (Result, bool) {
	r, ok := t[cfg][n][metric]
	return r, ok
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return commas(int64(math.Round(v)))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func commas(v int64) string {
	s := fmt.Sprint(v)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// Render writes the results as a Markdown section: the placement, a table per measure (a row per
// configuration, a column per N, each cell the median, min-max over repetitions and the ratio to no filter)
// and which of the targets are met.
func Render(results []Result) string {
	t, ns, cfgs := index(results)
	var b strings.Builder
	b.WriteString("## Side by side: no filter, Moat, iptables-legacy (stateful and stateless), iptables-nft, nftables\n\n")
	fmt.Fprintf(&b, "Client pod netns -> veth -> router netns (the host; Moat with tcx on the pod veth's host end, "+
		"iptables and nft in FORWARD) -> veth -> server netns (198.51.100.1). Each filter holds N rules: N-1 that "+
		"do not match the flow, then the one that does (nftables: one rule and a set of N elements; iptables-legacy, "+
		"iptables-nft and nftables accept ESTABLISHED first; iptables-legacy-stateless has no conntrack rule and "+
		"after the N-1 and the matching rule one more that accepts the replies, server to client). "+
		"Placement: %s.\n\n", Placement)
	reps := 0
	for _, r := range results {
		reps = max(reps, len(r.Samples))
	}
	b.WriteString("iptables-legacy, iptables-nft and nftables accept ESTABLISHED before any rule, so a stream or a " +
		"persistent request-response connection walks the rules only with its first packet; the per-rule cost of " +
		"stateful iptables shows in the connection rate. iptables-legacy-stateless has no ESTABLISHED accept: every " +
		"packet, in both directions, walks the rules before the one that accepts it (N-1 for the client's, N for " +
		"the server's replies), which is what stateless iptables costs per packet.\n\n")
	b.WriteString("CPU per Gbit/s is the whole machine's busy time from /proc/stat (user, nice, system, irq, softirq " +
		"and steal; idle and iowait not) on all its CPUs, the iperf3 client's and the server's, during the " +
		"one-stream iperf3 run, in percent of one CPU (100% is one CPU fully busy), divided by that run's Gbit/s. " +
		"It includes the forwarding and filtering done in softirq wherever it runs, and anything else running on " +
		"the machine at the time.\n\n")
	fmt.Fprintf(&b, "Cells: median (min-max over %d repetitions, interleaved, each repetition starting one configuration later) and the ratio to no filter at the same N.\n\n", reps)
	for _, m := range Metrics {
		fmt.Fprintf(&b, "### %s, %s\n\n| configuration |", metricTitles[m], units[m])
		for _, n := range ns {
			fmt.Fprintf(&b, " N=%s |", commas(int64(n)))
		}
		b.WriteString("\n|---|")
		for range ns {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		for _, cfg := range cfgs {
			fmt.Fprintf(&b, "| %s |", cfg)
			for _, n := range ns {
				r, ok := t.get(cfg, n, m)
				if !ok {
					b.WriteString(" - |")
					continue
				}
				fmt.Fprintf(&b, " %s (%s-%s)", num(r.Median), num(r.Min), num(r.Max))
				if base, ok := t.get(ConfigNone, n, m); ok && cfg != ConfigNone && base.Median != 0 {
					fmt.Fprintf(&b, " %.2fx", r.Median/base.Median)
				}
				b.WriteString(" |")
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	b.WriteString("### Targets\n\n")
	for _, c := range targets(t, ns) {
		mark := "not met"
		if c.met {
			mark = "met"
		}
		fmt.Fprintf(&b, "- %s: **%s** (%s)\n", c.name, mark, c.detail)
	}
	b.WriteString(noiseFloor(t, ns))
	return b.String()
}

// noiseFloor says how far no filter's own repetitions spread, over every N, for the measures whose targets
// have margins of a few percent: a margin smaller than the spread cannot be told apart from drift.
func noiseFloor(t table, ns []int) string {
	var parts []string
	for _, m := range []string{MetricThroughput1, MetricThroughput4, MetricConnRate, MetricRRP50} {
		var all []float64
		for _, n := range ns {
			all = append(all, t[ConfigNone][n][m].Samples...)
		}
		if len(all) < 2 {
			continue
		}
		slices.Sort(all)
		mid := median(all)
		parts = append(parts, fmt.Sprintf("%s %s-%s %s (%.0f%% of its median)", m, num(all[0]), num(all[len(all)-1]),
			units[m], 100*(all[len(all)-1]-all[0])/mid))
	}
	if len(parts) == 0 {
		return ""
	}
	return "\nNoise floor: with no filter at all, the runs of this report spread over " + strings.Join(parts, ", ") +
		". A target whose margin is smaller than that spread (0.97x of throughput and of connection rate) is " +
		"decided here by drift as much as by the filter: read those rows with the CPU per Gbit/s table and the " +
		"per-packet costs above.\n"
}

type check struct {
	name   string
	met    bool
	detail string
}

func targets(t table, ns []int) []check {
	med := func(cfg string, n int, m string) (float64, bool) {
		r, ok := t.get(cfg, n, m)
		return r.Median, ok
	}
	var out []check
	every := func(name string, ok func(n int) (bool, string)) {
		c := check{name: name, met: len(ns) > 0}
		var parts []string
		for _, n := range ns {
			good, d := ok(n)
			c.met = c.met && good
			parts = append(parts, fmt.Sprintf("N=%s: %s", commas(int64(n)), d))
		}
		c.detail = strings.Join(parts, "; ")
		out = append(out, c)
	}
	// atLeast checks that Moat's median of metric is at least the share least of no filter's at N
	atLeast := func(metric string, least float64) func(n int) (bool, string) {
		return func(n int) (bool, string) {
			m, ok1 := med(ConfigMoat, n, metric)
			base, ok2 := med(ConfigNone, n, metric)
			if !ok1 || !ok2 || base == 0 {
				return false, "missing"
			}
			return m/base >= least, fmt.Sprintf("%.2fx", m/base)
		}
	}
	every("Moat throughput >= 0.97x no filter at every N (one stream)", atLeast(MetricThroughput1, 0.97))
	every("Moat adds <= 1 µs to request-response p50 at every N", func(n int) (bool, string) {
		m, ok1 := med(ConfigMoat, n, MetricRRP50)
		base, ok2 := med(ConfigNone, n, MetricRRP50)
		if !ok1 || !ok2 {
			return false, "missing"
		}
		return m-base <= 1, fmt.Sprintf("%+.2f µs", m-base)
	})
	every("Moat connection rate >= 0.97x no filter at every N", atLeast(MetricConnRate, 0.97))
	flat := check{name: "Moat at N=10,000 within 1.15x of N=10 (request-response p50, throughput and connection rate; " +
		"each figure is the cost at N=10,000 over N=10, so above 1 is worse)"}
	if slices.Contains(ns, 10) && slices.Contains(ns, 10000) {
		flat.met = true
		var parts []string
		for _, m := range []string{MetricRRP50, MetricThroughput1, MetricConnRate} {
			lo, ok1 := med(ConfigMoat, 10, m)
			hi, ok2 := med(ConfigMoat, 10000, m)
			if !ok1 || !ok2 || lo == 0 || hi == 0 {
				flat.met = false
				continue
			}
			ratio := hi / lo // worse when higher for latency
			if m != MetricRRP50 {
				ratio = lo / hi
			}
			flat.met = flat.met && ratio <= 1.15
			parts = append(parts, fmt.Sprintf("%s %.2fx", m, ratio))
		}
		flat.detail = strings.Join(parts, ", ")
	} else {
		flat.detail = "needs N=10 and N=10,000"
	}
	out = append(out, flat)
	vs := check{name: "At N=10,000 Moat has >= 2x the throughput and 5x lower request-response p50 than stateless " +
		"iptables-legacy (" + ConfigIptablesLegacyStateless + ")"}
	mt, ok1 := med(ConfigMoat, 10000, MetricThroughput1)
	it, ok2 := med(ConfigIptablesLegacyStateless, 10000, MetricThroughput1)
	ml, ok3 := med(ConfigMoat, 10000, MetricRRP50)
	il, ok4 := med(ConfigIptablesLegacyStateless, 10000, MetricRRP50)
	if ok1 && ok2 && ok3 && ok4 && it > 0 && ml > 0 {
		vs.met = mt/it >= 2 && il/ml >= 5
		vs.detail = fmt.Sprintf("throughput %.2fx, p50 %.2fx lower", mt/it, il/ml)
	} else {
		vs.detail = "needs N=10,000"
	}
	return append(out, vs)
}

// WritePlots writes benchmarks-rr.svg (request-response p50) and benchmarks-throughput.svg (one stream) into
// dir: a line per configuration against N on a log axis.
func WritePlots(dir string, results []Result) error {
	for _, p := range []struct{ file, metric, title string }{
		{"benchmarks-rr.svg", MetricRRP50, "TCP request-response p50 (µs)"},
		{"benchmarks-throughput.svg", MetricThroughput1, "TCP throughput, one stream (Gbit/s)"},
	} {
		if err := os.WriteFile(filepath.Join(dir, p.file), []byte(plot(results, p.metric, p.title)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

var colors = map[string]string{ConfigNone: "#555555", ConfigMoat: "#1f77b4", ConfigIptablesLegacy: "#d62728",
	ConfigIptablesLegacyStateless: "#9467bd", ConfigIptablesNft: "#ff7f0e", ConfigNftables: "#2ca02c"}

// plot is a hand-written SVG line chart of metric against N (log x axis, linear y axis from 0).
func plot(results []Result, metric, title string) string {
	t, ns, cfgs := index(results)
	const w, h, left, right, top, bottom = 700.0, 400.0, 60.0, 210.0, 40.0, 50.0 // right: the legend's longest name
	pw, ph := w-left-right, h-top-bottom
	ymax := 0.0
	for _, cfg := range cfgs {
		for _, n := range ns {
			if r, ok := t.get(cfg, n, metric); ok {
				ymax = max(ymax, r.Max)
			}
		}
	}
	ymax = niceCeil(ymax)
	lo, hi := 1.0, 4.0
	if len(ns) > 0 {
		lo, hi = math.Log10(float64(ns[0])), math.Log10(float64(ns[len(ns)-1]))
	}
	if hi == lo {
		hi = lo + 1
	}
	x := func(n int) float64 { return left + (math.Log10(float64(n))-lo)/(hi-lo)*pw }
	y := func(v float64) float64 { return top + ph - v/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="14">%s</text>`+"\n", left, esc(title))
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", left, top+ph, left+pw, top+ph)
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>`+"\n", left, top, left, top+ph)
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#dddddd"/>`+"\n", left, y(v), left+pw, y(v))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, num(v))
	}
	for _, n := range ns {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x(n), top+ph+18, commas(int64(n)))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">rules (N, log scale)</text>`+"\n", left+pw/2, h-10)
	for i, cfg := range cfgs {
		var pts []string
		for _, n := range ns {
			if r, ok := t.get(cfg, n, metric); ok {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(n), y(r.Median)))
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(n), y(r.Median), colors[cfg])
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", colors[cfg], strings.Join(pts, " "))
		ly := top + 10 + float64(i)*18
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"/>`+"\n", left+pw+12, ly, left+pw+32, ly, colors[cfg])
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s</text>`+"\n", left+pw+38, ly+4, esc(cfg))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
