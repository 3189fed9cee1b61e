// Package sidebyside measures Moat's datapath next to no filter, iptables-legacy (stateful and stateless),
// iptables-nft and nftables on real veths in network namespaces of its own: stream throughput (iperf3) and the
// machine's CPU per Gbit/s, TCP request-response latency and connection rate, each at N rules, and renders the
// results as a Markdown section with SVG plots.
//
// It needs root, iperf3, sockperf, iptables (legacy and nft), nft and taskset (prereqs.sh installs them). The whole
// comparison runs from its test:
//
//	SIDEBYSIDE_OUT=/tmp/out [SIDEBYSIDE_QUICK=1] [SIDEBYSIDE_DURATION=3s] [SIDEBYSIDE_REPS=3] \
//	  go test -run TestSideBySideReport -v -timeout 60m ./internal/sidebyside/
package sidebyside

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options choose what a run measures.
type Options struct {
	Quick    bool          // N = 10 and 10,000 only (unless Ns is given)
	Ns       []int         // rule counts; default 10, 100, 1,000, 10,000
	Duration time.Duration // of each measurement; default 3s
	Reps     int           // repetitions of every configuration at every N; default 3
	// StreamDuration is the one-stream iperf3 run's (whole seconds; the throughput targets read it); default
	// Duration.
	StreamDuration time.Duration
}

// Metrics, in the units Result.Unit names.
const (
	MetricThroughput1 = "throughput-1" // Gbit/s, one TCP stream
	MetricThroughput4 = "throughput-4" // Gbit/s, four TCP streams
	MetricCPUPerGbit  = "cpu-per-gbit" // percent of one CPU, the whole machine busy (/proc/stat), per Gbit/s, one stream
	MetricRRP50       = "rr-p50"       // microseconds, round trip of a 64-byte sockperf ping-pong on one connection
	MetricRRP99       = "rr-p99"       // microseconds
	MetricConnRate    = "conn-rate"    // connections per second, each with one 64-byte exchange
)

// Metrics are the metrics in the order they print.
var Metrics = []string{MetricThroughput1, MetricThroughput4, MetricCPUPerGbit, MetricRRP50, MetricRRP99, MetricConnRate}

var units = map[string]string{MetricThroughput1: "Gbit/s", MetricThroughput4: "Gbit/s", MetricCPUPerGbit: "% of one CPU per Gbit/s",
	MetricRRP50: "µs", MetricRRP99: "µs", MetricConnRate: "conn/s"}

// Result is one metric of one configuration at one N over the repetitions.
type Result struct {
	Config  string
	N       int
	Metric  string
	Unit    string
	Median  float64
	Min     float64
	Max     float64
	Samples []float64
}

func (o Options) withDefaults() Options {
	if len(o.Ns) == 0 {
		o.Ns = []int{10, 100, 1000, 10000}
		if o.Quick {
			o.Ns = []int{10, 10000}
		}
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.StreamDuration <= 0 {
		o.StreamDuration = o.Duration
	}
	if o.Reps <= 0 {
		o.Reps = 3
	}
	return o
}

// Run measures every configuration at every N, Reps times, interleaved (all configurations at one N, then
// again) so that drift hits them all, and prints a line per measurement to progress. Each measurement has
// namespaces, filter and servers of its own, removed before the next, even on failure.
func Run(ctx context.Context, opts Options, progress io.Writer) ([]Result, error) {
	opts = opts.withDefaults()
	samples := map[[3]string][]float64{}
	var order [][3]string
	for _, n := range opts.Ns {
		for rep := 0; rep < opts.Reps; rep++ {
			// each repetition starts one configuration later, so none of them always runs first
			for i := range Configs {
				cfg := Configs[(i+rep)%len(Configs)]
				got, err := measure(ctx, cfg, n, opts.Duration, opts.StreamDuration)
				if err != nil {
					return nil, fmt.Errorf("%s, %d rules: %w", cfg, n, err)
				}
				for _, m := range Metrics {
					v, ok := got[m]
					if !ok {
						continue
					}
					fmt.Fprintf(progress, "%s\tN=%d\trep %d\t%s\t%.2f %s\n", cfg, n, rep+1, m, v, units[m])
					k := [3]string{cfg, strconv.Itoa(n), m}
					if _, seen := samples[k]; !seen {
						order = append(order, k)
					}
					samples[k] = append(samples[k], v)
				}
			}
		}
	}
	var out []Result
	for _, k := range order {
		n, _ := strconv.Atoi(k[1])
		s := samples[k]
		sorted := slices.Sorted(slices.Values(s))
		out = append(out, Result{Config: k[0], N: n, Metric: k[2], Unit: units[k[2]], Median: median(sorted),
			Min: sorted[0], Max: sorted[len(sorted)-1], Samples: s})
	}
	return out, nil
}

func median(sorted []float64) float64 {
	if len(sorted)%2 == 1 {
		return sorted[len(sorted)/2]
	}
	return (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
}

// measure sets up configuration cfg with n rules on a fresh topology and takes every metric once.
func measure(ctx context.Context, cfg string, n int, d, stream time.Duration) (got map[string]float64, err error) {
	t, err := newTopology(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := t.close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	remove, err := installFilter(ctx, t, cfg, n, false)
	if err != nil {
		return nil, err
	}
	defer remove()
	stop, err := startServers(ctx, t)
	if err != nil {
		return nil, err
	}
	defer stop()
	// Loading Moat's 10,000 rules leaves this (unpinned) process garbage to collect, and the kernel deferred
	// frees of the tables just replaced: let both finish before measuring, for every configuration alike.
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(300 * time.Millisecond)

	got = map[string]float64{}
	// the one stream with the whole machine's CPU time around it: softirq (forwarding, filtering) included,
	// wherever it runs
	before, err := readProcStat()
	if err != nil {
		return nil, err
	}
	gbps, err := iperf(ctx, t, 1, stream)
	if err != nil {
		return nil, err
	}
	after, err := readProcStat()
	if err != nil {
		return nil, err
	}
	cpu, err := cpuPercent(before, after)
	if err != nil {
		return nil, err
	}
	got[MetricThroughput1] = gbps
	if gbps > 0 {
		got[MetricCPUPerGbit] = cpu / gbps
	}
	if got[MetricThroughput4], err = iperf(ctx, t, 4, d); err != nil {
		return nil, err
	}
	if got[MetricRRP50], got[MetricRRP99], err = sockperf(ctx, t, d); err != nil {
		return nil, err
	}
	var crr crrResult
	if err := helperJSON(ctx, t, "crr", d, &crr); err != nil {
		return nil, err
	}
	got[MetricConnRate] = crr.PerSec
	return got, nil
}

// startServers starts iperf3 and the echo server in the server namespace on the server CPU and waits until
// both accept connections from the client; stop ends them (by their process, never by name).
func startServers(ctx context.Context, t *topology) (stop func(), err error) {
	var procs []*exec.Cmd
	stop = func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	argv := inNS(t.server, serverCPU, "iperf3", "-s", "-B", serverAddr, "-p", strconv.Itoa(iperfPort))
	iperfSrv := exec.Command(argv[0], argv[1:]...)
	if err := iperfSrv.Start(); err != nil {
		return stop, fmt.Errorf("start iperf3 server: %w", err)
	}
	procs = append(procs, iperfSrv)
	argv = inNS(t.server, echoCPU, "sockperf", "server", "--tcp", "-i", serverAddr, "-p", strconv.Itoa(rrPort))
	sp := exec.Command(argv[0], argv[1:]...)
	if err := sp.Start(); err != nil {
		return stop, fmt.Errorf("start sockperf server: %w", err)
	}
	procs = append(procs, sp)
	argv, env, err := helperCommand(t.server, echoCPU, "server", fmt.Sprintf("%s:%d", serverAddr, crrPort))
	if err != nil {
		return stop, err
	}
	echo := exec.Command(argv[0], argv[1:]...)
	echo.Env, echo.Stderr = env, os.Stderr
	if err := echo.Start(); err != nil {
		return stop, fmt.Errorf("start echo server: %w", err)
	}
	procs = append(procs, echo)
	// both answer a connection from the client once they listen
	var last error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if last = probe(ctx, t, crrPort); last == nil {
			if last = probe(ctx, t, iperfPort); last == nil {
				if last = probe(ctx, t, rrPort); last == nil {
					return stop, nil
				}
			}
		}
	}
	return stop, fmt.Errorf("servers not reachable from the client: %w", last)
}

// probe connects from the client to a server port within a second (for iperf3's and sockperf's ports,
// connecting is all).
func probe(ctx context.Context, t *topology, port int) error {
	role := "probe"
	if port != crrPort {
		argv := inNS(t.client, "", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", serverAddr, port))
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return run(cctx, argv[0], argv[1:]...)
	}
	argv, env, err := helperCommand(t.client, "", role, fmt.Sprintf("%s:%d", serverAddr, port))
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// helperJSON runs a client role pinned to the client CPU and decodes what it prints.
func helperJSON(ctx context.Context, t *topology, role string, d time.Duration, v any) error {
	argv, env, err := helperCommand(t.client, echoCPU, role, fmt.Sprintf("%s:%d", serverAddr, crrPort), d.String())
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, d+20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s client: %w: %s", role, err, stderr.String())
	}
	return json.Unmarshal(out, v)
}

// sockperfPercentile is one line of sockperf's percentile table, e.g. "---> percentile 50.000 =   13.980".
var sockperfPercentile = regexp.MustCompile(`percentile\s+(\d+\.\d+)\s+=\s+([\d.]+)`)

// sockperf ping-pongs 64 bytes on one TCP connection for d (sockperf's own 400 ms warm-up not counted) from the
// client to the sockperf server, both on echoCPU, and returns the round trip's p50 and p99 in microseconds.
func sockperf(ctx context.Context, t *topology, d time.Duration) (p50, p99 float64, err error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	argv := inNS(t.client, echoCPU, "sockperf", "ping-pong", "--tcp", "-i", serverAddr, "-p", strconv.Itoa(rrPort),
		"-m", "64", "-t", strconv.Itoa(secs), "--full-rtt")
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+20*time.Second)
	defer cancel()
	out, err := output(cctx, nil, argv[0], argv[1:]...)
	if err != nil {
		return 0, 0, fmt.Errorf("sockperf ping-pong: %w", err)
	}
	return parseSockperf(out)
}

// parseSockperf reads the 50th and 99th percentiles of a sockperf --full-rtt report.
func parseSockperf(out []byte) (p50, p99 float64, err error) {
	found := 0
	for _, m := range sockperfPercentile.FindAllSubmatch(out, -1) {
		v, perr := strconv.ParseFloat(string(m[2]), 64)
		if perr != nil {
			continue
		}
		switch string(m[1]) {
		case "50.000":
			p50, found = v, found|1
		case "99.000":
			p99, found = v, found|2
		}
	}
	if found != 3 {
		return 0, 0, fmt.Errorf("no p50 and p99 in sockperf's report: %q", out)
	}
	return p50, p99, nil
}

// iperfReport is the part of iperf3 -J's report used here.
type iperfReport struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs an iperf3 client with streams parallel streams for d and returns Gbit/s received.
func iperf(ctx context.Context, t *topology, streams int, d time.Duration) (gbps float64, err error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	argv := inNS(t.client, clientCPU, "iperf3", "-c", serverAddr, "-p", strconv.Itoa(iperfPort), "-J",
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams))
	cctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+20*time.Second)
	defer cancel()
	out, runErr := output(cctx, nil, argv[0], argv[1:]...)
	var r iperfReport
	if err := json.Unmarshal(out, &r); err != nil {
		if runErr != nil {
			return 0, runErr
		}
		return 0, fmt.Errorf("iperf3 report: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if runErr != nil {
		return 0, runErr
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// cpuTimes is a reading of /proc/stat: the aggregate "cpu" line's busy and total clock ticks, summed over all
// CPUs, and the number of CPUs (its "cpuN" lines).
type cpuTimes struct {
	busy, total uint64
	cpus        int
}

func readProcStat() (cpuTimes, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	return parseProcStat(data)
}

// parseProcStat reads the "cpu" line of /proc/stat (user nice system idle iowait irq softirq steal guest
// guest_nice): total is the sum of the first eight (guest time is already counted in user and nice), busy is
// total less idle and iowait.
func parseProcStat(data []byte) (cpuTimes, error) {
	var c cpuTimes
	found := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20) // the intr line is long
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			if _, err := strconv.Atoi(f[0][3:]); err == nil {
				c.cpus++
			}
			continue
		}
		if found {
			return cpuTimes{}, fmt.Errorf("/proc/stat: two cpu lines")
		}
		found = true
		if len(f) < 9 {
			return cpuTimes{}, fmt.Errorf("/proc/stat: cpu line %q has fewer than 8 fields", sc.Text())
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[1+i], 10, 64)
			if err != nil {
				return cpuTimes{}, fmt.Errorf("/proc/stat: cpu line: %w", err)
			}
			v[i] = n
			c.total += n
		}
		c.busy = c.total - v[3] - v[4]
	}
	if err := sc.Err(); err != nil {
		return cpuTimes{}, err
	}
	if !found || c.cpus == 0 {
		return cpuTimes{}, fmt.Errorf("/proc/stat: no cpu lines")
	}
	return c, nil
}

// cpuPercent is how busy the machine was between two readings in percent of one CPU: 100 is one CPU fully
// busy, 200 two (both, on a two-CPU machine).
func cpuPercent(before, after cpuTimes) (float64, error) {
	if after.cpus != before.cpus {
		return 0, fmt.Errorf("/proc/stat: %d CPUs, then %d", before.cpus, after.cpus)
	}
	if after.total <= before.total {
		return 0, fmt.Errorf("/proc/stat: no time passed between the readings")
	}
	if after.busy < before.busy {
		return 0, fmt.Errorf("/proc/stat: busy time went backwards")
	}
	return float64(after.busy-before.busy) / float64(after.total-before.total) * float64(after.cpus) * 100, nil
}
