package scale

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil/procs"
)

// enforcerBinary is $MOAT_SCALE_ENFORCER, or moat-enforcer built from this checkout into a temporary folder.
func enforcerBinary(t *testing.T) string {
	if bin := os.Getenv("MOAT_SCALE_ENFORCER"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "moat-enforcer")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/moatfw/moat/enforcer")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build moat-enforcer: %v\n%s", err, out)
	}
	return bin
}

// startEnforcer runs moat-enforcer against the cluster of kubeconfig as node enforcerNode, its datapath pinned under
// pinRoot, its log in dir; it is stopped when the test ends.
func startEnforcer(t *testing.T, bin, kubeconfig, pinRoot, dir string, feed bool) *procs.Proc {
	args := []string{"--kubeconfig=" + kubeconfig, "--node-name=" + enforcerNode, "--pin-root=" + pinRoot,
		"--endpoint-dir=" + filepath.Join(dir, "endpoints"), "--socket=" + filepath.Join(dir, "enforcer.sock"),
		"--metrics-addr=", "--reconcile-interval=0s", "--log-level=info"}
	if feed {
		args = append(args, "--address-feed")
	}
	if addr := os.Getenv("MOAT_SCALE_PPROF"); addr != "" {
		// profiles of the enforcer while the run goes (curl http://ADDR/debug/pprof/profile?seconds=30)
		args = append(args, "--metrics-addr="+addr, "--debug-pprof")
	}
	name := bin
	if limit := memoryLimitBytes(t); limit > 0 {
		// in a memory cgroup of its own, as in a container with limits.memory: the shell puts itself there and
		// becomes the enforcer, which reads the limit at its start
		procsFile := memoryCgroup(t, limit)
		args = append([]string{"-c", `echo $$ > "$0" && exec "$@"`, procsFile, bin}, args...)
		name = "/bin/sh"
	}
	p, err := procs.Start("moat-enforcer", name, args, filepath.Join(dir, "moat-enforcer.log"), dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Terminate(20 * time.Second)
		if log, err := os.ReadFile(p.LogPath); t.Failed() || err == nil && strings.Contains(string(log), "level=error") {
			keepLog(t, p.LogPath)
		}
	})
	return p
}

// keepLog copies the enforcer's log of a failed run (or one with errors) out of the test's folder (removed when the test ends) and
// logs where, with every warning and error line in it and its tail: a tail alone is mostly status writes.
func keepLog(t *testing.T, path string) {
	kept := filepath.Join(os.TempDir(), fmt.Sprintf("moat-scale-%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"),
		time.Now().Unix()))
	b, err := os.ReadFile(path)
	if err == nil {
		err = os.WriteFile(kept, b, 0o644)
	}
	if err != nil {
		t.Logf("keep the enforcer's log %s: %v", path, err)
		kept = path
	}
	var problems []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=warning") || strings.Contains(line, "level=error") ||
			strings.Contains(line, "level=fatal") || strings.Contains(line, "panic") {
			problems = append(problems, line)
		}
	}
	if len(problems) > 50 {
		problems = append(problems[:25], append([]string{"..."}, problems[len(problems)-25:]...)...)
	}
	t.Logf("the enforcer's log, kept as %s; its warnings and errors:\n%s\ntail:\n%s", kept,
		strings.Join(problems, "\n"), procs.Tail(path, 4096))
}

// memoryLimitBytes is -scale.memory-limit in bytes (0: none).
func memoryLimitBytes(t *testing.T) int64 {
	if *flagMemoryLimit == "" || *flagMemoryLimit == "0" {
		return 0
	}
	q, err := resource.ParseQuantity(*flagMemoryLimit)
	if err != nil {
		t.Fatalf("-scale.memory-limit %q: %v", *flagMemoryLimit, err)
	}
	return q.Value()
}

// memoryCgroup makes a memory cgroup limited to limit bytes (version 2's memory.max, or version 1's memory
// hierarchy), removed when the test ends, and returns the file that moves a process into it.
func memoryCgroup(t *testing.T, limit int64) string {
	name := fmt.Sprintf("moat-scale-%d-%d", os.Getpid(), time.Now().UnixNano())
	dir, file := filepath.Join("/sys/fs/cgroup", name), "memory.max"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		dir, file = filepath.Join("/sys/fs/cgroup/memory", name), "memory.limit_in_bytes"
	} else if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory"), 0o644); err != nil {
		t.Fatalf("enable the memory controller: %v", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("memory cgroup: %v", err)
	}
	t.Cleanup(func() { // after the enforcer's own cleanup (registered later, run first) stopped it
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove the memory cgroup %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, file), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatalf("memory cgroup limit: %v", err)
	}
	return filepath.Join(dir, "cgroup.procs")
}

// startFeed runs the address feed's publisher (moat-enforcer --publish-address-feed) against the cluster of
// kubeconfig, its log in dir; it is stopped when the test ends.
func startFeed(t *testing.T, bin, kubeconfig, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := procs.Start("moat-feed", bin, []string{"--publish-address-feed", "--kubeconfig=" + kubeconfig,
		"--status-lease-namespace=", "--log-level=info"}, filepath.Join(dir, "moat-feed.log"), dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tail of %s:\n%s", p.LogPath, procs.Tail(p.LogPath, 4096))
		}
		p.Terminate(20 * time.Second)
	})
}

// openDatapath waits until the enforcer has pinned its datapath and opens it, as the plugin does.
func openDatapath(t *testing.T, p *procs.Proc, root string) *bpf.Datapath {
	var dp *bpf.Datapath
	err := p.WaitUntil(nil, time.Minute, 20*time.Millisecond, "pinned datapath", func() bool {
		var err error
		dp, err = bpf.OpenPinned(root)
		return err == nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// podKnown reports whether the datapath classifies every one of ips as a pod of namespace ns (with the
// identity the datapath publishes for ns).
func podKnown(dp *bpf.Datapath, ns string, ips []netip.Addr) bool {
	id, ok, err := dp.NamespaceIdentity(ns)
	if err != nil || !ok {
		return false
	}
	for _, ip := range ips {
		k := bpf.NewIPCacheKey(netip.PrefixFrom(ip, ip.BitLen()))
		var v bpf.IPCacheValue
		if err := dp.IPCacheMap().Lookup(&k, &v); err != nil || bpf.Class(v.Class) != bpf.ClassPod || v.Identity != id {
			return false
		}
	}
	return true
}

// waitUntil polls cond every interval for up to d and returns how long it took from start.
func waitUntil(start time.Time, d, interval time.Duration, cond func() bool) (time.Duration, bool) {
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return 0, false
		}
		time.Sleep(interval)
	}
}

// learner times pods from their status write to the datapath knowing them, many at once.
type learner struct {
	dp      *bpf.Datapath
	mu      sync.Mutex
	pending []pendingPod
	took    []time.Duration
	stop    chan struct{}
	done    chan struct{}
}

type pendingPod struct {
	ns   string
	ips  []netip.Addr
	sent time.Time
}

func newLearner(dp *bpf.Datapath) *learner {
	l := &learner{dp: dp, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	return l
}

func (l *learner) add(ns string, ips []netip.Addr, sent time.Time) {
	l.mu.Lock()
	l.pending = append(l.pending, pendingPod{ns, ips, sent})
	l.mu.Unlock()
}

func (l *learner) run() {
	defer close(l.done)
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(5 * time.Millisecond):
		}
		l.mu.Lock()
		batch := slices.Clone(l.pending)
		l.mu.Unlock()
		var known []int
		now := time.Now()
		for i, p := range batch {
			if podKnown(l.dp, p.ns, p.ips) {
				known = append(known, i)
				l.took = append(l.took, now.Sub(p.sent))
			}
		}
		if len(known) > 0 {
			l.mu.Lock()
			kept := l.pending[:0]
			for i, p := range l.pending {
				if _, found := slices.BinarySearch(known, i); !found {
					kept = append(kept, p)
				}
			}
			l.pending = kept
			l.mu.Unlock()
		}
	}
}

// finish waits up to d for the pending pods and returns the latencies seen and how many were never known.
func (l *learner) finish(d time.Duration) ([]time.Duration, int) {
	waitUntil(time.Now(), d, 50*time.Millisecond, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.pending) == 0
	})
	close(l.stop)
	<-l.done
	return l.took, len(l.pending)
}

// procStat is what /proc says of a process.
type procStat struct {
	cpu      time.Duration // user + system
	peak     uint64        // VmHWM, bytes
	resident uint64        // VmRSS, bytes
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on every Linux architecture Moat runs on).
const clockTicks = 100

func readProc(pid int) (procStat, error) {
	var s procStat
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// the fields after the command's closing parenthesis start with the state (field 3); utime and stime are 14, 15
	rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(rest) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	utime, _ := strconv.ParseUint(rest[11], 10, 64)
	stime, _ := strconv.ParseUint(rest[12], 10, 64)
	s.cpu = time.Duration(utime+stime) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			s.peak = kb << 10
		case "VmRSS:":
			s.resident = kb << 10
		}
	}
	return s, nil
}

// childPeaks is the peak resident memory of this process's children by command name (etcd, kube-apiserver, ...).
func childPeaks() map[string]uint64 {
	out := map[string]uint64{}
	entries, _ := os.ReadDir("/proc")
	me := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		rest := strings.Fields(s[end+1:])
		if open < 0 || len(rest) < 2 || rest[1] != strconv.Itoa(me) {
			continue
		}
		if ps, err := readProc(pid); err == nil {
			out[s[open+1:end]] += ps.peak
		}
	}
	return out
}

// memlock is the kernel's accounting of a BPF map's memory (its fdinfo's memlock).
func memlock(m *ebpf.Map) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("map %v: no memlock in fdinfo", m)
}

// kernelBytes sums the memory of the maps pinned under root and of the policy tries of every published
// identity; policy is the policy map and its tries alone.
func kernelBytes(root string, dp *bpf.Datapath) (total, policy uint64, err error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, e.Name()), nil)
		if err != nil {
			continue // a program
		}
		n, err := memlock(m)
		m.Close()
		if err != nil {
			return 0, 0, err
		}
		total += n
		if e.Name() == "policy" {
			policy += n
		}
	}
	ids, err := dp.NamespaceIdentities()
	if err != nil {
		return 0, 0, err
	}
	seen := map[ebpf.MapID]bool{}
	for _, id := range ids {
		mid, err := dp.PolicyMapID(id)
		if err != nil || seen[mid] {
			continue // no policy (yet)
		}
		seen[mid] = true
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			continue // swapped out meanwhile
		}
		n, err := memlock(m)
		m.Close()
		if err != nil {
			return 0, 0, err
		}
		total += n
		policy += n
	}
	return total, policy, nil
}

// countingProxy forwards TCP connections to the API server and counts the bytes it sends back: what the
// enforcer receives (lists, watch events, replies), TLS records included.
type countingProxy struct {
	ln       net.Listener
	upstream string
	received atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

func startProxy(t *testing.T, upstream string) *countingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{ln: ln, upstream: upstream}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *countingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() {
			_, _ = io.Copy(up, c)
			up.Close()
		}()
		go func() {
			_, _ = io.Copy(counter{c, &p.received}, up)
			c.Close()
		}()
	}
}

type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c counter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// proxiedKubeconfig writes a copy of the kubeconfig at path whose server is the proxy.
func proxiedKubeconfig(t *testing.T, path, dir string, p *countingProxy) string {
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = p.ln.Addr().String()
		c.Server = u.String()
	}
	out := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// enforcerLog is what the enforcer's log says about its applies: how long each full apply took, and its errors.
type enforcerLog struct {
	applies []time.Duration
	errors  []string
}

var tookField = regexp.MustCompile(`\btook=([0-9.]+[a-zµ]+)`)

func readEnforcerLog(path string) (enforcerLog, error) {
	var out enforcerLog
	f, err := os.Open(path)
	if err != nil {
		return out, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, `msg="policy applied"`):
			if m := tookField.FindStringSubmatch(line); m != nil {
				if d, err := time.ParseDuration(m[1]); err == nil {
					out.applies = append(out.applies, d)
				}
			}
		case strings.Contains(line, "level=error"):
			out.errors = append(out.errors, line)
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return out, err
	}
	return out, nil
}
