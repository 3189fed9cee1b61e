package sidebyside

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func requireTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, bpf, iptables): run as root")
	}
	for _, tool := range []string{"ip", "taskset", "iperf3", "iptables-legacy-restore", "iptables-nft-restore", "nft", "sockperf"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: run internal/sidebyside/prereqs.sh", tool)
		}
	}
}

// hostRules is the host namespace's iptables-legacy and nft rulesets (iptables-nft shows in the latter).
func hostRules(t *testing.T) string {
	t.Helper()
	legacy, err := output(context.Background(), nil, "iptables-legacy-save")
	if err != nil {
		t.Fatal(err)
	}
	nft, err := output(context.Background(), nil, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return string(legacy) + string(nft)
}

// reachable sets up cfg with n rules (without the matching one if withoutMatch), starts the echo server and
// makes one exchange from the client.
func reachable(ctx context.Context, cfg string, n int, withoutMatch bool) error {
	return reachableWith(ctx, func(topo *topology) (func(), error) {
		return installFilter(ctx, topo, cfg, n, withoutMatch)
	})
}

// reachableWith is reachable with the filter install puts on the topology.
func reachableWith(ctx context.Context, install func(*topology) (func(), error)) (err error) {
	topo, err := newTopology(ctx)
	if err != nil {
		return err
	}
	defer topo.close()
	remove, err := install(topo)
	if err != nil {
		return err
	}
	defer remove()
	argv, env, err := helperCommand(topo.server, serverCPU, "server", fmt.Sprintf("%s:%d", serverAddr, crrPort))
	if err != nil {
		return err
	}
	srv := exec.Command(argv[0], argv[1:]...)
	srv.Env = env
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	time.Sleep(300 * time.Millisecond) // the server listening; a refused connect would read as a drop otherwise
	return probe(ctx, topo, crrPort)
}

func TestSideBySideSmoke(t *testing.T) {
	requireTools(t)
	ctx := context.Background()
	before := hostRules(t)

	for _, cfg := range Configs {
		t.Run(cfg, func(t *testing.T) {
			got, err := measure(ctx, cfg, 10, time.Second, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range Metrics {
				if v, ok := got[m]; !ok || v <= 0 {
					t.Errorf("%s: %v (present %v), want a positive number", m, v, ok)
				}
			}
			t.Logf("%v", got)
		})
	}

	// The filters are real: each lets the flow through with its matching rule (rules, stateless) and drops it
	// without.
	for _, cfg := range Configs {
		if cfg == ConfigNone {
			continue
		}
		t.Run(cfg+"/drops", func(t *testing.T) {
			if err := reachable(ctx, cfg, 10, false); err != nil {
				t.Fatalf("with the matching rule: %v", err)
			}
			if err := reachable(ctx, cfg, 10, true); err == nil {
				t.Fatal("without the matching rule the connection still went through")
			}
		})
	}
	// Stateless is stateless: with the client's rule but not the one for the replies, nothing comes back.
	t.Run(ConfigIptablesLegacyStateless+"/replies", func(t *testing.T) {
		rules := string(iptablesRules(10, false, false))
		reply := fmt.Sprintf("--sport %d:%d", iperfPort, lastPort)
		lines := strings.SplitAfter(rules, "\n")
		kept := slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, reply) })
		if len(kept) != len(strings.SplitAfter(rules, "\n"))-1 {
			t.Fatalf("no reply rule to leave out in:\n%s", rules)
		}
		err := reachableWith(ctx, func(topo *topology) (func(), error) {
			return func() {}, restoreIptables(ctx, topo, "iptables-legacy-restore", []byte(strings.Join(kept, "")))
		})
		if err == nil {
			t.Fatal("without the reply rule the connection still went through")
		}
	})

	after := hostRules(t)
	for _, leak := range []string{clientAddr, "sidebyside", "100.64.0.0/28"} {
		if strings.Contains(after, leak) && !strings.Contains(before, leak) {
			t.Errorf("the host namespace's rules name %s after the test:\n%s", leak, after)
		}
	}
	out, err := output(ctx, nil, "ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	if tag := fmt.Sprintf("sbs%d-", os.Getpid()); strings.Contains(string(out), tag) {
		t.Errorf("namespaces left behind:\n%s", out)
	}
}

// TestSideBySideReport runs the whole comparison when SIDEBYSIDE_OUT names a folder, and writes the Markdown
// section (sidebyside.md) and the plots there. SIDEBYSIDE_QUICK=1 measures N=10 and 10,000 only.
func TestSideBySideReport(t *testing.T) {
	dir := os.Getenv("SIDEBYSIDE_OUT")
	if dir == "" {
		t.Skip("set SIDEBYSIDE_OUT to a folder to run the comparison")
	}
	requireTools(t)
	opts := Options{Quick: os.Getenv("SIDEBYSIDE_QUICK") == "1"}
	if d, err := time.ParseDuration(os.Getenv("SIDEBYSIDE_DURATION")); err == nil {
		opts.Duration = d
	}
	if _, err := fmt.Sscan(os.Getenv("SIDEBYSIDE_REPS"), &opts.Reps); err != nil {
		opts.Reps = 0
	}
	results, err := Run(context.Background(), opts, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	md := Render(results)
	if err := os.WriteFile(filepath.Join(dir, "sidebyside.md"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WritePlots(dir, results); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + md)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestIptablesRules(t *testing.T) {
	forward := fmt.Sprintf("-A FORWARD -s %s/32 -d %s -p tcp -m tcp --dport %d:%d -j ACCEPT", clientAddr, serverNet,
		iperfPort, lastPort)
	reply := fmt.Sprintf("-A FORWARD -s %s -d %s/32 -p tcp -m tcp --sport %d:%d -j ACCEPT", serverNet, clientAddr,
		iperfPort, lastPort)
	established := "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
	rules := func(stateful, withoutMatch bool) []string {
		var out []string
		for _, l := range strings.Split(string(iptablesRules(10, stateful, withoutMatch)), "\n") {
			if strings.HasPrefix(l, "-A ") {
				out = append(out, l)
			}
		}
		return out
	}
	for _, c := range []struct {
		name                   string
		stateful, withoutMatch bool
		first                  string   // the chain's first rule
		last                   []string // its last rules, after the 9 that do not match
		len                    int
	}{
		{"stateful", true, false, established, []string{forward}, 11},
		{"stateful without match", true, true, established, nil, 10},
		{"stateless", false, false, "", []string{forward, reply}, 11},
		{"stateless without match", false, true, "", nil, 9},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := rules(c.stateful, c.withoutMatch)
			if len(got) != c.len {
				t.Fatalf("%d rules, want %d:\n%s", len(got), c.len, strings.Join(got, "\n"))
			}
			rest := got
			if c.first != "" {
				if got[0] != c.first {
					t.Errorf("first rule %q, want %q", got[0], c.first)
				}
				rest = got[1:]
			}
			for i, l := range rest[:9] {
				if l == established || l == forward || l == reply || !strings.Contains(l, "--dport") {
					t.Errorf("rule %d: %q, want one that does not match the flows", i, l)
				}
			}
			if tail := rest[9:]; !slices.Equal(tail, c.last) {
				t.Errorf("last rules %q, want %q", tail, c.last)
			}
			if !c.stateful && slices.Contains(got, established) {
				t.Error("stateless rules accept ESTABLISHED")
			}
		})
	}
}

// procStat is /proc/stat of a two-CPU machine, cut short.
const procStat = `cpu  471952 66853 872811 5338420 19588 0 19332 817 0 0
cpu0 225890 34568 434755 2685725 4234 0 9823 404 0 0
cpu1 246061 32285 438056 2652694 15353 0 9508 412 0 0
intr 60658490 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 15
ctxt 96498079
btime 1700000000
processes 123456
procs_running 2
procs_blocked 0
softirq 1 2 3 4 5 6 7 8 9 10 11
`

func TestProcStat(t *testing.T) {
	got, err := parseProcStat([]byte(procStat))
	if err != nil {
		t.Fatal(err)
	}
	// total: user..steal; busy: total - idle - iowait
	want := cpuTimes{busy: 471952 + 66853 + 872811 + 0 + 19332 + 817,
		total: 471952 + 66853 + 872811 + 5338420 + 19588 + 0 + 19332 + 817, cpus: 2}
	if got != want {
		t.Fatalf("parse: %+v, want %+v", got, want)
	}

	// 2 CPUs for 1 s at 100 ticks/s: 200 ticks; 50 busy is a quarter of the machine, 50% of one CPU.
	after := strings.Replace(procStat, "cpu  471952 66853 872811 5338420 19588 0 19332 817 0 0",
		"cpu  471982 66853 872821 5338560 19598 0 19342 817 0 0", 1)
	a, err := parseProcStat([]byte(after))
	if err != nil {
		t.Fatal(err)
	}
	pct, err := cpuPercent(got, a)
	if err != nil {
		t.Fatal(err)
	}
	if pct != 50 {
		t.Errorf("cpuPercent: %v, want 50", pct)
	}
	if _, err := cpuPercent(a, a); err == nil {
		t.Error("cpuPercent of one reading twice: no error")
	}

	for _, bad := range []string{
		"",
		"cpu0 1 2 3 4 5 6 7 8 0 0\n",
		"cpu  1 2 3 4\ncpu0 1 2 3 4\n",
		"cpu  1 2 x 4 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n",
	} {
		if c, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("parse %q: %+v, want an error", bad, c)
		}
	}
}

func TestParseSockperf(t *testing.T) {
	report := []byte("sockperf: \x1b[2;35m====> avg-rtt=14.659 (std-dev=3.264)\x1b[0m\n" +
		"sockperf: ---> percentile 99.999 =  215.359\nsockperf: ---> percentile 99.000 =   20.009\n" +
		"sockperf: ---> percentile 90.000 =   15.032\nsockperf: ---> percentile 50.000 =   13.980\n")
	p50, p99, err := parseSockperf(report)
	if err != nil || p50 != 13.980 || p99 != 20.009 {
		t.Errorf("parseSockperf = %v, %v, %v; want 13.98, 20.009", p50, p99, err)
	}
	if _, _, err := parseSockperf([]byte("sockperf: ---> percentile 50.000 =   13.980\n")); err == nil {
		t.Error("a report without p99 parsed")
	}
}
