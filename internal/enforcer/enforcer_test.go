package enforcer

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

const baseYAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {defaultEgress: Deny, defaultIngress: Deny}
---
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {moat.dev/zone: web}}
`

func policyYAML(ports ...string) string {
	var b strings.Builder
	b.WriteString("apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: web-out}\n")
	b.WriteString("spec:\n  namespaceSelector: {matchLabels: {moat.dev/zone: web}}\n  egress:\n  - action: Allow\n    ports:\n")
	for _, p := range ports {
		b.WriteString("    - {protocol: TCP, port: " + p + "}\n")
	}
	return b.String()
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := writeFileAtomic(dir, name, content); err != nil {
		t.Fatal(err)
	}
}

// writeFileAtomic writes a file the way editors and config tools do: a temporary file renamed into place.
func writeFileAtomic(dir, name, content string) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

// waitFor polls cond for up to 10 s (the machine may be busy with other tests).
func waitFor(cond func() bool) bool { return poll(10*time.Second, cond) }

// A folder of policy, watched: real traffic of a pod follows edits, and a broken file keeps its last good policy.
func TestFolderPolicyDrivesTraffic(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	log := logrus.NewEntry(logrus.New())
	dir := t.TempDir()
	write(t, dir, "base.yaml", baseYAML)
	write(t, dir, "policy.yaml", policyYAML("443"))
	s, err := (&Folder{Dir: dir, Log: log}).Load()
	if err != nil || len(s.Problems) != 0 {
		t.Fatalf("load: %v %v", err, s.Problems)
	}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	web, ok := e.Identities()["web"]
	if !ok || web == 0 {
		t.Fatalf("namespace web has no identity: %v", e.Identities())
	}
	if published, ok, _ := dp.NamespaceIdentity("web"); !ok || published != web {
		t.Errorf("published identity %d %v, want %d", published, ok, web)
	}

	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24"),
			netip.MustParsePrefix("169.254.169.254/32")})
	for _, addr := range []string{"198.51.100.1:443", "198.51.100.1:80", "169.254.169.254:443"} {
		testutil.Listen(t, pl.Host, addr)
	}
	ep, _ := bpf.NewEndpoint(web, bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr("10.250.0.2")})
	if err := dp.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
		t.Fatal(err)
	}
	att, _ := bpf.NewAttacher(bpf.ModeTCX)
	var a bpf.Attachment
	if err := pl.Host.Do(func(ns.NetNS) error {
		var err error
		a, err = att.Attach(pl.HostIfindex, dp.FromPod, dp.ToPod)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	reach := func(addr string) bool { return testutil.Exchange(pl.Pod, addr, time.Second) == nil }

	// the flow log names the pod from the plugin's record, and the policy and rule that decided
	store := endpoint.Store{Dir: t.TempDir()}
	if err := store.Save(&endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web",
		Pod: "client", HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex}); err != nil {
		t.Fatal(err)
	}
	if err := dp.UpdateConfig(func(c *bpf.Config) { c.Flags |= uint32(bpf.ConfigAllowEvents) }); err != nil {
		t.Fatal(err)
	}
	flowLog := &syncBuffer{}
	logCtx, stopLog := context.WithCancel(context.Background())
	logDone := make(chan struct{})
	go func() { defer close(logDone); _ = e.RunFlows(logCtx, store, flowLog) }()
	// the reader ends before the datapath closes (t.Cleanup); events before it opens wait in the ring buffer
	defer func() { stopLog(); <-logDone }()

	// the first exchange also waits on neighbour resolution and a listener just started: on a loaded machine it may
	// take longer than one exchange's second, so it is waited for
	if !waitFor(func() bool { return reach("198.51.100.1:443") }) || reach("198.51.100.1:80") || reach("169.254.169.254:443") {
		t.Fatalf("initial policy: 443 %v, 80 %v, metadata %v; want only 443", reach("198.51.100.1:443"),
			reach("198.51.100.1:80"), reach("169.254.169.254:443"))
	}

	if !waitFor(func() bool {
		return hasFlow(flowLog.String(), FlowRecord{Verdict: "allowed", Reason: "allowed-by-rule", Proto: "tcp", Dport: 443,
			Namespace: "web", Pod: "client", Remote: "world", Policy: "web-out", Rule: "egress[0]"}) &&
			hasFlow(flowLog.String(), FlowRecord{Verdict: "denied", Reason: "denied-by-default", Proto: "tcp", Dport: 80,
				Namespace: "web", Pod: "client", Remote: "world"})
	}) {
		t.Errorf("flow log lacks the allowed 443 and denied 80 flows:\n%s", flowLog.String())
	}

	run := runFolder(t, e, dir, nil)
	run.settle()

	write(t, dir, "policy.yaml", policyYAML("443", "80"))
	if !waitFor(func() bool { return reach("198.51.100.1:80") }) {
		t.Fatalf("port 80 still blocked after the file allowed it")
	}

	write(t, dir, "policy.yaml", policyYAML("443", "80")+"  - action: Perhaps\n")
	if problems := run.settle(); len(problems) == 0 || !strings.Contains(strings.Join(problems, "\n"), "policy.yaml") ||
		!strings.Contains(strings.Join(problems, "\n"), `FirewallPolicy "web-out"`) {
		t.Errorf("problems %v: want one naming the file and the policy", problems)
	}
	if !reach("198.51.100.1:80") {
		t.Errorf("a broken file replaced the last good policy: port 80 blocked")
	}

	// a change that denies an established connection cuts it at its next packet
	write(t, dir, "policy.yaml", policyYAML("443", "80", "8443"))
	run.settle()
	stream := testutil.StreamEcho(t, pl, "198.51.100.1:8443")
	if !waitFor(func() bool { return stream.Exchanged() > 0 }) {
		t.Fatal("the allowed stream never exchanged a line")
	}
	write(t, dir, "policy.yaml", policyYAML("443", "80"))
	run.settle()
	select {
	case <-stream.Ended():
	case <-time.After(30 * time.Second): // a liveness bound: the next line is cut at once
	}
	if exchanged, err := stream.Stop(); err == nil || exchanged == 0 {
		t.Errorf("an established connection the new policy denies went on (%d exchanges, %v)", exchanged, err)
	}

	if err := os.Remove(filepath.Join(dir, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool { return !reach("198.51.100.1:80") }) {
		t.Errorf("removing the policy file left port 80 open (world default is Deny)")
	}
}

// Identities survive an enforcer restart, and a withdrawn identity is not reused while an endpoint holds it.
func TestIdentitiesStableAndReleased(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	log := logrus.NewEntry(logrus.New())
	nss := func(names ...string) State {
		var s State
		for _, n := range names {
			s.Namespaces = append(s.Namespaces, namespace(n))
		}
		return s
	}
	if err := e.Apply(nss("a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	first := e.Identities()
	e2, err := New(dp, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Apply(nss("c", "a", "b")); err != nil {
		t.Fatal(err)
	}
	for name, id := range first {
		if e2.Identities()[name] != id {
			t.Errorf("namespace %s: identity %d after restart, %d before", name, e2.Identities()[name], id)
		}
	}
	// b goes while a pod of it still runs: its identity is withdrawn but not handed to the next namespace
	ep, _ := bpf.NewEndpoint(first["b"], bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr("10.1.0.5")})
	if err := dp.SetEndpoint(77, &ep); err != nil {
		t.Fatal(err)
	}
	if err := e2.Apply(nss("a", "c", "d")); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := dp.NamespaceIdentity("b"); ok {
		t.Errorf("identity of a deleted namespace still published")
	}
	if got := e2.Identities()["d"]; got == first["b"] {
		t.Errorf("namespace d got identity %d, still held by a pod of deleted namespace b", got)
	}
}

func namespace(name string) v1alpha1.Namespace {
	return v1alpha1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// syncBuffer is a bytes.Buffer for one writer and one reader at a time.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// hasFlow reports whether a JSON-lines log holds a record matching want in every field want sets (time, src,
// dst and sport aside).
func hasFlow(log string, want FlowRecord) bool {
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var got FlowRecord
		if json.Unmarshal([]byte(line), &got) != nil {
			continue
		}
		if got.Time.IsZero() || got.Src == "" || got.Dst == "" || got.Direction != "egress" {
			continue
		}
		got.Time, got.Src, got.Dst, got.Sport, got.Direction = time.Time{}, "", "", 0, ""
		if got == want {
			return true
		}
	}
	return false
}

// newTestEnforcer loads a datapath under a pin root of the test's own and starts an enforcer on it; both go
// when the test ends.
func newTestEnforcer(t *testing.T) (root string, dp *bpf.Datapath, e *Enforcer) {
	t.Helper()
	root = testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e, err = New(dp, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	return root, dp, e
}

// Namespaces whose resolved rules are the same share one compiled trie; a namespace whose rules come to differ
// gets its own, and an apply that changes nothing swaps nothing in.
func TestIdenticalPoliciesShareATrie(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	zone := func(name, z string) v1alpha1.Namespace {
		ns := namespace(name)
		ns.Labels = map[string]string{"moat.dev/zone": z}
		return ns
	}
	deny80 := v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-80"},
		Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"moat.dev/zone": "web"}},
			Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionDeny, Ports: []v1alpha1.Port{{Protocol: "TCP", Port: ptr(80)}}}}}}
	state := func(nss ...v1alpha1.Namespace) State {
		return State{Policies: []v1alpha1.FirewallPolicy{deny80}, Namespaces: nss}
	}
	trie := func(name string) ebpf.MapID {
		t.Helper()
		id, err := dp.PolicyMapID(e.Identities()[name])
		if err != nil {
			t.Fatalf("policy of %s: %v", name, err)
		}
		return id
	}
	if err := e.Apply(state(zone("a", "web"), zone("b", "web"), zone("c", "db"))); err != nil {
		t.Fatal(err)
	}
	a, b, c := trie("a"), trie("b"), trie("c")
	if a != b {
		t.Errorf("namespaces a and b, selected alike, use tries %d and %d: want one", a, b)
	}
	if c == a {
		t.Errorf("namespace c, selected by no policy, shares a's trie %d", a)
	}
	if err := e.Apply(state(zone("a", "web"), zone("b", "web"), zone("c", "db"))); err != nil {
		t.Fatal(err)
	}
	if trie("a") != a || trie("b") != b || trie("c") != c {
		t.Errorf("an apply that changes nothing swapped tries in: %d %d %d, were %d %d %d", trie("a"), trie("b"), trie("c"), a, b, c)
	}
	// b moves to c's zone: b takes c's trie as it is, a keeps its own
	if err := e.Apply(state(zone("a", "web"), zone("b", "db"), zone("c", "db"))); err != nil {
		t.Fatal(err)
	}
	if trie("b") != c || trie("a") != a {
		t.Errorf("after b moved zones: a %d (was %d), b %d, want c's %d", trie("a"), a, trie("b"), c)
	}
	if len(e.tries) != 2 {
		t.Errorf("%d tries held for two distinct rule sets", len(e.tries))
	}
	// a moves too: the web trie has no user left and is let go
	if err := e.Apply(state(zone("a", "db"), zone("b", "db"), zone("c", "db"))); err != nil {
		t.Fatal(err)
	}
	if len(e.tries) != 1 || trie("a") != c {
		t.Errorf("%d tries held, a uses %d: want one trie, c's %d", len(e.tries), trie("a"), c)
	}
	// the kernel frees a map once its last reference is gone, the outer map's after a grace period
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m, err := ebpf.NewMapFromID(a)
		if err != nil {
			break
		}
		m.Close()
		if time.Now().After(deadline) {
			t.Fatalf("the trie no identity uses (%d) is still in the kernel", a)
		}
	}
}

// An ipcache too small for the cluster's addresses refuses some of them: the apply goes on (policy changes still
// take effect), the status and metrics say how many, and they get their entries once there is room.
func TestFullIPCacheBlocksNothing(t *testing.T) {
	root := testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{IPCacheEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e, err := New(dp, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	pods := func(n int) []Address {
		var out []Address
		for i := range n {
			out = append(out, Address{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(i + 1)}), 32),
				Class: bpf.ClassPod, Namespace: "web"})
		}
		return out
	}
	srv := &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "test"}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web")}, Addresses: pods(40)}); err != nil {
		t.Fatalf("an apply with more addresses than the ipcache holds: %v", err)
	}
	if n := e.Snapshot().IPCacheRefused; n == 0 {
		t.Fatal("no address refused by a 16-entry ipcache")
	}
	st := srv.Status()
	if st.Ready || !strings.Contains(strings.Join(st.Problems, "\n"), "the ipcache is full") {
		t.Errorf("status with a full ipcache: ready %v, problems %q", st.Ready, st.Problems)
	}
	// a new namespace still gets its identity
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web"), namespace("db")}, Addresses: pods(40)}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := dp.NamespaceIdentity("db"); !ok {
		t.Error("a namespace was not published while the ipcache was full")
	}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web"), namespace("db")}, Addresses: pods(4)}); err != nil {
		t.Fatal(err)
	}
	if n := e.Snapshot().IPCacheRefused; n != 0 {
		t.Errorf("%d addresses still refused with room for them", n)
	}
	entries, err := dp.IPCacheEntries()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range pods(4) {
		if v, ok := entries[a.Prefix]; !ok || v.Identity != e.Identities()["web"] {
			t.Errorf("%s: %+v, want web's pod", a.Prefix, v)
		}
	}
	// the status and metrics count the ipcache from what the enforcer wrote, never walking the kernel's trie
	if n := e.Snapshot().IPCacheEntries; n != len(entries) {
		t.Errorf("the snapshot counts %d ipcache entries, the kernel holds %d", n, len(entries))
	}
	if m := srv.Status().Maps["ipcache"]; m.Entries != len(entries) || m.Capacity != 16 {
		t.Errorf("status: ipcache %d of %d, want %d of 16", m.Entries, m.Capacity, len(entries))
	}
}

// Readiness, status and the flow log answer from the last apply's snapshot while the next apply holds the
// enforcer: a long apply never makes a probe wait (and fail), nor a flow event queue.
func TestReadinessDoesNotWaitOnAnApply(t *testing.T) {
	_, _, e := newTestEnforcer(t)
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web")}}); err != nil {
		t.Fatal(err)
	}
	srv := &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "test"}
	e.mu.Lock() // an apply in progress
	answered := make(chan agentapi.Status, 1)
	described := make(chan FlowRecord, 1)
	go func() { answered <- srv.Status() }()
	go func() { described <- e.Describe(bpf.Flow{Identity: 1}, nil) }()
	var st agentapi.Status
	select {
	case st = <-answered:
	case <-time.After(time.Minute):
		e.mu.Unlock()
		t.Fatal("the status waited on the apply in progress")
	}
	select {
	case rec := <-described:
		if rec.Namespace != "web" {
			t.Errorf("flow of identity 1 described as namespace %q, want web", rec.Namespace)
		}
	case <-time.After(time.Minute):
		e.mu.Unlock()
		t.Fatal("a flow event waited on the apply in progress")
	}
	e.mu.Unlock()
	if !st.Ready || st.Generation != 1 || st.Namespaces != 1 {
		t.Errorf("status during an apply: ready %v, generation %d, namespaces %d; want the last apply's (ready, 1, 1)",
			st.Ready, st.Generation, st.Namespaces)
	}
}

// Two namespaces trading their rule sets in one apply: each takes the trie the other leaves, which stays open.
func TestNamespacesTradeTries(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	zone := func(name, z string) v1alpha1.Namespace {
		ns := namespace(name)
		ns.Labels = map[string]string{"moat.dev/zone": z}
		return ns
	}
	deny := func(zone string, port int32) v1alpha1.FirewallPolicy {
		return v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-" + zone},
			Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"moat.dev/zone": zone}},
				Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionDeny, Ports: []v1alpha1.Port{{Protocol: "TCP", Port: ptr(port)}}}}}}
	}
	policies := []v1alpha1.FirewallPolicy{deny("web", 80), deny("db", 5432)}
	trie := func(name string) ebpf.MapID {
		t.Helper()
		id, err := dp.PolicyMapID(e.Identities()[name])
		if err != nil {
			t.Fatalf("policy of %s: %v", name, err)
		}
		return id
	}
	// the orders in which Go visits the identities differ from run to run: trade a few times
	a, b := "web", "db"
	if err := e.Apply(State{Policies: policies, Namespaces: []v1alpha1.Namespace{zone("a", a), zone("b", b)}}); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		ta, tb := trie("a"), trie("b")
		a, b = b, a
		if err := e.Apply(State{Policies: policies, Namespaces: []v1alpha1.Namespace{zone("a", a), zone("b", b)}}); err != nil {
			t.Fatal(err)
		}
		if trie("a") != tb || trie("b") != ta {
			t.Fatalf("after the trade a uses %d and b %d, want %d and %d", trie("a"), trie("b"), tb, ta)
		}
		if len(e.tries) != 2 {
			t.Fatalf("%d tries held for two rule sets", len(e.tries))
		}
	}
}
