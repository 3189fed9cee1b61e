package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// dnsHeading opens the DNS section (benchdoc -dns rewrites only it); it runs to the next heading of its level or
// the page's footer.
const dnsHeading = "## DNS: answer latency and resolve-then-connect\n"

// dnsBenchmarks are the DNS benchmarks of ./bpf/, run count times each with loops as -benchtime.
const dnsBenchmarks = "^Benchmark(DNSAnswer|ResolveConnect)$"

// dnsAnswerTarget is the target for the latency Moat adds to a DNS answer, at p99, in ns.
const dnsAnswerTarget = 20000

// dnsSection runs the DNS benchmarks count times, one run of each in turn, so that both filters and every path
// meet the machine's moods alike (go test -count runs a sub-benchmark's runs one after the other), and renders their
// section.
func dnsSection(loops string, count int) string {
	var raw bytes.Buffer
	for range max(count, 1) {
		raw.ReadFrom(benchmark(dnsBenchmarks, loops, 1, "./bpf/"))
	}
	return renderDNS(&raw)
}

// dnsPaths are BenchmarkDNSAnswer's paths, in the table's order, with what each runs.
var dnsPaths = []struct{ path, what string }{
	{"udp", "a UDP reply from port 5353: the pipeline only (baseline)"},
	{"answer", "a trusted resolver's answer, no fqdn pattern: read, counted, reported"},
	{"fqdn", "the same for a name of the pod's fqdn patterns: also learned"},
}

// failedLoop is a failed loop that BenchmarkResolveConnect logs.
var failedLoop = regexp.MustCompile(`bench_dns_test\.go:\d+: (loop \d+: .*)$`)

// renderDNS is the DNS section: BenchmarkDNSAnswer's latencies by path and BenchmarkResolveConnect's loops by
// filter, with the targets.
func renderDNS(raw io.Reader) string {
	text, _ := io.ReadAll(raw)
	median := func(v []float64) float64 { return summarize(append([]float64(nil), v...)).median }
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", dnsHeading)
	fmt.Fprintf(&b, "- Date: %s; machine: %s, %d CPUs; kernel %s; %s.\n", time.Now().UTC().Format("2006-01-02"),
		cpuModel(), runtime.NumCPU(), kernel(), runtime.Version())
	b.WriteString(vmCaveat())
	runs := max(len(parseMetrics(bytes.NewReader(text), "BenchmarkResolveConnect/filter=moat")["loops"]),
		len(parseMetrics(bytes.NewReader(text), "BenchmarkDNSAnswer/path=fqdn")["p99-ns"]))
	times := map[bool]string{true: "once", false: fmt.Sprintf("%d times", runs)}[runs <= 1]
	fmt.Fprintf(&b, "- `go test -run '^$' -bench '%s' -benchtime %s ./bpf/`, %s; a cell is\n",
		dnsBenchmarks, loopsOf(text), times)
	fmt.Fprintf(&b, "  the median (min-max) of the runs when there were more than one.\n\n")

	fmt.Fprintf(&b, "### What Moat adds to a DNS answer\n\n")
	fmt.Fprintf(&b, "`BenchmarkDNSAnswer`: the program a pod's host veth runs on what goes to the pod (`moat_to_pod`), on one\n")
	fmt.Fprintf(&b, "49-byte answer for api.example.com (one A record), run by BPF_PROG_TEST_RUN one packet at a time: each\n")
	fmt.Fprintf(&b, "run's time is the kernel's own (its clock stops while the thread is rescheduled; interrupts taken during\n")
	fmt.Fprintf(&b, "the run count in it), so p50 and p99 are of single packets. An answer from port 53 tail-calls\n")
	fmt.Fprintf(&b, "`moat_dns_answer`, which tail-calls `moat_to_pod_answered`: both are in the run's time. Before every run\n")
	fmt.Fprintf(&b, "the pod's query goes out through `moat_from_pod` (not timed), so the answer is a reply of an established\n")
	fmt.Fprintf(&b, "flow whose query is on record (its latency is counted), and the policy path is the same on every path.\n")
	fmt.Fprintf(&b, "Every answer is reported (the budget of events of answers no pattern matched is set so that none is\n")
	fmt.Fprintf(&b, "sampled away) and a reader drains the event ring as the agent does, so every report pays for its place\n")
	fmt.Fprintf(&b, "in the ring and for waking the reader. Without a filter no program runs: what Moat adds is the whole\n")
	fmt.Fprintf(&b, "run. The added columns are what the DNS stage adds to the pipeline alone (the path's median minus\n")
	fmt.Fprintf(&b, "`udp`'s). Microseconds.\n\n")
	fmt.Fprintf(&b, "| path | what runs | p50 | p99 | added p50 | added p99 | p99 <= %.0f µs |\n", float64(dnsAnswerTarget)/1000)
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|\n")
	us := func(v []float64) []float64 {
		out := make([]float64, len(v))
		for i := range v {
			out[i] = v[i] / 1000
		}
		return out
	}
	base := parseMetrics(bytes.NewReader(text), "BenchmarkDNSAnswer/path=udp")
	var answerMet []bool
	var answerP99 []string
	for _, p := range dnsPaths {
		m := parseMetrics(bytes.NewReader(text), "BenchmarkDNSAnswer/path="+p.path) // no path's name begins another's
		if len(m["p99-ns"]) == 0 {
			fmt.Fprintf(&b, "| %s | %s | - | - | - | - | not measured |\n", p.path, p.what)
			continue
		}
		added50, added99, verdict := "-", "-", "-"
		if p.path != "udp" {
			ok := median(m["p99-ns"]) <= dnsAnswerTarget
			answerMet = append(answerMet, ok)
			answerP99 = append(answerP99, fmt.Sprintf("%s %.2f µs", p.path, median(m["p99-ns"])/1000))
			verdict = "**" + met(ok) + "**"
			if len(base["p99-ns"]) > 0 {
				added50 = fmt.Sprintf("%.2f", (median(m["p50-ns"])-median(base["p50-ns"]))/1000)
				added99 = fmt.Sprintf("%.2f", (median(m["p99-ns"])-median(base["p99-ns"]))/1000)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", p.path, p.what, cellN(us(m["p50-ns"]), 2),
			cellN(us(m["p99-ns"]), 2), added50, added99, verdict)
	}

	fmt.Fprintf(&b, "\n### Resolve, then connect at once\n\n")
	fmt.Fprintf(&b, "`BenchmarkResolveConnect`: a pod on a real veth resolves a name never asked before (n<i>.cdn.example,\n")
	fmt.Fprintf(&b, "AAAA, from a miekg/dns resolver on the host side that answers 2001:db8:1::<i>), then connects to the\n")
	fmt.Fprintf(&b, "address on TCP 443 with a timeout of 900 ms, under the first SYN retransmission's 1 s, and closes; a\n")
	fmt.Fprintf(&b, "local route of 2001:db8:1::/64 on the host side lets one listener accept every address. A loop succeeds\n")
	fmt.Fprintf(&b, "on the first try when the connection is made within the 900 ms: a first SYN the firewall dropped fails\n")
	fmt.Fprintf(&b, "it. With Moat (tcx on the host veth) the world is denied but for UDP 53 to the resolver and\n")
	fmt.Fprintf(&b, "`*.cdn.example` on TCP 443, the resolver is trusted, and **no agent runs**: only the kernel learns, from\n")
	fmt.Fprintf(&b, "the answers on their way to the pod. The per-namespace bound of learned addresses is the default's 4,096:\n")
	fmt.Fprintf(&b, "a loop of 10,000 goes past it, where the kernel learns all the same and asks an agent for room. SYN\n")
	fmt.Fprintf(&b, "retransmits are the pod's namespace's RetransSegs (/proc/net/snmp) before and after the loop; the DNS\n")
	fmt.Fprintf(&b, "round trip is the client's, from its write to its read. Loops, connects and retransmits of all the runs;\n")
	fmt.Fprintf(&b, "microseconds.\n\n")
	fmt.Fprintf(&b, "| filter | loops | first-try connects | SYN retransmits | DNS p50 | DNS p99 | connect p50 | connect p99 |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|\n")
	modes := map[string]map[string][]float64{}
	for _, f := range []struct{ filter, name string }{{"none", "without Moat"}, {"moat", "Moat, the kernel learning, no agent"}} {
		m := parseMetrics(bytes.NewReader(text), "BenchmarkResolveConnect/filter="+f.filter)
		if len(m["loops"]) == 0 {
			fmt.Fprintf(&b, "| %s | not measured | | | | | | |\n", f.name)
			continue
		}
		modes[f.filter] = m
		loops, failed, retrans := sum(m["loops"]), sum(m["failed"]), sum(m["syn-retrans"])
		fmt.Fprintf(&b, "| %s | %d x %.0f | %.0f of %.0f (%.2f%%) | %.0f | %s | %s | %s | %s |\n", f.name, len(m["loops"]),
			median(m["loops"]), loops-failed, loops, math.Floor(10000*(loops-failed)/loops)/100, retrans, cellN(m["dns-p50-us"], 0),
			cellN(m["dns-p99-us"], 0), cellN(m["connect-p50-us"], 0), cellN(m["connect-p99-us"], 0))
	}
	var failures []string
	for _, l := range textLines(text) {
		if f := failedLoop.FindStringSubmatch(l); f != nil {
			failures = append(failures, f[1])
		}
	}
	if len(failures) > 0 {
		fmt.Fprintf(&b, "\nLoops that failed (up to 5 of those logged):\n\n")
		for _, f := range failures[:min(len(failures), 5)] {
			fmt.Fprintf(&b, "- `%s`\n", f)
		}
	}

	fmt.Fprintf(&b, "\n### Targets\n\n")
	if len(answerMet) > 0 {
		all := true
		for _, ok := range answerMet {
			all = all && ok
		}
		fmt.Fprintf(&b, "- What Moat adds to a DNS answer, p99 <= %.0f µs (the whole run, median of the runs; without a filter\n",
			float64(dnsAnswerTarget)/1000)
		fmt.Fprintf(&b, "  nothing runs): %s: **%s**.\n", strings.Join(answerP99, ", "), met(all))
	}
	if m, ok := modes["moat"]; ok {
		loops, failed, retrans := sum(m["loops"]), sum(m["failed"]), sum(m["syn-retrans"])
		fmt.Fprintf(&b, "- First-connection success with no agent, 100%% of %.0f resolve-then-connect loops: %.0f failed:\n", loops, failed)
		fmt.Fprintf(&b, "  **%s**; zero SYN retransmits: %.0f: **%s**.\n", met(failed == 0), retrans, met(retrans == 0))
		if n, ok := modes["none"]; ok {
			fmt.Fprintf(&b, "- The DNS round trip with Moat against without (medians): p50 %+.0f µs, p99 %+.0f µs; the tails of this\n",
				median(m["dns-p50-us"])-median(n["dns-p50-us"]), median(m["dns-p99-us"])-median(n["dns-p99-us"]))
			fmt.Fprintf(&b, "  machine's round trips move by as much from run to run (the min-max above).\n")
		}
	}
	return b.String()
}

// cellN is a median with its spread when there was more than one run, with prec decimals; "-" when none.
func cellN(v []float64, prec int) string {
	if len(v) == 0 {
		return "-"
	}
	s := summarize(append([]float64(nil), v...))
	if len(v) < 2 {
		return fmt.Sprintf("%.*f", prec, s.median)
	}
	return fmt.Sprintf("%.*f (%.*f-%.*f)", prec, s.median, prec, s.min, prec, s.max)
}

// sum is the sum of v.
func sum(v []float64) float64 {
	var t float64
	for _, x := range v {
		t += x
	}
	return t
}

// textLines are the lines of text.
func textLines(text []byte) []string { return strings.Split(string(text), "\n") }

// loopsOf is the -benchtime of the run in text, from its result lines' iterations ("?" when none).
func loopsOf(text []byte) string {
	for _, l := range textLines(text) {
		if f := strings.Fields(l); len(f) > 2 && strings.HasPrefix(f[0], "BenchmarkResolveConnect/") {
			return f[1] + "x"
		}
	}
	for _, l := range textLines(text) {
		if f := strings.Fields(l); len(f) > 2 && strings.HasPrefix(f[0], "BenchmarkDNSAnswer/") {
			return f[1] + "x"
		}
	}
	return "?"
}

// vmCaveat is a line saying so when the machine is a virtual machine: a guest pays for interrupts between CPUs
// and for timers with exits to its host, and work elsewhere on the host counts in its tails.
func vmCaveat() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil || !regexp.MustCompile(`(?m)^flags\s*:.*\bhypervisor\b`).Match(data) {
		return ""
	}
	return fmt.Sprintf("- **A %d-vCPU virtual machine**, shared: interrupts between CPUs (waking the event ring's reader)\n"+
		"  cost exits to the host, and other work on the machine counts in the tails; read a tail as an upper bound.\n",
		runtime.NumCPU())
}

// replaceDNS puts section (which begins with its heading, after a blank line) in the place of page's DNS section,
// which runs to the next heading of its level or the footer; a page without one gets it before its footer (the
// last "---" line), or at its end.
func replaceDNS(page, section string) string {
	section = strings.TrimPrefix(section, "\n")
	if start := strings.Index(page, dnsHeading); start >= 0 {
		end := len(page)
		rest := page[start+len(dnsHeading):]
		for _, sep := range []string{"\n## ", "\n---\n"} {
			if i := strings.Index(rest, sep); i >= 0 {
				end = min(end, start+len(dnsHeading)+i+1)
			}
		}
		return page[:start] + section + "\n" + page[end:]
	}
	if foot := strings.LastIndex(page, "\n---\n"); foot >= 0 {
		return page[:foot+1] + section + "\n" + page[foot+1:]
	}
	return strings.TrimSuffix(page, "\n") + "\n\n" + section
}
