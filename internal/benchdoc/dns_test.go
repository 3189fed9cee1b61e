package main

import (
	"strings"
	"testing"
)

// dnsRun is BenchmarkDNSAnswer's and BenchmarkResolveConnect's output, with a loop that failed under Moat.
const dnsRun = "BenchmarkDNSAnswer/path=udp-2 \t 10000\t 424.7 ns/op\t 0 added-p50-ns\t 0 added-p99-ns\t 401.0 p50-ns\t 671.0 p99-ns\n" +
	"BenchmarkDNSAnswer/path=answer-2 \t 10000\t 5091 ns/op\t 2435 added-p50-ns\t 22562 added-p99-ns\t 2836 p50-ns\t 23233 p99-ns\n" +
	"BenchmarkDNSAnswer/path=fqdn-2 \t 10000\t 3102 ns/op\t 2525 added-p50-ns\t 6041 added-p99-ns\t 2916 p50-ns\t 6553 p99-ns\n" +
	"BenchmarkResolveConnect/filter=none-2 \t 10000\t 322796 ns/op\t 131.9 connect-p50-us\t 209.4 connect-p99-us\t 78.56 dns-p50-us\t 171.2 dns-p99-us\t 0 failed\t 10000 loops\t 100.0 ok-pct\t 0 syn-retrans\n" +
	"BenchmarkResolveConnect/filter=moat-2 \t 10000\t 354775 ns/op\t 129.0 connect-p50-us\t 509.8 connect-p99-us\t 95.21 dns-p50-us\t 472.3 dns-p99-us\t 1 failed\t 10000 loops\t 99.99 ok-pct\t 0 syn-retrans\n" +
	"--- BENCH: BenchmarkResolveConnect/filter=moat-2\n" +
	"    bench_dns_test.go:377: loop 51: connect to 2001:db8:1::33: dial tcp [2001:db8:1::33]:443: i/o timeout\n" +
	"PASS\n"

// The DNS section has a row per path and per filter, judges the targets (a p99 over 20 µs, a loop that failed),
// quotes the failed loops, and says how the run was made.
func TestRenderDNS(t *testing.T) {
	out := renderDNS(strings.NewReader(dnsRun))
	for _, want := range []string{
		"\n" + dnsHeading + "\n",
		"-benchtime 10000x ./bpf/`, once;",
		"| udp | a UDP reply from port 5353: the pipeline only (baseline) | 0.40 | 0.67 | - | - | - |",
		"| answer | a trusted resolver's answer, no fqdn pattern: read, counted, reported | 2.84 | 23.23 | 2.44 | 22.56 | **not met** |",
		"| fqdn | the same for a name of the pod's fqdn patterns: also learned | 2.92 | 6.55 | 2.52 | 5.88 | **met** |",
		"| without Moat | 1 x 10000 | 10000 of 10000 (100.00%) | 0 | 79 | 171 | 132 | 209 |",
		"| Moat, the kernel learning, no agent | 1 x 10000 | 9999 of 10000 (99.99%) | 0 | 95 | 472 | 129 | 510 |",
		"- `loop 51: connect to 2001:db8:1::33: dial tcp [2001:db8:1::33]:443: i/o timeout`",
		"(the whole run, median of the runs; without a filter\n  nothing runs): answer 23.23 µs, fqdn 6.55 µs: **not met**.",
		"100% of 10000 resolve-then-connect loops: 1 failed:\n  **not met**; zero SYN retransmits: 0: **met**.",
		"p50 +17 µs, p99 +301 µs",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("DNS section lacks %q:\n%s", want, out)
		}
	}
	// three runs: medians and spreads; the loops and retransmits of all runs count against the targets
	three := strings.Repeat(dnsRun, 3)
	three = strings.Replace(three, "0 syn-retrans\n--- BENCH", "2 syn-retrans\n--- BENCH", 1)
	three = strings.Replace(three, "1 failed\t 10000 loops\t 99.99 ok-pct", "0 failed\t 10000 loops\t 100 ok-pct", 2)
	out = renderDNS(strings.NewReader(three))
	for _, want := range []string{"-benchtime 10000x ./bpf/`, 3 times;", "| 2.84 (2.84-2.84) | 23.23 (23.23-23.23) | 2.44 | 22.56 |",
		"| Moat, the kernel learning, no agent | 3 x 10000 | 29999 of 30000 (99.99%) | 2 | 95 (95-95) |",
		"100% of 30000 resolve-then-connect loops: 1 failed:\n  **not met**; zero SYN retransmits: 2: **not met**."} {
		if !strings.Contains(out, want) {
			t.Errorf("DNS section of three runs lacks %q:\n%s", want, out)
		}
	}
	if empty := renderDNS(strings.NewReader("PASS\n")); !strings.Contains(empty, "not measured") || strings.Contains(empty, "**met**") {
		t.Errorf("a run without results:\n%s", empty)
	}
}

// -dns replaces the DNS section where it is, up to the next section or the footer, and puts it before the footer
// of a page that has none; -scale, which rewrites the section before the footer, leaves a DNS section after it.
func TestReplaceDNS(t *testing.T) {
	section := "\n" + dnsHeading + "\nnew dns\n"
	footer := "---\n`make bench` took 1s.\n"
	page := "# Benchmarks\n\n## Enforcer: memory\n\nx\n\n## API-server scale\n\nscale\n\n" + footer
	added := replaceDNS(page, section)
	want := "# Benchmarks\n\n## Enforcer: memory\n\nx\n\n## API-server scale\n\nscale\n\n" + dnsHeading + "\nnew dns\n\n" + footer
	if added != want {
		t.Errorf("added to a page without the section:\n%q\nwant\n%q", added, want)
	}
	if again := replaceDNS(added, "\n"+dnsHeading+"\nnewer dns\n"); again != strings.Replace(want, "new dns", "newer dns", 1) {
		t.Errorf("replaced before the footer:\n%q", again)
	}
	middle := "# B\n\n## Datapath\n\nd\n\n" + dnsHeading + "\nold\n\n### Targets\n\nold targets\n\n## Side by side\n\ns\n\n" + footer
	if got, want := replaceDNS(middle, section), "# B\n\n## Datapath\n\nd\n\n"+dnsHeading+"\nnew dns\n\n## Side by side\n\ns\n\n"+footer; got != want {
		t.Errorf("replaced in the middle:\n%q\nwant\n%q", got, want)
	}
	if got := replaceDNS("# B\n\nx\n", section); got != "# B\n\nx\n\n"+dnsHeading+"\nnew dns\n" {
		t.Errorf("added to a page without a footer:\n%q", got)
	}
	scaled, err := replaceScale(added, "\n"+scaleHeading+"\nnew scale\n")
	if err != nil || !strings.Contains(scaled, "new scale\n\n"+dnsHeading+"\nnew dns\n\n"+footer) || strings.Contains(scaled, "\nscale\n") {
		t.Errorf("-scale after -dns (%v):\n%q", err, scaled)
	}
}
