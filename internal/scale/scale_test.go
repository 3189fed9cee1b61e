package scale

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/testutil"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

var (
	flagSizes        = flag.String("scale.sizes", "", "pod counts to measure, comma-separated (default $SCALE, else 5000,20000,50000,150000)")
	flagOut          = flag.String("scale.out", "", "write the results as Markdown to this file")
	flagSteadyPods   = flag.Int("scale.steady-pods", 200, "remote pods created at a steady rate for the learn latency")
	flagSteadyRate   = flag.Float64("scale.steady-rate", 10, "pods per second of the steady rate")
	flagChanges      = flag.Int("scale.policy-changes", 50, "policy changes, one at a time, for the change-to-enforced latency")
	flagChangeBudget = flag.Duration("scale.policy-budget", 3*time.Minute, "stop the policy changes after this long")
	flagChurnRate    = flag.Int("scale.churn-rate", 100, "pods per second created (and as many deleted) during the churn")
	flagChurnFor     = flag.Duration("scale.churn", 30*time.Second, "how long the churn lasts")
	flagMemoryLimit  = flag.String("scale.memory-limit", "512Mi", "run the enforcer in a memory cgroup of this limit, as a container with limits.memory (\"\" or 0: none)")
	flagFirstApply   = flag.Duration("scale.first-apply-timeout", 20*time.Minute, "give up waiting for the first apply after this long")
)

// DefaultSizes are the pod counts `make scale` measures; from dualStackFrom on, every pod has an IPv4 and an IPv6
// address.
var DefaultSizes = []int{5000, 20000, 50000, 150000}

const (
	dualStackFrom = 150000
	eventTimeout  = 5 * time.Minute // for one event to reach the datapath
	eventRepeats  = 3
	churnAlive    = 200 // churn deletes the oldest pod it made once this many are alive
)

func sizes(t *testing.T) []int {
	s := *flagSizes
	if s == "" {
		s = os.Getenv("SCALE")
	}
	if s == "" {
		return DefaultSizes
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > 250*(nodeCount-1) {
			t.Fatalf("size %q: want a pod count from 1 to %d", f, 250*(nodeCount-1))
		}
		out = append(out, n)
	}
	return out
}

// memoryNeeded is a rough bound of what etcd, the API server, the enforcer and this harness take at n pods,
// from the runs on a 2-vCPU machine (see the page's notes).
func memoryNeeded(n int) uint64 { return 3<<30 + uint64(n)*40<<10 }

func memAvailable() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestScale is the API-server scale benchmark (package comment); MOAT_SCALE=1 runs it.
func TestScale(t *testing.T) {
	if os.Getenv("MOAT_SCALE") != "1" {
		t.Skip("the API-server scale benchmark runs with MOAT_SCALE=1 (make scale): it fills a real API server " +
			"with up to 150,000 pods and takes an hour or more")
	}
	testutil.RequireRoot(t)
	bin := enforcerBinary(t)
	rep := newReport(t)
	if memoryLimitBytes(t) > 0 {
		rep.MemoryLimit = *flagMemoryLimit
	}
	rep.Planned = sizes(t)
	for _, n := range rep.Planned {
		r := &result{Pods: n, DualStack: n >= dualStackFrom}
		rep.Results = append(rep.Results, r)
		if need, avail := memoryNeeded(n), memAvailable(); avail < need {
			r.Skipped = fmt.Sprintf("not run: needs about %s of free memory, %s available", mib(need), mib(avail))
			t.Logf("pods=%d: %s", n, r.Skipped)
		} else {
			t.Run(fmt.Sprintf("pods=%d", n), func(t *testing.T) { measure(t, bin, r) })
		}
		if *flagOut != "" {
			if err := os.WriteFile(*flagOut, []byte(rep.render()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// measure fills a new cluster with r.Pods pods and measures the enforcer against it into r.
func measure(t *testing.T, bin string, r *result) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	defer func() {
		if t.Failed() && r.Problem == "" {
			r.Problem = "the run failed; see the test log"
		}
	}()
	l := layout{dualStack: r.DualStack}
	cluster := kubetest.Start(t, kubetest.WithControllers("serviceaccount-controller"),
		kubetest.WithAPIServerFlags(map[string]string{"max-requests-inflight": "1600", "max-mutating-requests-inflight": "800"}))
	files, err := filepath.Glob("../../install/kubernetes/crds/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("CRD files: %v %v", files, err)
	}
	if err := cluster.InstallCRDs(ctx, files...); err != nil {
		t.Fatal(err)
	}
	f, err := newFiller(cluster.Config, l)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	etcdURL := cluster.EtcdURL
	if os.Getenv("MOAT_SCALE_FILL") == "api" {
		etcdURL = ""
	}
	if err := f.fill(ctx, r.Pods, etcdURL); err != nil {
		t.Fatalf("fill: %v", err)
	}
	r.Fill = time.Since(start)
	t.Logf("pods=%d: filled in %v", r.Pods, r.Fill.Round(time.Second))

	api, err := url.Parse(cluster.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	proxy := startProxy(t, api.Host)
	root := testutil.PinRoot(t)
	feedMode := os.Getenv("MOAT_SCALE_DIRECT") == ""
	if feedMode {
		// as shipped: the address feed's publisher beside the enforcer (its own traffic is not the node's)
		startFeed(t, bin, cluster.Kubeconfig, filepath.Join(dir, "feed"))
	}
	started := time.Now()
	p := startEnforcer(t, bin, proxiedKubeconfig(t, cluster.Kubeconfig, dir, proxy), root, dir, feedMode)
	pid := p.Cmd.Process.Pid
	dp := openDatapath(t, p, root)
	defer func() { // what can be read whether or not the run got this far
		if ps, err := readProc(pid); err == nil {
			r.PeakRSS = ps.peak
		}
		r.ControlPlanePeak = childPeaks()
		if total, pol, err := kernelBytes(root, dp); err == nil {
			r.KernelBytes, r.PolicyBytes = total, pol
		}
		if fills, err := dp.MapFills(); err == nil {
			r.IPCacheEntries = fills["ipcache"].Entries
		}
		if log, err := readEnforcerLog(p.LogPath); err == nil {
			r.Applies = log.applies
			r.LogErrors = len(log.errors)
			if len(log.errors) > 0 {
				r.LastError = log.errors[len(log.errors)-1]
			}
		}
	}()

	// first apply: a sample of the pods, spread over the fill, known with their namespaces' identities
	var sample []int
	for s := 0; s < 64; s++ {
		sample = append(sample, s*r.Pods/64)
	}
	sample = append(sample, r.Pods-1)
	err = p.WaitUntil(nil, *flagFirstApply, 50*time.Millisecond, "first apply", func() bool {
		for _, j := range sample {
			if !podKnown(dp, l.podNamespace(j), l.podIPs(j)) {
				return false
			}
		}
		return true
	})
	if err != nil {
		r.Problem = fmt.Sprintf("no first apply within %v", *flagFirstApply)
		t.Fatalf("pods=%d: %v", r.Pods, err)
	}
	r.FirstApply = time.Since(started)
	r.StartBytes = proxy.received.Load()
	t.Logf("pods=%d: first apply after %v, %s received", r.Pods, r.FirstApply.Round(time.Millisecond), mib(uint64(r.StartBytes)))

	next := r.Pods // the number of the next pod beyond the fill
	podEvent := func() (time.Duration, error) {
		j := next
		next++
		sent, err := f.createPod(ctx, j)
		if err != nil {
			return 0, err
		}
		took, ok := waitUntil(sent, eventTimeout, 2*time.Millisecond, func() bool { return podKnown(dp, l.podNamespace(j), l.podIPs(j)) })
		if !ok {
			return 0, fmt.Errorf("pod %d not in the ipcache %v after its status write", j, eventTimeout)
		}
		return took, nil
	}

	// the first event after the start waits for whatever the enforcer does after its first apply
	if r.FirstPod, err = podEvent(); err != nil {
		r.Problem = err.Error()
		t.Fatal(err)
	}
	for range eventRepeats {
		d, err := podEvent()
		if err != nil {
			r.Problem = err.Error()
			t.Fatal(err)
		}
		r.PodEvent = append(r.PodEvent, d)
	}
	for i := range eventRepeats {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-new-%d", i),
			Labels: map[string]string{v1alpha1.LabelZone: zone(i)}}}
		sent := time.Now()
		if _, err := f.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		d, ok := waitUntil(sent, eventTimeout, 2*time.Millisecond, func() bool {
			_, ok, _ := dp.NamespaceIdentity(ns.Name)
			return ok
		})
		if !ok {
			r.Problem = fmt.Sprintf("namespace %s got no identity in %v", ns.Name, eventTimeout)
			t.Fatal(r.Problem)
		}
		r.NamespaceEvent = append(r.NamespaceEvent, d)
	}

	// remote pods at a steady rate, and the bytes each costs the enforcer
	before := proxy.received.Load()
	learn := newLearner(dp)
	tick := time.NewTicker(time.Duration(float64(time.Second) / *flagSteadyRate))
	var wg sync.WaitGroup
	var steadyErr error
	var errOnce sync.Once
	for range *flagSteadyPods {
		<-tick.C
		j := next
		next++
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent, err := f.createPod(ctx, j)
			if err != nil {
				errOnce.Do(func() { steadyErr = err })
				return
			}
			learn.add(l.podNamespace(j), l.podIPs(j), sent)
		}()
	}
	tick.Stop()
	wg.Wait()
	if steadyErr != nil {
		t.Fatal(steadyErr)
	}
	r.Learn, r.NeverLearned = learn.finish(eventTimeout)
	r.BytesPerPod = float64(proxy.received.Load()-before) / float64(*flagSteadyPods)
	steadyPods := make([]int, 0, *flagSteadyPods)
	for j := next - *flagSteadyPods; j < next; j++ {
		steadyPods = append(steadyPods, j)
	}

	// policy changes, one at a time: a port of policy 1's first rule, which selects zone-01 (namespace 1 among
	// them); enforced when the namespace's identity uses another trie
	const changed = 1
	id, ok, err := dp.NamespaceIdentity(namespaceName(changed))
	if err != nil || !ok {
		t.Fatalf("namespace %s: no identity (%v)", namespaceName(changed), err)
	}
	budget := time.Now().Add(*flagChangeBudget)
	for i := 0; i < *flagChanges && time.Now().Before(budget); i++ {
		old, err := dp.PolicyMapID(id)
		if err != nil {
			t.Fatal(err)
		}
		sent, err := f.setPolicy(ctx, changed, 40000+i)
		if err != nil {
			t.Fatal(err)
		}
		d, ok := waitUntil(sent, eventTimeout, 2*time.Millisecond, func() bool {
			now, err := dp.PolicyMapID(id)
			return err == nil && now != old
		})
		if !ok {
			r.Problem = fmt.Sprintf("policy change %d not enforced in %v", i, eventTimeout)
			t.Fatal(r.Problem)
		}
		r.PolicyChange = append(r.PolicyChange, d)
	}

	// idle, then churn: CPU of the enforcer's process
	idle := 10 * time.Second
	a, _ := readProc(pid)
	time.Sleep(idle)
	b, _ := readProc(pid)
	r.IdleCPU = float64(b.cpu-a.cpu) / float64(idle)
	r.ChurnRate, r.ChurnCPU, err = churn(ctx, f, pid, &next, steadyPods)
	if err != nil {
		t.Fatal(err)
	}
	if ps, err := readProc(pid); err == nil {
		r.RSSAfterChurn = ps.resident
	}
}

// churn creates pods at -scale.churn-rate for -scale.churn, deleting the oldest once churnAlive are alive (the
// steady-rate pods first), and returns the rate it reached and the enforcer's CPU meanwhile (in cores).
func churn(ctx context.Context, f *filler, pid int, next *int, alive []int) (rate, cpu float64, err error) {
	var mu sync.Mutex
	var firstErr error
	var created int
	sem := make(chan struct{}, fillWorkers)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(*flagChurnRate))
	defer tick.Stop()
	before, err := readProc(pid)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for time.Since(start) < *flagChurnFor {
		<-tick.C
		j := *next
		*next++
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_, err := f.createPod(ctx, j)
			mu.Lock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			created++
			alive = append(alive, j)
			var gone = -1
			if len(alive) > churnAlive {
				gone, alive = alive[0], alive[1:]
			}
			mu.Unlock()
			if gone >= 0 {
				if err := f.deletePod(ctx, gone); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	after, err := readProc(pid)
	if err != nil {
		return 0, 0, err
	}
	return float64(created) / elapsed.Seconds(), float64(after.cpu-before.cpu) / float64(elapsed), firstErr
}

// percentile of sorted-copy d at q (0..1), nearest rank.
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
