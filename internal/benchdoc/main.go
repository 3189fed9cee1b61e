// Command benchdoc runs the benchmarks and writes their results into docs/benchmarks.md: the machine, the
// medians and spreads of the datapath's cost per packet, the plugin's ADD and DEL, the enforcer's change ->
// enforced latency and memory, the side-by-side comparison with no filter, iptables and nftables
// (internal/sidebyside, with its SVG plots), pod churn, rule changes, and which targets are met.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"iter"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/internal/sidebyside"
)

var line = regexp.MustCompile(`^BenchmarkVerdict/rules=(\d+)/path=([a-z-]+)(?:-\d+)?\s+\d+\s+(.*)$`)

type sample struct {
	rules int
	path  string
	ns    float64
	empty float64
	perRule,
	bytesPerRule float64
}

func main() {
	out := flag.String("out", "docs/benchmarks.md", "file to write")
	count := flag.Int("count", 3, "runs of each benchmark")
	benchtime := flag.String("benchtime", "200000x", "go test -benchtime")
	quick := flag.Bool("quick", false, "a smaller run (N=10 and 10,000 only, fewer repetitions): make bench QUICK=1")
	datapathOnly := flag.Bool("datapath", false, "run only the datapath benchmark and rewrite only its section of -out")
	from := flag.String("from", "", "with -datapath: read BenchmarkVerdict's output from this file instead of running it")
	podsOnly := flag.Bool("pods", false, "run only the plugin, attach and pod churn benchmarks and rewrite only their sections of -out")
	dnsOnly := flag.Bool("dns", false, "run only the DNS benchmarks (answer latency, resolve-then-connect) and rewrite only their section of -out")
	scaleOnly := flag.Bool("scale", false, "rewrite only the API-server scale section of -out, from benchmarks-scale.md beside it (make scale writes that page)")
	flag.Parse()
	scalePage, _ := os.ReadFile(filepath.Join(filepath.Dir(*out), "benchmarks-scale.md")) // none yet: no comparison
	if *scaleOnly {
		old, err := os.ReadFile(*out)
		if err != nil {
			log.Fatal(err)
		}
		page, err := replaceScale(string(old), renderScale(string(scalePage)))
		if err != nil {
			log.Fatalf("benchdoc: %s: %v", *out, err)
		}
		if err := os.WriteFile(*out, []byte(page), 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "benchdoc: rewrote the API-server scale section of %s\n", *out)
		return
	}
	quickRun = *quick
	started := time.Now()
	verdict, change, sizes, changes := "^BenchmarkVerdict$", "^BenchmarkChangeEnforced$", []int{10, 1000, 10000}, 20
	attaches, churn := "100x", "^BenchmarkPodChurn$"
	if *quick {
		attaches, churn = "20x", "^BenchmarkPodChurn$/^mode=(none|default)" // one round (MOAT_BENCH_QUICK)
		*count = 1
		verdict = "^BenchmarkVerdict$/^rules=(10|10000)$"
		change = "^BenchmarkChangeEnforced$/^source=folder$/^rules=(10|10000)$"
		sizes, changes = []int{10, 10000}, 10
	}

	dnsLoops := "10000x"
	if *quick {
		dnsLoops = "1000x"
	}
	if *dnsOnly {
		old, err := os.ReadFile(*out)
		if err != nil {
			logrus.Fatal(err)
		}
		if err := os.WriteFile(*out, []byte(replaceDNS(string(old), dnsSection(dnsLoops, *count))), 0o644); err != nil {
			logrus.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "benchdoc: rewrote the DNS section of %s\n", *out)
		return
	}

	if *podsOnly {
		old, err := os.ReadFile(*out)
		if err != nil {
			log.Fatal(err)
		}
		plugin, churned := podSections(*count, attaches, churn)
		page, err := replaceSection(string(old), pluginHeading, plugin)
		if err == nil {
			page, err = replaceSection(page, churnHeading, churned)
		}
		if err != nil {
			log.Fatalf("benchdoc: %s: %v", *out, err)
		}
		if err := os.WriteFile(*out, []byte(page), 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "benchdoc: rewrote the plugin and pod churn sections of %s\n", *out)
		return
	}

	var raw io.Reader
	if *datapathOnly && *from != "" {
		f, err := os.ReadFile(*from)
		if err != nil {
			log.Fatal(err)
		}
		raw = bytes.NewReader(f)
	} else {
		raw = benchmark(verdict, *benchtime, *count, "./bpf/")
	}
	samples := parse(raw)
	if len(samples) == 0 {
		log.Fatal("benchdoc: no BenchmarkVerdict results in the output")
	}
	if *datapathOnly {
		old, err := os.ReadFile(*out)
		if err != nil {
			log.Fatal(err)
		}
		section := renderDatapath(samples)
		if *from != "" {
			section = strings.Replace(section, "\n\n| rules |", "\n- Rendered from a saved run (`benchdoc -datapath -from`), not measured by this regeneration: "+
				"[benchmarks-findings.md]("+findings+"#datapath-where-the-time-goes) says when and how.\n\n| rules |", 1)
		}
		page, err := replaceDatapath(string(old), section)
		if err != nil {
			log.Fatalf("benchdoc: %s: %v", *out, err)
		}
		if err := os.WriteFile(*out, []byte(page), 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "benchdoc: rewrote the datapath section of %s\n", *out)
		return
	}
	doc := render(samples)
	doc += dnsSection(dnsLoops, *count)
	sbs := sidebyside.Options{Quick: *quick, Duration: time.Second, StreamDuration: 2 * time.Second, Reps: 3}
	if *quick {
		sbs.StreamDuration, sbs.Reps = time.Second, 1
	}
	results, err := sidebyside.Run(context.Background(), sbs, os.Stderr)
	if err != nil {
		log.Fatalf("benchdoc: side by side: %v", err)
	}
	doc += "\n" + sidebyside.Render(results)
	if err := sidebyside.WritePlots(filepath.Dir(*out), results); err != nil {
		log.Fatalf("benchdoc: plots: %v", err)
	}
	doc += "\n![request-response p50 against N](benchmarks-rr.svg)\n![throughput against N](benchmarks-throughput.svg)\n"
	plugin, churned := podSections(*count, attaches, churn)
	doc += plugin + churned
	p50, p99 := parseChange(benchmark(change, "20x", 1, "./internal/enforcer/"))
	doc += renderChange(p50, p99)
	rcs, err := measureRuleChanges(sizes, changes)
	if err != nil {
		log.Fatalf("benchdoc: rule changes: %v", err)
	}
	doc += renderRuleChanges(rcs, folderP50(p50))
	doc += renderRSS(parseMetrics(benchmark("^BenchmarkEnforcerRSS$", "1x", 1, "./enforcer/"), "BenchmarkEnforcerRSS"),
		parseMetrics(benchmark("^BenchmarkEndpointBytes$", "1x", 1, "./bpf/"), "BenchmarkEndpointBytes"))
	doc += renderScale(string(scalePage))
	doc += fmt.Sprintf("\n---\n`make bench%s` took %s.\n", map[bool]string{true: " QUICK=1", false: ""}[*quick],
		time.Since(started).Round(time.Second))
	if err := os.WriteFile(*out, []byte(doc), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "benchdoc: wrote %s\n", *out)
}

// quickRun is make bench QUICK=1: benchmarks run with MOAT_BENCH_QUICK=1.
var quickRun bool

// benchmark runs the benchmarks matching pattern in pkg, echoing their output, and returns it.
func benchmark(pattern, benchtime string, count int, pkg string) *bytes.Buffer {
	// no 10-minute default: the pod churn rounds run longer on a busy machine
	args := []string{"test", "-timeout", "60m", "-run", "^$", "-bench", pattern, "-benchtime", benchtime, "-count", strconv.Itoa(count), pkg}
	fmt.Fprintf(os.Stderr, "benchdoc: go %s\n", strings.Join(args, " "))
	cmd := exec.Command("go", args...)
	if quickRun {
		cmd.Env = append(os.Environ(), "MOAT_BENCH_QUICK=1") // the benchmarks take fewer pods
	}
	var raw bytes.Buffer
	cmd.Stdout = io.MultiWriter(&raw, os.Stderr)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatalf("benchdoc: benchmarks %s in %s failed: %v", pattern, pkg, err)
	}
	return &raw
}

func parse(r io.Reader) []sample {
	var out []sample
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		s := sample{path: m[2]}
		s.rules, _ = strconv.Atoi(m[1])
		for v, unit := range metrics(strings.Fields(m[3])) {
			switch unit {
			case "ns/op":
				s.ns = v
			case "empty-ns":
				s.empty = v
			case "entries/rule":
				s.perRule = v
			case "bytes/rule":
				s.bytesPerRule = v
			}
		}
		out = append(out, s)
	}
	return out
}

type stat struct{ median, min, max float64 }

// summarize is the median, min and max of v; zero when there is nothing to summarise.
func summarize(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return stat{med, v[0], v[n-1]}
}

func render(samples []sample) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Regenerated whole by `make bench` (`make bench QUICK=1`: N = 10 and 10,000 only, fewer repetitions), on\n")
	fmt.Fprintf(&b, "one machine in one run: the datapath's cost per packet, what it adds to a DNS answer and a resolve then\n")
	fmt.Fprintf(&b, "connect with no agent, Moat side by side with no filter, iptables and nftables, the plugin's ADD and\n")
	fmt.Fprintf(&b, "DEL, pod churn through the whole chain, policy change to enforced (and a rule change in iptables and\n")
	fmt.Fprintf(&b, "nftables), and memory. Each section says which of the targets are met.\n")
	fmt.Fprintf(&b, "What profiles and one-off runs found about these numbers, dated, is written by hand in\n")
	fmt.Fprintf(&b, "[benchmarks-findings.md](%s).\n\n", findings)
	b.WriteString(renderDatapath(samples))
	return b.String()
}

// datapathHeading opens the datapath section; the section runs to the next heading of its level.
const datapathHeading = "## Datapath: cost per packet (BPF_PROG_TEST_RUN)\n"

// replaceDatapath puts section in the place of the datapath section of page (benchdoc -datapath).
func replaceDatapath(page, section string) (string, error) {
	start := strings.Index(page, datapathHeading)
	if start < 0 {
		return "", fmt.Errorf("no %q heading", strings.TrimSpace(datapathHeading))
	}
	end := len(page)
	if next := strings.Index(page[start+len(datapathHeading):], "\n## "); next >= 0 {
		end = start + len(datapathHeading) + next + 1
	}
	return page[:start] + section + "\n" + page[end:], nil
}

// datapathTargets are issue 16's targets per path: ns per packet at every N (net of the empty program).
var datapathTargets = []struct {
	path, what string
	ns         float64
}{
	{"ct-hit", "established", 60},
	{"miss", "first packet", 150}, {"allow", "first packet", 150}, {"deny", "first packet", 150},
	{"syn", "SYN on a reused port", 200}, {"syn-new", "SYN with its insert", 200},
}

// renderDatapath is the datapath section: BenchmarkVerdict's table and its targets.
func renderDatapath(samples []sample) string {
	paths := []string{"miss", "allow", "deny", "ct-hit", "syn", "syn-new"}
	type key struct {
		rules int
		path  string
	}
	ns := map[key][]float64{}
	empty := []float64{}
	perRule := map[int]float64{}
	bytesPerRule := map[int]float64{}
	rulesSet := map[int]bool{}
	for _, s := range samples {
		k := key{s.rules, s.path}
		ns[k] = append(ns[k], s.ns)
		if s.path != "syn-new" { // net of its wrapper around the empty program, not of the empty program alone
			empty = append(empty, s.empty)
		}
		rulesSet[s.rules] = true
		if s.path == "allow" {
			perRule[s.rules] = s.perRule
			bytesPerRule[s.rules] = s.bytesPerRule
		}
	}
	var rules []int
	for r := range rulesSet {
		rules = append(rules, r)
	}
	sort.Ints(rules)

	var b strings.Builder
	fmt.Fprintf(&b, "## Datapath: cost per packet (BPF_PROG_TEST_RUN)\n\n")
	fmt.Fprintf(&b, "- Date: %s; machine: %s, %d CPUs; kernel %s; %s.\n", time.Now().UTC().Format("2006-01-02"),
		cpuModel(), runtime.NumCPU(), kernel(), runtime.Version())
	es := summarize(empty)
	fmt.Fprintf(&b, "- `go test -bench BenchmarkVerdict ./bpf/`: N egress rules of one identity with distinct CIDRs and ports, the\n")
	runs := 0
	for _, v := range ns {
		runs = max(runs, len(v))
	}
	fmt.Fprintf(&b, "  matching one last. Each cell is the median (min-max) over %d runs of ns per packet, **net of an empty\n", runs)
	fmt.Fprintf(&b, "  program** run through the same harness (%.1f ns median, the cost of BPF_PROG_TEST_RUN itself).\n", es.median)
	fmt.Fprintf(&b, "- Paths: `miss` no rule matches (world default); `allow`/`deny` the last rule decides a new flow (RST, so\n")
	fmt.Fprintf(&b, "  no conntrack entry is made and every run is a new flow); `ct-hit` a packet of an established flow; `syn` an\n")
	fmt.Fprintf(&b, "  allowed SYN of the same flow every run (a SYN on a reused port: it writes over the flow's conntrack entry);\n")
	fmt.Fprintf(&b, "  `syn-new` an allowed SYN of a flow never seen before, which inserts its conntrack entry (a wrapper program\n")
	fmt.Fprintf(&b, "  gives every run a new source port and destination and tail-calls the datapath; net of the same wrapper\n")
	fmt.Fprintf(&b, "  around the empty program; the table fills up to 200,000 entries and never evicts).\n")
	fmt.Fprintf(&b, "- The endpoint has a conntrack bound, as the enforcer always sets one, so a new flow pays for its count.\n\n")
	fmt.Fprintf(&b, "| rules | %s | policy entries per rule | policy bytes per rule |\n", strings.Join(paths, " | "))
	fmt.Fprintf(&b, "|---|%s---|---|\n", strings.Repeat("---|", len(paths)))
	for _, r := range rules {
		var cells []string
		for _, p := range paths {
			if v := ns[key{r, p}]; len(v) > 0 {
				s := summarize(v)
				cells = append(cells, fmt.Sprintf("%.1f (%.1f-%.1f)", s.median, s.min, s.max))
			} else {
				cells = append(cells, "-")
			}
		}
		fmt.Fprintf(&b, "| %d | %s | %.2f | %.0f |\n", r, strings.Join(cells, " | "), perRule[r], bytesPerRule[r])
	}
	fmt.Fprintf(&b, "\nPolicy bytes are the kernel's accounting of the identity's LPM trie (memlock: entries x (node + key +\n")
	fmt.Fprintf(&b, "value)); the per-endpoint, conntrack and ipcache maps are not in it.\n\n")

	fmt.Fprintf(&b, "### Targets\n\n")
	lo, hi := rules[0], rules[len(rules)-1]
	for _, t := range datapathTargets {
		worst, seen := 0.0, false
		for _, r := range rules {
			if v := ns[key{r, t.path}]; len(v) > 0 {
				worst, seen = max(worst, summarize(v).median), true
			}
		}
		if seen {
			fmt.Fprintf(&b, "- %s (%s) <= %.0f ns at every N: worst median %.1f ns: **%s**.\n", t.what, t.path, t.ns, worst,
				met(worst <= t.ns))
		}
	}
	for _, p := range paths {
		a, z := ns[key{lo, p}], ns[key{hi, p}]
		if len(a) == 0 || len(z) == 0 {
			continue
		}
		ratio := summarize(z).median / summarize(a).median
		fmt.Fprintf(&b, "- %s: rules=%d / rules=%d = %.2fx (target <= 1.15x): **%s**.\n", p, hi, lo, ratio, met(ratio <= 1.15))
	}
	fmt.Fprintf(&b, "\nWhere the time goes, from profiles: [benchmarks-findings.md](%s#datapath-where-the-time-goes).\n", findings)
	return b.String()
}

// findings is the hand-written page of what profiles and one-off runs found, beside the generated one.
const findings = "benchmarks-findings.md"

// metrics yields the "value unit" pairs of a benchmark result line, fields being the line's fields after the
// benchmark's name and iterations; a pair whose value is no number is passed over.
func metrics(fields []string) iter.Seq2[float64, string] {
	return func(yield func(float64, string) bool) {
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			if !yield(v, fields[i+1]) {
				return
			}
		}
	}
}

// parseMetrics collects every custom metric of the named benchmark's result lines, run by run.
func parseMetrics(r io.Reader, name string) map[string][]float64 {
	out := map[string][]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], name) {
			continue
		}
		for v, unit := range metrics(f[2:]) {
			out[unit] = append(out[unit], v)
		}
	}
	return out
}

// byMode yields, for each attach mode in the order the tables list them, the metrics of bench's sub-benchmark of
// that mode (bench/mode=none for the chain without Moat, then default, tcx, clsact) in raw; a mode the run did not
// have yields no metrics.
func byMode(raw []byte, bench string) iter.Seq2[string, map[string][]float64] {
	return func(yield func(string, map[string][]float64) bool) {
		for _, mode := range []string{"none", "default", "tcx", "clsact"} {
			if !yield(mode, parseMetrics(bytes.NewReader(raw), bench+"/mode="+mode)) {
				return
			}
		}
	}
}

func renderPlugin(raw io.Reader) string {
	text, _ := io.ReadAll(raw)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", pluginHeading)
	fmt.Fprintf(&b, "`go test -bench BenchmarkPluginAddDel ./plugin/`: the `moat` binary run as a runtime runs it (process start\n")
	fmt.Fprintf(&b, "included, the primary plugin not), ADD then DEL of %.0f pods per run on a veth the test made, with each\n",
		summarize(parseMetrics(bytes.NewReader(text), "BenchmarkPluginAddDel/")["pods"]).median)
	fmt.Fprintf(&b, "`attachMode`. Milliseconds, median (min-max) over the runs.\n\n")
	fmt.Fprintf(&b, "| attachMode | command | p50 | p99 | p99 <= 20 | p50 <= 5 |\n|---|---|---|---|---|---|\n")
	for mode, m := range byMode(text, "BenchmarkPluginAddDel") {
		for _, cmd := range []string{"add", "del"} {
			p50, p99 := m[cmd+"-p50-ms"], m[cmd+"-p99-ms"]
			if len(p50) == 0 || len(p99) == 0 {
				continue
			}
			a, z := summarize(p50), summarize(p99)
			fmt.Fprintf(&b, "| %s | %s | %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | **%s** | **%s** |\n", mode,
				strings.ToUpper(cmd), a.median, a.min, a.max, z.median, z.min, z.max, met(z.median <= 20), met(a.median <= 5))
		}
	}
	fmt.Fprintf(&b, "\n`BenchmarkAttach` (./bpf/) isolates the attach: %s.\n", renderAttach(text))
	fmt.Fprintf(&b, "Why tcx costs more: [benchmarks-findings.md](%s#plugin-and-pod-churn-the-kernels-grace-periods).\n\n", findings)
	fmt.Fprintf(&b, "The default mode keeps tcx's place at the head of both hooks without paying for it on the pod's ADD: Moat's\n")
	fmt.Fprintf(&b, "clsact filters go first on a host veth that has no tcx program, and the enforcer moves them to tcx links\n")
	fmt.Fprintf(&b, "at the head afterwards, paced; DEL leaves tcx links for the kernel to drop with the veth. `attachMode: tcx`\n")
	fmt.Fprintf(&b, "attaches tcx at ADD; `attachMode: clsact` (`moat-install --attach-mode clsact`) stays in clsact, for nodes\n")
	fmt.Fprintf(&b, "whose primary CNI hangs no programs on host veths; the plugin refuses it on a veth that has tcx programs.\n")
	fmt.Fprintf(&b, "What holds while a pod is staged: [cni.md](cni.md#attach-modes).\n")
	return b.String()
}

// renderAttach summarises BenchmarkAttach's lines in raw: p50 and p99 of an attach by mode.
func renderAttach(raw []byte) string {
	var parts []string
	for mode, m := range byMode(raw, "BenchmarkAttach") {
		if len(m["p50-ms"]) == 0 || len(m["p99-ms"]) == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s p50 %.2f ms, p99 %.2f ms", mode, summarize(m["p50-ms"]).median,
			summarize(m["p99-ms"]).median))
	}
	if len(parts) == 0 {
		return "no results"
	}
	return strings.Join(parts, "; ")
}

var changeLine = regexp.MustCompile(`^BenchmarkChangeEnforced/source=([a-z]+)/rules=(\d+)(?:-\d+)?\s+\d+\s+(.*)$`)

// changeKey is one BenchmarkChangeEnforced case: a source and the rules loaded.
type changeKey struct {
	source string
	rules  int
}

// parseChange reads BenchmarkChangeEnforced's p50 and p99 (ms) of every run, by case.
func parseChange(raw io.Reader) (p50, p99 map[changeKey][]float64) {
	p50, p99 = map[changeKey][]float64{}, map[changeKey][]float64{}
	sc := bufio.NewScanner(raw)
	for sc.Scan() {
		m := changeLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		rules, _ := strconv.Atoi(m[2])
		k := changeKey{m[1], rules}
		for v, unit := range metrics(strings.Fields(m[3])) {
			switch unit {
			case "p50-ms":
				p50[k] = append(p50[k], v)
			case "p99-ms":
				p99[k] = append(p99[k], v)
			}
		}
	}
	return p50, p99
}

// renderChange is the change -> enforced section: p50 and p99 by source and rules loaded.
func renderChange(p50, p99 map[changeKey][]float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Enforcer: policy change -> enforced\n\n")
	fmt.Fprintf(&b, "`go test -bench BenchmarkChangeEnforced -benchtime 20x ./internal/enforcer/`: N rules loaded (policies that\n")
	fmt.Fprintf(&b, "select the probe's namespace, with distinct CIDRs and ports), then 20 changes that flip one rule of a small\n")
	fmt.Fprintf(&b, "policy between Allow and Deny: a file renamed into the watched folder, or an update through a real\n")
	fmt.Fprintf(&b, "kube-apiserver. A probe runs the pod's program on a SYN every millisecond (BPF_PROG_TEST_RUN on the live\n")
	fmt.Fprintf(&b, "maps) until it sees the new verdict. Milliseconds, median (min-max) over the runs.\n\n")
	fmt.Fprintf(&b, "| source | rules | p50 | p99 | target (p99) |\n|---|---|---|---|---|\n")
	targets := map[string]float64{"folder": 100, "kubernetes": 100} // change -> enforced p99 <= 100 ms, whatever the source
	for _, src := range []string{"folder", "kubernetes"} {
		var rules []int
		for k := range p50 {
			if k.source == src {
				rules = append(rules, k.rules)
			}
		}
		sort.Ints(rules)
		for _, r := range rules {
			k := changeKey{src, r}
			if len(p99[k]) == 0 {
				continue
			}
			a, z := summarize(p50[k]), summarize(p99[k])
			fmt.Fprintf(&b, "| %s | %d | %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | <= %.0f: **%s** |\n", src, r,
				a.median, a.min, a.max, z.median, z.min, z.max, targets[src], met(z.median <= targets[src]))
		}
	}
	fmt.Fprintf(&b, "\nWhere a change's time goes: [benchmarks-findings.md](%s#enforcer-policy-change---enforced).\n", findings)
	return b.String()
}

// renderRSS is the enforcer's memory section.
func renderRSS(m, sizes map[string][]float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Enforcer: memory\n\n")
	fmt.Fprintf(&b, "`go test -bench BenchmarkEnforcerRSS -benchtime 1x ./enforcer/`: the real `moat-enforcer` with 250 recorded\n")
	fmt.Fprintf(&b, "pods (veths it adopts and attaches), 25 namespaces and 10,000 rules from a folder (each namespace selected\n")
	fmt.Fprintf(&b, "by 2,000 of them), read from /proc once all pods are attached and the policy is in force. MiB, median\n")
	fmt.Fprintf(&b, "(min-max) over %d runs.\n\n", len(m["rss-MiB"]))
	if len(m["rss-MiB"]) == 0 {
		return b.String()
	}
	r, h := summarize(m["rss-MiB"]), summarize(m["peak-rss-MiB"])
	fmt.Fprintf(&b, "| RSS | peak RSS | target (RSS) |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | <= 64: **%s** |\n", r.median, r.min, r.max, h.median, h.min, h.max, met(r.median <= 64))
	fmt.Fprintf(&b, "\nWhat the RSS is made of: [benchmarks-findings.md](%s#enforcer-memory).\n", findings)
	if len(sizes["bytes/endpoint"]) > 0 {
		v := func(k string) float64 { return summarize(sizes[k]).median }
		fmt.Fprintf(&b, "\nIn the maps (`go test -bench BenchmarkEndpointBytes ./bpf/`, key and value bytes, the kernel's per-element\n")
		fmt.Fprintf(&b, "bookkeeping on top): a pod %.0f bytes (its endpoint entry and the ipcache entries of an IPv4 and an IPv6\n", v("bytes/endpoint"))
		fmt.Fprintf(&b, "address), a tracked flow %.0f, a namespace identity %.0f; a rule costs the policy bytes per rule of the\n", v("bytes/flow"), v("bytes/namespace"))
		fmt.Fprintf(&b, "datapath table above.\n")
	}
	return b.String()
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.Index(l, ":"); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return "unknown CPU"
}

func kernel() string {
	data, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(data))
}
