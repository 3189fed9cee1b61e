package enforcer

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// A pattern keeps its slot while it stays, since the addresses learned for it hold that bit: patterns that come
// and go around it never move it, a new pattern takes a slot no learned address holds, and when the only slot
// left is one a gone pattern held, what was learned for that pattern is forgotten first. An enforcer started on
// the same pins keeps the slots; a namespace that goes takes what it learned with it.
func TestFQDNSlotsStay(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	ns := namespace("shop")
	ns.Labels = map[string]string{v1alpha1.LabelZone: "shop"}
	state := func(names ...string) State {
		p := v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: "names"}, Spec: v1alpha1.FirewallPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: "shop"}}}}
		rule := v1alpha1.Rule{Action: v1alpha1.ActionAllow, To: []v1alpha1.Peer{}}
		for _, n := range names {
			rule.To = append(rule.To, v1alpha1.Peer{FQDN: n})
		}
		p.Spec.Egress = []v1alpha1.Rule{rule}
		return State{Namespaces: []v1alpha1.Namespace{ns}, Policies: []v1alpha1.FirewallPolicy{p}}
	}
	slots := func() map[string]int {
		t.Helper()
		sets, err := dp.FQDNSets()
		if err != nil {
			t.Fatal(err)
		}
		names, err := dp.FQDNNames(sets[e.Identities()["shop"]])
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for base, v := range names {
			for form, mask := range v.Slots {
				for s := 0; s < 64; s++ {
					if mask&(1<<s) != 0 {
						out[v1alpha1.NamePattern{Form: v1alpha1.NameForm(form), Base: base}.String()] = s
					}
				}
			}
		}
		return out
	}
	learned := func() map[netip.Addr]uint64 {
		t.Helper()
		all, err := dp.LearnedFQDN()
		if err != nil {
			t.Fatal(err)
		}
		out := map[netip.Addr]uint64{}
		for _, l := range all {
			if l.Identity == e.Identities()["shop"] {
				out[l.Addr] = l.Slots
			}
		}
		return out
	}
	if err := e.Apply(state("a.example", "b.example")); err != nil {
		t.Fatal(err)
	}
	id := e.Identities()["shop"]
	if got := slots(); got["a.example"] != 0 || got["b.example"] != 1 || len(got) != 2 {
		t.Fatalf("first slots %v", got)
	}
	ya, yb := netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("198.51.100.11")
	for addr, slot := range map[netip.Addr]int{ya: 0, yb: 1} {
		if err := dp.LearnFQDN(id, addr, 1<<slot, time.Hour); err != nil {
			t.Fatal(err)
		}
	}

	// a goes, 0.example comes (sorted first): b keeps slot 1, and the newcomer takes neither 1 nor a's dirty 0
	if err := e.Apply(state("0.example", "b.example")); err != nil {
		t.Fatal(err)
	}
	if got := slots(); got["b.example"] != 1 || got["0.example"] != 2 || len(got) != 2 {
		t.Fatalf("after a change: slots %v, want b.example 1 and 0.example 2", got)
	}
	if got := learned(); got[ya] != 1<<0 || got[yb] != 1<<1 {
		t.Errorf("after a change: learned %v: nothing needed forgetting yet", got)
	}

	// an enforcer started on the same pins keeps them
	e, err := New(dp, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(state("0.example", "b.example")); err != nil {
		t.Fatal(err)
	}
	if got := slots(); got["b.example"] != 1 || got["0.example"] != 2 {
		t.Fatalf("after a restart: slots %v", got)
	}

	// 64 patterns, every slot: the last newcomer must take a's old slot 0, so what a learned is forgotten first
	names := []string{"0.example", "b.example"}
	for i := range 62 {
		names = append(names, fmt.Sprintf("n%02d.example", i))
	}
	if err := e.Apply(state(names...)); err != nil {
		t.Fatal(err)
	}
	got := slots()
	if len(got) != 64 || got["b.example"] != 1 || got["0.example"] != 2 {
		t.Fatalf("64 patterns: %d slots, b.example %d, 0.example %d", len(got), got["b.example"], got["0.example"])
	}
	taken := map[int]string{}
	for name, s := range got {
		if other, dup := taken[s]; dup {
			t.Fatalf("%s and %s share slot %d", name, other, s)
		}
		taken[s] = name
	}
	if _, ok := taken[0]; !ok {
		t.Fatalf("slot 0 unused with 64 patterns: %v", got)
	}
	if l := learned(); l[yb] != 1<<1 || l[ya] != 0 {
		t.Errorf("64 patterns: learned %v: want a's address forgotten (slot 0 went to %s) and b's kept", l, taken[0])
	}

	// the namespace goes: what it learned goes with its identity
	if err := e.Apply(State{}); err != nil {
		t.Fatal(err)
	}
	all, err := dp.LearnedFQDN()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range all {
		if l.Identity == id {
			t.Errorf("identity %d released, but it still holds learned address %s", id, l.Addr)
		}
	}
}

// The trusted resolvers in dns_resolvers: the source's (the cluster DNS Service) with NodeLocal DNSCache's address
// when the host has it, or FirewallConfig's list instead; and FirewallConfig's timing and bound in dns_timing.
func TestTrustedResolversAndTiming(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	resolvers := func() []string {
		t.Helper()
		got, err := dp.Resolvers()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range got {
			out = append(out, a.String())
		}
		slices.Sort(out)
		return out
	}
	s := State{DNSResolvers: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.1.5")}}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	if got := resolvers(); !slices.Equal(got, []string{"10.244.1.5", "10.96.0.10"}) {
		t.Errorf("the source's resolvers: %v", got)
	}
	if err := e.SetHostAddresses([]netip.Addr{netip.MustParseAddr("10.123.2.1"), netip.MustParseAddr("169.254.20.10")}); err != nil {
		t.Fatal(err)
	}
	if got := resolvers(); !slices.Equal(got, []string{"10.244.1.5", "10.96.0.10", "169.254.20.10"}) {
		t.Errorf("with NodeLocal DNSCache on the host: %v", got)
	}
	ttl, grace, bound := int32(5), int32(7), int32(100)
	s.Config = &v1alpha1.FirewallConfig{Spec: v1alpha1.FirewallConfigSpec{DNS: &v1alpha1.DNSConfig{
		TrustedResolvers: []string{"10.0.0.53"}, MinTTLSeconds: &ttl, GraceSeconds: &grace, MaxLearnedPerNamespace: &bound}}}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	if got := resolvers(); !slices.Equal(got, []string{"10.0.0.53"}) {
		t.Errorf("FirewallConfig's list: %v", got)
	}
	timing, err := dp.DNSTiming()
	if err != nil {
		t.Fatal(err)
	}
	if timing.MinTtl != 5 || timing.Grace != 7 || timing.MaxPerIdentity != 100 {
		t.Errorf("timing %+v, want min TTL 5, grace 7, bound 100", timing)
	}
}

// moatctl trace --to NAME: a denied name is denied by its dnsDeny rule; a name of an fqdn pattern is allowed by the
// fqdn rule once resolved, with each address learned for it traced; a name of no pattern is the world's.
func TestTraceName(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	ns := namespace("shop")
	ns.Labels = map[string]string{v1alpha1.LabelZone: "shop", v1alpha1.LabelEgress: "Deny"}
	port := int32(443)
	pol := v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: "names"}, Spec: v1alpha1.FirewallPolicySpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: "shop"}},
		Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionAllow, To: []v1alpha1.Peer{{FQDN: "*.stripe.example"}},
			Ports: []v1alpha1.Port{{Protocol: "TCP", Port: &port}}}},
		DNSDeny: []string{"**.tracker.example"}}}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{ns}, Policies: []v1alpha1.FirewallPolicy{pol}}); err != nil {
		t.Fatal(err)
	}
	id := e.Identities()["shop"]
	learnedAt := netip.MustParseAddr("198.51.100.20")
	if err := dp.LearnFQDN(id, learnedAt, 1<<0, time.Hour); err != nil {
		t.Fatal(err)
	}
	learned, err := dp.LearnedFQDN()
	if err != nil {
		t.Fatal(err)
	}
	node := nodeView{learned: learned, now: time.Now()}
	ask := func(name string) agentapi.TraceResult {
		t.Helper()
		res, err := trace(e.Snapshot(), node, agentapi.TraceRequest{Namespace: "shop", Protocol: "tcp", Port: 443, RemoteName: name})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := ask("x.tracker.example"); r.Verdict != "denied" || r.Reason != "dns-name-denied" || r.Rule != "dnsDeny[0]" || r.Policy != "names" {
		t.Errorf("a denied name: %+v", r)
	}
	r := ask("API.stripe.example")
	if r.Verdict != "allowed" || r.Rule != "egress[0]" || len(r.Addresses) != 1 || r.Addresses[0].Remote != learnedAt.String() ||
		r.Addresses[0].Verdict != "allowed" || r.Addresses[0].Rule != "egress[0]" {
		t.Errorf("a name of the fqdn pattern: %+v", r)
	}
	if r := ask("stripe.example"); r.Verdict != "denied" || r.Reason != "denied-by-default" || len(r.Addresses) != 0 {
		t.Errorf("a name of no pattern (*. needs one label more): %+v", r)
	}
	// the learned address traced by itself is allowed too, and only for the namespace that learned it
	res, err := trace(e.Snapshot(), node, agentapi.TraceRequest{Namespace: "shop", Protocol: "tcp", Port: 443, Remote: learnedAt.String()})
	if err != nil || res.Verdict != "allowed" || res.Rule != "egress[0]" {
		t.Errorf("the learned address: %+v %v", res, err)
	}
	if _, err := trace(e.Snapshot(), node, agentapi.TraceRequest{Namespace: "shop", RemoteName: "*.stripe.example"}); err == nil {
		t.Errorf("a pattern is no name to trace")
	}
}

// A namespace given more fqdn patterns than fit keeps the policy in force, and with it its slots and names: the
// names written must stay the ones the compiled policy's slots stand for.
func TestFQDNTooManyPatternsKeepsTheNames(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	ns := namespace("shop")
	ns.Labels = map[string]string{v1alpha1.LabelZone: "shop"}
	state := func(n int) State {
		rule := v1alpha1.Rule{Action: v1alpha1.ActionAllow, To: []v1alpha1.Peer{}}
		for i := range n {
			rule.To = append(rule.To, v1alpha1.Peer{FQDN: fmt.Sprintf("n%02d.example", i)})
		}
		p := v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: "names"}, Spec: v1alpha1.FirewallPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: "shop"}},
			Egress:            []v1alpha1.Rule{rule}}}
		return State{Namespaces: []v1alpha1.Namespace{ns}, Policies: []v1alpha1.FirewallPolicy{p}}
	}
	names := func() map[string]bpf.FQDNValue {
		t.Helper()
		sets, err := dp.FQDNSets()
		if err != nil {
			t.Fatal(err)
		}
		got, err := dp.FQDNNames(sets[e.Identities()["shop"]])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := e.Apply(state(3)); err != nil {
		t.Fatal(err)
	}
	before := names()
	if len(before) != 3 {
		t.Fatalf("3 patterns: names %v", before)
	}
	_ = e.Apply(state(65)) // refused by the compiler: stale, not an error of the apply
	after := names()
	if len(after) != 3 {
		t.Fatalf("65 patterns: %d names written, want the 3 in force", len(after))
	}
	for base, v := range before {
		if after[base] != v {
			t.Errorf("%s: %v in force, %v now", base, v, after[base])
		}
	}
	if e.Snapshot().Stale[e.Identities()["shop"]] == "" {
		t.Errorf("65 patterns: the namespace is not reported stale")
	}
}
