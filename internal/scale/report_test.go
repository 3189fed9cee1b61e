package scale

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// result is what one cluster size measured; zero values were not measured.
type result struct {
	Pods      int
	DualStack bool
	Skipped   string // why the size did not run
	Problem   string // what stopped the run part way

	Fill             time.Duration
	FirstApply       time.Duration
	FirstPod         time.Duration
	PodEvent         []time.Duration
	NamespaceEvent   []time.Duration
	Learn            []time.Duration
	NeverLearned     int
	PolicyChange     []time.Duration
	Applies          []time.Duration
	PeakRSS          uint64
	RSSAfterChurn    uint64
	IdleCPU          float64
	ChurnRate        float64
	ChurnCPU         float64
	KernelBytes      uint64
	PolicyBytes      uint64
	IPCacheEntries   int
	StartBytes       int64
	BytesPerPod      float64
	ControlPlanePeak map[string]uint64
	LogErrors        int
	LastError        string
}

type report struct {
	Date, Machine, Code string
	MemoryLimit         string // the enforcer's cgroup memory limit ("": none)
	Planned             []int  // the sizes the run was asked for, in order
	Results             []*result
}

func newReport(t *testing.T) *report {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	code, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		code = []byte("unknown")
	}
	if os.Getenv("MOAT_SCALE_ENFORCER") != "" { // a binary built elsewhere: MOAT_SCALE_CODE says from what
		code = []byte(cmp.Or(os.Getenv("MOAT_SCALE_CODE"), "the moat-enforcer binary in $MOAT_SCALE_ENFORCER"))
	}
	memTotal := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) >= 2 {
			var kb uint64
			fmt.Sscan(f[1], &kb)
			memTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return &report{
		Date: time.Now().UTC().Format("2006-01-02"),
		Machine: fmt.Sprintf("%s, %d CPUs, %s of memory; kernel %s; %s", cpu, runtime.NumCPU(), memTotal,
			strings.TrimSpace(string(kernel)), runtime.Version()),
		Code: strings.TrimSpace(string(code)),
	}
}

func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "–"
	case d < 10*time.Second:
		return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000)
	default:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
}

func p50p99(d []time.Duration) string {
	if len(d) == 0 {
		return "–"
	}
	return fmt.Sprintf("%s / %s (n=%d)", ms(percentile(d, 0.5)), ms(percentile(d, 0.99)), len(d))
}

func median(d []time.Duration) string {
	if len(d) == 0 {
		return "–"
	}
	return fmt.Sprintf("%s (%s-%s)", ms(percentile(d, 0.5)), ms(slices.Min(d)), ms(slices.Max(d)))
}

func size(b uint64) string {
	if b == 0 {
		return "–"
	}
	return mib(b)
}

func pct(cores float64) string { return fmt.Sprintf("%.1f%%", 100*cores) }

// row is one line of the table: a metric, its cell for each result and the target at 150,000 pods.
type row struct {
	name, target string
	cell         func(r *result) string
}

var rows = []row{
	{"addresses (pods)", "300,000 (150,000)", func(r *result) string {
		if r.DualStack {
			return fmt.Sprintf("%d (%d, dual-stack)", 2*r.Pods, r.Pods)
		}
		return fmt.Sprintf("%d (%d)", r.Pods, r.Pods)
	}},
	{"fill of the API server (not counted)", "", func(r *result) string { return ms(r.Fill) }},
	{"enforcer start -> first apply done", "", func(r *result) string { return ms(r.FirstApply) }},
	{"first pod after the start -> in the ipcache", "", func(r *result) string { return ms(r.FirstPod) }},
	{"pod created -> in the ipcache, one at a time (median, min-max)", "", func(r *result) string { return median(r.PodEvent) }},
	{"namespace created -> identity published (median, min-max)", "", func(r *result) string { return median(r.NamespaceEvent) }},
	{"remote pod learn p50 / p99 (steady rate)", "p99 <= 1 s", func(r *result) string { return p50p99(r.Learn) }},
	{"remote pods never learned (5 min)", "0", func(r *result) string {
		if len(r.Learn) == 0 && r.NeverLearned == 0 {
			return "–"
		}
		return fmt.Sprint(r.NeverLearned)
	}},
	{"policy change -> enforced p50 / p99, one at a time", "p99 <= 1 s", func(r *result) string { return p50p99(r.PolicyChange) }},
	{"applies the enforcer logged, median time each", "", func(r *result) string {
		if len(r.Applies) == 0 {
			return "–"
		}
		return fmt.Sprintf("%d, %s", len(r.Applies), ms(percentile(r.Applies, 0.5)))
	}},
	{"enforcer peak RSS (VmHWM)", "<= 256 MiB", func(r *result) string { return size(r.PeakRSS) }},
	{"enforcer RSS after the churn", "", func(r *result) string { return size(r.RSSAfterChurn) }},
	{"enforcer CPU, 10 s without API writes (after the policy changes)", "", func(r *result) string {
		if r.RSSAfterChurn == 0 {
			return "–"
		}
		return pct(r.IdleCPU)
	}},
	{"enforcer CPU under churn (pods/s reached)", "<= 5% of a core", func(r *result) string {
		if r.ChurnRate == 0 {
			return "–"
		}
		return fmt.Sprintf("%s (%.0f/s)", pct(r.ChurnCPU), r.ChurnRate)
	}},
	{"kernel map memory, all maps", "", func(r *result) string { return size(r.KernelBytes) }},
	{"kernel policy memory (policy map and tries)", "<= 64 MiB", func(r *result) string { return size(r.PolicyBytes) }},
	{"ipcache entries", "", func(r *result) string {
		if r.IPCacheEntries == 0 {
			return "–"
		}
		return fmt.Sprint(r.IPCacheEntries)
	}},
	{"bytes from the API server to the start's first apply (one node)", "", func(r *result) string {
		return size(uint64(r.StartBytes))
	}},
	{"bytes from the API server per remote pod (create + status)", "", func(r *result) string {
		if r.BytesPerPod == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f KiB", r.BytesPerPod/1024)
	}},
	{"etcd + kube-apiserver peak RSS", "", func(r *result) string {
		return size(r.ControlPlanePeak["etcd"] + r.ControlPlanePeak["kube-apiserver"])
	}},
	{"errors in the enforcer's log", "0", func(r *result) string {
		if r.ControlPlanePeak == nil {
			return "–"
		}
		return fmt.Sprint(r.LogErrors)
	}},
}

// fillNote says how the fill's pods reached the API server.
func fillNote() string {
	if os.Getenv("MOAT_SCALE_FILL") == "api" {
		return "The fill's pods are created through the API (MOAT_SCALE_FILL=api), each a create and a status write.\n"
	}
	return "The fill's pods are written to etcd in bulk, in the API server's storage format, and reach the API\n" +
		"server's cache through its etcd watch (MOAT_SCALE_FILL=api creates them through the API instead, about 140\n" +
		"writes a second here); every pod an event is timed on is created through the API, as a kubelet's would be.\n"
}

func (rep *report) render() string {
	var b strings.Builder
	b.WriteString("# Benchmarks: the enforcer against a large cluster\n\n")
	b.WriteString("Generated by `make scale` (internal/scale; `SCALE=5000,20000 make scale` picks sizes). Each size is a new\n" +
		"etcd and kube-apiserver filled with 2,000 namespaces (labelled with 20 zones), 1,000 Nodes (addresses and\n" +
		"podCIDRs), 2,000 Services, 500 FirewallPolicies (namespace peers by zone, CIDRs with excepts in both families,\n" +
		"single ports and ranges, 9 priorities, one in ten in Audit; 300 select a zone, 150 one namespace by name, 45 a\n" +
		"team's namespaces, 5 all: some 250 distinct rule sets) and the pods, on\n" +
		"999 nodes other than the enforcer's, with the addresses a kubelet reports in their status (there is no kubelet).\n" +
		fillNote() +
		"The moat-enforcer binary then runs as a child process against the API server,\n" +
		"through a proxy that counts the bytes it receives, and the harness reads the datapath it pins through the bpf\n" +
		"package (the ipcache, the namespace identities, the policy tries' map ids).\n\n")
	fmt.Fprintf(&b, "- Date: %s; machine: %s; code: %s.\n", rep.Date, rep.Machine, rep.Code)
	b.WriteString("- The API server, etcd, the enforcer and the harness share the machine: times include their contention.\n")
	if rep.MemoryLimit != "" {
		fmt.Fprintf(&b, "- The enforcer runs in a memory cgroup limited to %s, as in a container with that limits.memory: it\n"+
			"  keeps the Go runtime's memory under 80%% of it (docs/install.md).\n", rep.MemoryLimit)
	} else {
		b.WriteString("- The enforcer runs with no memory limit: the Go runtime lets its heap grow to twice what is live.\n")
	}
	if os.Getenv("MOAT_SCALE_DIRECT") == "" {
		b.WriteString("- As shipped: the enforcer runs with --address-feed and the address feed's publisher (moat-enforcer\n" +
			"  --publish-address-feed) runs beside it, outside the byte count; pods and nodes reach the enforcer as\n" +
			"  AddressSlices. MOAT_SCALE_DIRECT=1 measures an enforcer that watches every Pod and Node instead.\n")
	} else {
		b.WriteString("- MOAT_SCALE_DIRECT=1: the enforcer watches every Pod and Node (no address feed).\n")
	}
	fmt.Fprintf(&b, "- Events are timed from the API write (for a pod, the write of its status with the addresses) until the\n"+
		"  datapath holds the change: the pod's addresses in the ipcache as pods of its namespace's identity; the\n"+
		"  namespace's identity published; for a policy change, the trie of an identity it selects swapped (policy map\n"+
		"  id changed). Steady rate: %d remote pods at %.0f/s. Policy changes: up to %d, one at a time, at most %v.\n"+
		"  Churn: %d pods/s created for %v, the oldest deleted once %d are alive; CPU is the enforcer process's user +\n"+
		"  system time (/proc/PID/stat) over the churn, in percent of one core. Peak RSS is VmHWM over the whole run.\n",
		*flagSteadyPods, *flagSteadyRate, *flagChanges, *flagChangeBudget, *flagChurnRate, *flagChurnFor, churnAlive)
	b.WriteString("- Kernel memory is each map's memlock (fdinfo): every map pinned under the pin root plus the policy trie of\n" +
		"  every published identity. Bytes from the API server are TCP payload (TLS records) the enforcer received: its\n" +
		"  lists and watches, and the replies to its policy status writes.\n\n")

	b.WriteString("| | ")
	var sep strings.Builder
	sep.WriteString("|---|")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "%d pods | ", r.Pods)
		sep.WriteString("---|")
	}
	b.WriteString("target at 150,000 pods |\n")
	sep.WriteString("---|\n")
	b.WriteString(sep.String())
	for _, rw := range rows {
		fmt.Fprintf(&b, "| %s | ", rw.name)
		for _, r := range rep.Results {
			cell := "–"
			if r.Skipped == "" {
				cell = rw.cell(r)
			}
			fmt.Fprintf(&b, "%s | ", cell)
		}
		fmt.Fprintf(&b, "%s |\n", rw.target)
	}
	b.WriteString("\n")
	for _, r := range rep.Results {
		switch {
		case r.Skipped != "":
			fmt.Fprintf(&b, "- %d pods: %s.\n", r.Pods, r.Skipped)
		case r.Problem != "":
			fmt.Fprintf(&b, "- %d pods: %s.", r.Pods, r.Problem)
			if r.LastError != "" {
				fmt.Fprintf(&b, " The enforcer's last error: `%s`", truncate(r.LastError, 400))
			}
			b.WriteString("\n")
		}
	}
	for _, n := range rep.Planned[min(len(rep.Results), len(rep.Planned)):] {
		fmt.Fprintf(&b, "- %d pods: not measured; the run had not reached it when this page was written.\n", n)
	}
	b.WriteString("\nCilium's published figures, for comparison, are in [benchmarks.md](benchmarks.md#api-server-scale).\n")
	return b.String()
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "`", "'")
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
