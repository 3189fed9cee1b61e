package enforcer

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// bulkPolicies is n rules for namespaces labelled moat.dev/zone=web, in policies of at most 1000 rules (the
// CRD's limit is 1024 a direction): distinct /32s and ports that the probe never matches.
func bulkPolicies(n int) []string {
	var docs []string
	for start := 0; start < n; start += 1000 {
		var b strings.Builder
		fmt.Fprintf(&b, "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: bulk-%d}\n", start/1000)
		b.WriteString("spec:\n  priority: 2000\n  namespaceSelector: {matchLabels: {moat.dev/zone: web}}\n  egress:\n")
		for i := start; i < n && i < start+1000; i++ {
			fmt.Fprintf(&b, "  - {action: Allow, to: [{cidr: 100.%d.%d.%d/32}], ports: [{protocol: TCP, port: %d}]}\n",
				64+i>>16, (i>>8)&255, i&255, 10000+i%50000)
		}
		docs = append(docs, b.String())
	}
	return docs
}

// toggleYAML is the policy the benchmark changes: one rule on the probe's port, Allow or Deny.
func toggleYAML(action string) string {
	return `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: toggle}
spec:
  priority: 10
  namespaceSelector: {matchLabels: {moat.dev/zone: web}}
  egress:
  - action: ` + action + `
    to: [{cidr: 198.51.100.1/32}]
    ports: [{protocol: TCP, port: 8080}]
`
}

const benchBase = `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {defaultEgress: Deny}
---
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {moat.dev/zone: web}}
`

// prober runs the from-pod program on a SYN of the web namespace's pod every millisecond (BPF_PROG_TEST_RUN on
// the live maps), the way the next new connection would meet it.
type prober struct {
	prog    *ebpf.Program
	ctx     []byte
	sport   uint16
	ifindex int
}

func newProber(b *testing.B, dp *bpf.Datapath, identity uint32) *prober {
	ifindex := testutil.Dummy(b)
	ep, _ := bpf.NewEndpoint(identity, bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr("10.250.0.2")})
	if err := dp.SetEndpoint(uint32(ifindex), &ep); err != nil {
		b.Fatal(err)
	}
	ctx := make([]byte, 192) // struct __sk_buff with ifindex at 40
	ctx[40], ctx[41], ctx[42], ctx[43] = byte(ifindex), byte(ifindex>>8), byte(ifindex>>16), byte(ifindex>>24)
	return &prober{prog: dp.FromPod, ctx: ctx, sport: 20000, ifindex: ifindex}
}

func (p *prober) allowed(b *testing.B) bool {
	p.sport++
	if p.sport < 20000 {
		p.sport = 20000
	}
	frame := testutil.Packet{Src: netip.MustParseAddr("10.250.0.2"), Dst: netip.MustParseAddr("198.51.100.1"),
		Proto: testutil.ProtoTCP, SPort: p.sport, DPort: 8080, TCPFlags: testutil.TCPSyn}.Bytes()
	ret, err := p.prog.Run(&ebpf.RunOptions{Data: frame, Context: p.ctx})
	if err != nil {
		b.Fatal(err)
	}
	return int32(ret) == -1 // TCX_NEXT: passed on
}

// until probes every millisecond until the verdict is want, and returns how long that took from start.
func (p *prober) until(b *testing.B, want bool, start time.Time) time.Duration {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		if p.allowed(b) == want {
			return time.Since(start)
		}
		if time.Since(start) > 30*time.Second {
			b.Fatalf("the verdict never became allowed=%v", want)
		}
	}
	return 0
}

func reportLatencies(b *testing.B, d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	ms := func(q float64) float64 {
		i := int(q * float64(len(d)-1))
		return float64(d[i].Microseconds()) / 1000
	}
	b.ReportMetric(ms(0.5), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkChangeEnforced measures change -> enforced: the time from a policy change (a file written, an object
// updated in the API server) until a probe every millisecond sees the new verdict, with N rules loaded besides.
// Run it with -benchtime=Nx: each op is one change.
func BenchmarkChangeEnforced(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("source=folder/rules=%d", n), func(b *testing.B) { benchFolder(b, n) })
	}
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("source=kubernetes/rules=%d", n), func(b *testing.B) { benchKube(b, n) })
	}
}

func benchEnforcer(b *testing.B) (*bpf.Datapath, *Enforcer) {
	root := testutil.PinRoot(b)
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Close() })
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e, err := New(dp, logrus.NewEntry(log))
	if err != nil {
		b.Fatal(err)
	}
	return dp, e
}

func benchFolder(b *testing.B, n int) {
	dp, e := benchEnforcer(b)
	dir := b.TempDir()
	writeB := func(name, content string) {
		if err := writeFileAtomic(dir, name, content); err != nil {
			b.Fatal(err)
		}
	}
	writeB("base.yaml", benchBase)
	writeB("bulk.yaml", strings.Join(bulkPolicies(n-1), "---\n"))
	writeB("toggle.yaml", toggleYAML("Deny"))
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 1)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = e.Run(ctx, &Folder{Dir: dir, Log: e.log}, func() {
			select {
			case started <- struct{}{}:
			default:
			}
		})
	}()
	defer func() { cancel(); <-stopped }() // before the datapath closes
	<-started
	p := newProber(b, dp, e.Identities()["web"])
	if p.allowed(b) {
		b.Fatal("the probe passes before the toggle allows it")
	}
	var lat []time.Duration
	allow := true
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		action := map[bool]string{true: "Allow", false: "Deny"}[allow]
		start := time.Now()
		writeB("toggle.yaml", toggleYAML(action))
		lat = append(lat, p.until(b, allow, start))
		allow = !allow
		time.Sleep(100 * time.Millisecond) // let the watch settle before the next change
	}
	b.StopTimer()
	reportLatencies(b, lat)
}

func benchKube(b *testing.B, n int) {
	cluster := kubetest.Start(b)
	dyn, client := clients(b, cluster.Config)
	installCRDs(b, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web",
		Labels: map[string]string{"moat.dev/zone": "web"}}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	create := func(res dynamic.ResourceInterface, y string) {
		if _, err := res.Create(ctx, fromYAML(b, y), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	create(dyn.Resource(ConfigsResource), "apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {defaultEgress: Deny}\n")
	for _, doc := range bulkPolicies(n - 1) {
		create(dyn.Resource(PoliciesResource), doc)
	}
	create(dyn.Resource(PoliciesResource), toggleYAML("Deny"))

	dp, e := benchEnforcer(b)
	k := &Kubernetes{Config: cluster.Config, NodeName: "bench", Log: e.log}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = e.Run(ctx, k, nil)
	}()
	defer func() { cancel(); <-stopped }() // before the datapath closes
	var web uint32
	if !poll(60*time.Second, func() bool {
		id, ok, _ := dp.NamespaceIdentity("web")
		web = id
		return ok && e.RuleCount() >= n
	}) {
		b.Fatalf("the cluster's %d rules never arrived (%d)", n, e.RuleCount())
	}
	p := newProber(b, dp, web)
	if p.allowed(b) {
		b.Fatal("the probe passes before the toggle allows it")
	}
	policies := dyn.Resource(PoliciesResource)
	var lat []time.Duration
	allow := true
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		action := map[bool]string{true: "Allow", false: "Deny"}[allow]
		// a merge patch needs no resourceVersion, so the enforcer's status writes never make it conflict
		patch := `{"spec":{"egress":[{"action":"` + action + `","to":[{"cidr":"198.51.100.1/32"}],"ports":[{"protocol":"TCP","port":8080}]}]}}`
		start := time.Now()
		if _, err := policies.Patch(ctx, "toggle", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, p.until(b, allow, start))
		allow = !allow
		time.Sleep(100 * time.Millisecond)
	}
	b.StopTimer()
	reportLatencies(b, lat)
}
