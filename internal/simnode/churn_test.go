package simnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/testutil"
)

const churnPolicy = `apiVersion: v1
kind: Namespace
metadata: {name: churn, labels: {moat.dev/zone: churn}}
`

// BenchmarkPodChurn runs the whole chain (bridge, host-local through moat-ipam, portmap, moat) as a runtime does
// for pods that come and go: a sustained 20 pods a second (each deleted a second after it was created) and then
// a burst of 100 pods started at once. It reports ADD and DEL latencies of the whole chain, the failures and what
// is left afterwards (records, host veths, pinned links, released links): all must be zero. sustained-pods/s is
// the rate the ADDs kept up with (200 asked at 20 a second); burst-pods/s how fast 100 pods asked at once were all
// up. It runs the same chain without Moat (mode=none: bridge, host-local and portmap as the cluster's CNI wrote
// them, no enforcer), then with each attachMode: default (staged through clsact, moved to tcx by the enforcer's
// mover), tcx and clsact, in MOAT_CHURN_ROUNDS rounds (default 2; 1 with MOAT_BENCH_QUICK) in which the modes take
// turns, so drift hits all of them; Moat's cost is a mode's ADD p99 beside none's of the same round (the n-th
// line of each mode; go test -count would repeat each mode back to back instead). For the default mode it also reports how many pods the
// mover took to tcx during the run and how long they ran in clsact before (moved, staged-p50-ms, staged-p99-ms).
func BenchmarkPodChurn(b *testing.B) {
	testutil.RequireRoot(b)
	bin := b.TempDir()
	if err := Build(bin, nil); err != nil {
		b.Fatal(err)
	}
	rounds := 2
	if os.Getenv("MOAT_BENCH_QUICK") != "" {
		rounds = 1
	}
	if r, err := strconv.Atoi(os.Getenv("MOAT_CHURN_ROUNDS")); err == nil && r > 0 {
		rounds = r
	}
	for round := 0; round < rounds; round++ {
		for _, mode := range []string{"none", "default", "tcx", "clsact"} {
			b.Run("mode="+mode, func(b *testing.B) { // a later round's is named mode=X#01, and so on
				for i := 0; i < b.N; i++ {
					churn(b, bin, mode)
				}
			})
		}
	}
}

func churn(b *testing.B, bin, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	withMoat := mode != "none"
	attachMode := mode
	if mode == "none" || mode == "default" {
		attachMode = ""
	}
	n, err := New(b.TempDir(), bin, Options{Ports: []uint16{80}, AttachMode: attachMode, Unchained: !withMoat})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			b.Errorf("close the node: %v", err)
		}
	}()
	if withMoat {
		if err := n.WritePolicy("churn.yaml", churnPolicy); err != nil {
			b.Fatal(err)
		}
		if err := n.StartEnforcer(ctx); err != nil {
			b.Fatal(err)
		}
	}
	veths := func() int {
		count := 0
		_ = n.Host.Do(func(ns.NetNS) error {
			links, _ := netlink.LinkList()
			for _, l := range links {
				if l.Type() == "veth" && l.Attrs().Name != "uplink" {
					count++
				}
			}
			return nil
		})
		return count
	}
	baseVeths := veths()

	var mu sync.Mutex
	var adds, dels []time.Duration
	var lastAdd time.Time
	var failures atomic.Int64
	var seq atomic.Int64
	life := func(hold time.Duration) {
		name := fmt.Sprintf("p%d", seq.Add(1))
		start := time.Now()
		p, err := n.AddPod(ctx, "churn", name)
		took := time.Since(start)
		if err != nil {
			failures.Add(1)
			b.Logf("ADD %s: %v", name, err)
			return
		}
		mu.Lock()
		adds = append(adds, took)
		lastAdd = time.Now()
		mu.Unlock()
		time.Sleep(hold)
		start = time.Now()
		if err := p.Delete(ctx); err != nil {
			failures.Add(1)
			b.Logf("DEL %s: %v", name, err)
			return
		}
		mu.Lock()
		dels = append(dels, time.Since(start))
		mu.Unlock()
	}

	// sustained: 20 pods a second for 10 seconds (5 with MOAT_BENCH_QUICK), each living a second
	sustainedPods := 200
	if os.Getenv("MOAT_BENCH_QUICK") != "" {
		sustainedPods = 100
	}
	b.ResetTimer()
	var wg sync.WaitGroup
	tick := time.NewTicker(50 * time.Millisecond)
	sustainedStart := time.Now()
	for i := 0; i < sustainedPods; i++ {
		<-tick.C
		wg.Add(1)
		go func() { defer wg.Done(); life(time.Second) }()
	}
	tick.Stop()
	wg.Wait()
	sustained := lastAdd.Sub(sustainedStart) // from the first ADD asked to the last one done
	sustainedFailures := failures.Load()
	sustainedAdds := slices.Clone(adds)
	slices.Sort(sustainedAdds)
	burstFrom := len(adds)

	// burst: 100 pods at once, all up, then all gone
	burstStart := time.Now()
	var up sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < 100; i++ {
		wg.Add(1)
		up.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("burst%d", seq.Add(1))
			start := time.Now()
			p, err := n.AddPod(ctx, "churn", name)
			took := time.Since(start)
			up.Done()
			if err != nil {
				failures.Add(1)
				b.Logf("burst ADD %s: %v", name, err)
				return
			}
			mu.Lock()
			adds = append(adds, took)
			mu.Unlock()
			<-release
			if err := p.Delete(ctx); err != nil {
				failures.Add(1)
				b.Logf("burst DEL %s: %v", name, err)
			}
		}()
	}
	up.Wait()
	burstUp := time.Since(burstStart)
	close(release)
	wg.Wait()
	b.StopTimer()

	// links released by the last DELs go with the enforcer's next sweep (every 250 ms): give it a few
	var records, links, released []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		records, _ = filepath.Glob(filepath.Join(n.EndpointDir(), "*", "*.json"))
		links, _ = filepath.Glob(filepath.Join(n.PinRoot, "endpoints", "*", "*"))
		released, _ = filepath.Glob(filepath.Join(n.PinRoot, "released", "*", "*"))
		if len(records)+len(links)+len(released) == 0 || time.Now().After(deadline) {
			break
		}
	}
	leftVeths := veths() - baseVeths
	leaks := len(records) + len(links) + len(released) + leftVeths
	if leaks != 0 {
		b.Errorf("left after churn: %d records, %d pinned link folders, %d released link folders, %d host veths",
			len(records), len(links), len(released), leftVeths)
	}
	if f := failures.Load(); f != 0 {
		b.Errorf("%d ADD or DEL failures", f)
	}
	burstAdds := slices.Clone(adds[burstFrom:])
	slices.Sort(burstAdds)
	slices.Sort(dels)
	b.ReportMetric(pct(sustainedAdds, 50), "add-p50-ms")
	b.ReportMetric(pct(sustainedAdds, 99), "add-p99-ms")
	b.ReportMetric(pct(burstAdds, 50), "burst-add-p50-ms")
	b.ReportMetric(pct(burstAdds, 99), "burst-add-p99-ms")
	b.ReportMetric(pct(dels, 50), "del-p50-ms")
	b.ReportMetric(pct(dels, 99), "del-p99-ms")
	b.ReportMetric(float64(sustainedPods)/sustained.Seconds(), "sustained-pods/s")
	b.ReportMetric(float64(sustainedPods), "sustained-pods")
	b.ReportMetric(float64(sustainedFailures), "sustained-failures")
	b.ReportMetric(100/burstUp.Seconds(), "burst-pods/s")
	b.ReportMetric(float64(failures.Load()-sustainedFailures), "burst-failures")
	b.ReportMetric(float64(leaks), "leaks")
	if mode == "default" {
		staged := movedAfter(n.EnforcerLog())
		b.ReportMetric(float64(len(staged)), "moved")
		b.ReportMetric(pct(staged, 50), "staged-p50-ms")
		b.ReportMetric(pct(staged, 99), "staged-p99-ms")
	}
}

var movedLine = regexp.MustCompile(`msg="attachment moved to tcx".* staged=([0-9.]+[a-zµ]+)`)

// movedAfter reads, sorted, how long each pod the enforcer's mover took to tcx had run in clsact.
func movedAfter(log string) []time.Duration {
	var out []time.Duration
	for _, l := range strings.Split(log, "\n") {
		if m := movedLine.FindStringSubmatch(l); m != nil {
			if d, err := time.ParseDuration(m[1]); err == nil {
				out = append(out, d)
			}
		}
	}
	slices.Sort(out)
	return out
}

// pct is the p-th percentile of sorted durations, in milliseconds.
func pct(sorted []time.Duration, p int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return float64(sorted[i].Microseconds()) / 1000
}
