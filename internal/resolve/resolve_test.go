package resolve

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/policyfile"
)

// ids numbers rules in the order they are asked for, and remembers which is which.
type ids struct {
	next uint32
	keys map[uint32]RuleKey
}

func (r *ids) id(k RuleKey) uint32 {
	for id, known := range r.keys {
		if known == k {
			return id
		}
	}
	r.next++
	r.keys[r.next] = k
	return r.next
}

func load(t *testing.T, extra ...string) (Input, *ids) {
	t.Helper()
	data, err := os.ReadFile("../../examples/payments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, e := range extra {
		text += "\n---\n" + e
	}
	objs, problems := policyfile.Parse("example.yaml", strings.NewReader(text))
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	r := &ids{keys: map[uint32]RuleKey{}}
	in := Input{Identities: map[string]uint32{}, RuleID: r.id}
	if len(objs.Configs) > 0 {
		in.Config = &objs.Configs[0].Object
	}
	for _, p := range objs.Policies {
		in.Policies = append(in.Policies, p.Object)
	}
	for i, n := range objs.Namespaces {
		in.Namespaces = append(in.Namespaces, n.Object)
		in.Identities[n.Object.Name] = uint32(10 + i)
	}
	return in, r
}

// The example, resolved and decided by the reference evaluator, does what docs/policy.md says it does.
func TestResolveExample(t *testing.T) {
	in, rules := load(t)
	out := Resolve(in)
	payments, shared := in.Identities["payments"], in.Identities["shared-services"]
	p := out.Policies[payments]
	if p == nil || len(p.Rules) != 3 || out.Policies[shared] == nil || len(out.Policies[shared].Rules) != 0 {
		t.Fatalf("resolved %+v", out.Policies)
	}
	for id, ip := range out.Policies {
		if _, err := policy.Compile(ip); err != nil {
			t.Errorf("identity %d does not compile: %v", id, err)
		}
	}
	if len(out.Metadata) != len(DefaultMetadataAddresses) || len(out.Cluster) != 3 {
		t.Errorf("metadata %v cluster %v", out.Metadata, out.Cluster)
	}
	if k := rules.keys[p.Rules[2].ID]; k.Policy != "payments-egress" || k.Direction != bpf.Ingress || k.Index != 0 {
		t.Errorf("third rule is %+v, want payments-egress ingress 0", k)
	}
	var ipc []policy.IPCacheEntry
	for _, m := range out.Metadata {
		ipc = append(ipc, policy.IPCacheEntry{Prefix: m, Class: bpf.ClassMetadata})
	}
	ipc = append(ipc, policy.IPCacheEntry{Prefix: netip.MustParsePrefix("10.244.1.7/32"), Class: bpf.ClassPod, Identity: shared},
		policy.IPCacheEntry{Prefix: netip.MustParsePrefix("10.244.0.0/16"), Class: bpf.ClassCluster})
	cache := policy.NewIPCache(ipc)
	for _, c := range []struct {
		name   string
		dir    bpf.Direction
		proto  uint8
		port   uint16
		remote string
		want   bpf.Reason
		rule   int // index into p.Rules, -1 for none
	}{
		{"allowed cidr and port", bpf.Egress, 6, 443, "203.0.113.5", bpf.ReasonAllowRule, 0},
		{"except falls to the deny", bpf.Egress, 6, 443, "203.0.113.200", bpf.ReasonDenyRule, 1},
		{"other port denied", bpf.Egress, 6, 80, "203.0.113.5", bpf.ReasonDenyRule, 1},
		{"udp range", bpf.Egress, 17, 8050, "203.0.113.5", bpf.ReasonAllowRule, 0},
		{"icmp echo", bpf.Egress, 1, 8, "203.0.113.5", bpf.ReasonAllowRule, 0},
		{"gre", bpf.Egress, 47, 0, "203.0.113.5", bpf.ReasonAllowRule, 0},
		{"shared zone by namespace", bpf.Egress, 6, 443, "10.244.1.7", bpf.ReasonAllowRule, 0},
		{"v6 world denied", bpf.Egress, 6, 443, "2001:db8::1", bpf.ReasonDenyRule, 1},
		{"metadata blocked", bpf.Egress, 6, 80, "169.254.169.254", bpf.ReasonMetadata, -1},
		{"ingress allowed", bpf.Ingress, 6, 8443, "198.51.100.9", bpf.ReasonAllowRule, 2},
		{"ingress default allow", bpf.Ingress, 6, 22, "198.51.100.9", bpf.ReasonAllowDefault, -1},
	} {
		r := policy.Evaluate(p, out.Defaults, cache, policy.Packet{Direction: c.dir, Protocol: c.proto, Port: c.port,
			Remote: netip.MustParseAddr(c.remote)})
		wantRule := uint32(0)
		if c.rule >= 0 {
			wantRule = p.Rules[c.rule].ID
		}
		if r.Reason != c.want || r.RuleID != wantRule {
			t.Errorf("%s: %s rule %d, want %s rule %d", c.name, bpf.ReasonName(r.Reason), r.RuleID, bpf.ReasonName(c.want), wantRule)
		}
	}
}

// Namespace labels: metadata, defaults and audit mode.
func TestResolveLabels(t *testing.T) {
	in, _ := load(t, `apiVersion: v1
kind: Namespace
metadata:
  name: tools
  labels: {moat.dev/metadata: allow, moat.dev/egress: Deny, moat.dev/ingress: Deny, moat.dev/mode: Audit}`)
	out := Resolve(in)
	tools := out.Policies[in.Identities["tools"]]
	if !tools.MetadataAllowed || !tools.Audit || tools.DefaultEgress != bpf.ActionDeny || tools.DefaultIngress != bpf.ActionDeny {
		t.Errorf("tools: %+v", tools)
	}
	if len(out.Problems) != 0 {
		t.Errorf("problems %v", out.Problems)
	}
}

// Label values are read in any case; a value Moat does not know never opens anything (an unknown world default
// is Deny, an unknown mode Enforce, moat.dev/metadata matches only "allow") and is a problem naming the namespace.
func TestResolveLabelValues(t *testing.T) {
	cfgAllow := &v1alpha1.FirewallConfig{Spec: v1alpha1.FirewallConfigSpec{DefaultEgress: v1alpha1.ActionAllow,
		DefaultIngress: v1alpha1.ActionAllow}}
	cfgDeny := &v1alpha1.FirewallConfig{Spec: v1alpha1.FirewallConfigSpec{DefaultEgress: v1alpha1.ActionDeny,
		DefaultIngress: v1alpha1.ActionDeny}}
	for _, c := range []struct {
		name, label, value string
		config             *v1alpha1.FirewallConfig
		want               func(p *policy.IdentityPolicy) bool
		problem            string // "" for none
	}{
		{"deny lower", v1alpha1.LabelEgress, "deny", cfgAllow, func(p *policy.IdentityPolicy) bool { return p.DefaultEgress == bpf.ActionDeny }, ""},
		{"deny upper", v1alpha1.LabelEgress, "DENY", cfgAllow, func(p *policy.IdentityPolicy) bool { return p.DefaultEgress == bpf.ActionDeny }, ""},
		{"deny title", v1alpha1.LabelIngress, "Deny", cfgAllow, func(p *policy.IdentityPolicy) bool { return p.DefaultIngress == bpf.ActionDeny }, ""},
		{"allow lower", v1alpha1.LabelEgress, "allow", cfgDeny, func(p *policy.IdentityPolicy) bool { return p.DefaultEgress == bpf.ActionAllow }, ""},
		{"allow upper", v1alpha1.LabelIngress, "ALLOW", cfgDeny, func(p *policy.IdentityPolicy) bool { return p.DefaultIngress == bpf.ActionAllow }, ""},
		{"egress block", v1alpha1.LabelEgress, "block", cfgAllow, func(p *policy.IdentityPolicy) bool {
			return p.DefaultEgress == bpf.ActionDeny && p.DefaultIngress == bpf.ActionAllow
		}, `label moat.dev/egress="block": want Allow or Deny; world egress of the namespace is denied`},
		{"ingress empty", v1alpha1.LabelIngress, "", cfgAllow, func(p *policy.IdentityPolicy) bool {
			return p.DefaultIngress == bpf.ActionDeny && p.DefaultEgress == bpf.ActionAllow
		}, `label moat.dev/ingress="": want Allow or Deny; world ingress of the namespace is denied`},
		{"ingress typo", v1alpha1.LabelIngress, "Alow", cfgAllow, func(p *policy.IdentityPolicy) bool { return p.DefaultIngress == bpf.ActionDeny },
			`moat.dev/ingress="Alow"`},
		{"audit lower", v1alpha1.LabelMode, "audit", nil, func(p *policy.IdentityPolicy) bool { return p.Audit }, ""},
		{"enforce upper", v1alpha1.LabelMode, "ENFORCE", nil, func(p *policy.IdentityPolicy) bool { return !p.Audit }, ""},
		{"mode unknown", v1alpha1.LabelMode, "loud", nil, func(p *policy.IdentityPolicy) bool { return !p.Audit },
			`label moat.dev/mode="loud": want Audit or Enforce; the namespace stays in Enforce mode`},
		{"mode audit-ish", v1alpha1.LabelMode, "Auditing", nil, func(p *policy.IdentityPolicy) bool { return !p.Audit }, `"Auditing"`},
		{"metadata allow", v1alpha1.LabelMetadata, "allow", nil, func(p *policy.IdentityPolicy) bool { return p.MetadataAllowed }, ""},
		{"metadata deny", v1alpha1.LabelMetadata, "Deny", nil, func(p *policy.IdentityPolicy) bool { return !p.MetadataAllowed }, ""},
		{"metadata Allow", v1alpha1.LabelMetadata, "Allow", nil, func(p *policy.IdentityPolicy) bool { return !p.MetadataAllowed },
			`label moat.dev/metadata="Allow": want allow (exactly`},
		{"metadata yes", v1alpha1.LabelMetadata, "yes", nil, func(p *policy.IdentityPolicy) bool { return !p.MetadataAllowed },
			`moat.dev/metadata="yes"`},
	} {
		in := Input{Config: c.config, Identities: map[string]uint32{"ns": 7}, RuleID: func(RuleKey) uint32 { return 1 },
			Namespaces: []v1alpha1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: map[string]string{c.label: c.value}}}}}
		out := Resolve(in)
		if p := out.Policies[7]; p == nil || !c.want(p) {
			t.Errorf("%s: %s=%q resolved to %+v", c.name, c.label, c.value, p)
		}
		switch {
		case c.problem == "" && len(out.Problems) != 0:
			t.Errorf("%s: problems %v, want none", c.name, out.Problems)
		case c.problem != "" && (len(out.Problems) != 1 || out.Problems[0].Kind != "Namespace" || out.Problems[0].Name != "ns" ||
			!strings.Contains(out.Problems[0].Message, c.problem)):
			t.Errorf("%s: problems %v, want one about namespace ns with %q", c.name, out.Problems, c.problem)
		}
	}
}

// A policy whose selector matches no namespace is a warning naming it; one that selects a namespace is not.
func TestResolveWarnsOfPoliciesSelectingNothing(t *testing.T) {
	sel := func(l map[string]string) *metav1.LabelSelector { return &metav1.LabelSelector{MatchLabels: l} }
	in := Input{
		Policies: []v1alpha1.FirewallPolicy{
			{ObjectMeta: metav1.ObjectMeta{Name: "used"}, Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: sel(map[string]string{"team": "a"})}},
			{ObjectMeta: metav1.ObjectMeta{Name: "unused"}, Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: sel(map[string]string{"team": "typo"})}},
			{ObjectMeta: metav1.ObjectMeta{Name: "by-name"}, Spec: v1alpha1.FirewallPolicySpec{
				NamespaceSelector: sel(map[string]string{"kubernetes.io/metadata.name": "a"})}},
		},
		Namespaces: []v1alpha1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "a",
			Labels: map[string]string{"team": "a", "kubernetes.io/metadata.name": "a"}}}},
		Identities: map[string]uint32{"a": 1},
		RuleID:     func(RuleKey) uint32 { return 1 },
	}
	out := Resolve(in)
	if len(out.Warnings) != 1 || out.Warnings[0] != (Finding{Kind: v1alpha1.KindFirewallPolicy, Name: "unused", Message: SelectsNothing}) {
		t.Errorf("warnings %v, want one about unused", out.Warnings)
	}
	in.Namespaces = nil
	if out := Resolve(in); len(out.Warnings) != 3 {
		t.Errorf("no namespace at all: warnings %v, want all three", out.Warnings)
	}
	// a host firewall configured is one this version does not enforce: said, not silently ignored
	in.Config = &v1alpha1.FirewallConfig{ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: v1alpha1.FirewallConfigSpec{HostFirewall: &v1alpha1.HostFirewallConfig{AdminCIDRs: []string{"198.51.100.0/24"}}}}
	want := Finding{Kind: v1alpha1.KindFirewallConfig, Name: "default", Message: HostFirewallNotEnforced}
	if out := Resolve(in); len(out.Warnings) != 4 || !slices.Contains(out.Warnings, want) {
		t.Errorf("a host firewall configured: warnings %v, want %v among them", out.Warnings, want)
	}
}

// Order of policies: priority, then name; Audit policies mark their rules; to: [] is no peer; a cluster-wide
// metadata Allow opens it to everyone.
func TestResolveOrderAndModes(t *testing.T) {
	prio := func(n int32) *int32 { return &n }
	all := &metav1.LabelSelector{}
	in := Input{
		Config: &v1alpha1.FirewallConfig{Spec: v1alpha1.FirewallConfigSpec{DefaultEgress: v1alpha1.ActionDeny,
			MetadataAPI: &v1alpha1.MetadataAPI{Action: v1alpha1.ActionAllow}}},
		Policies: []v1alpha1.FirewallPolicy{
			{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: all,
				Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionDeny, To: []v1alpha1.Peer{}}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "a"}, Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: all,
				Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionAllow}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "z-first"}, Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: all,
				Priority: prio(5), Mode: v1alpha1.ModeAudit, Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionDeny}}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}, Spec: v1alpha1.FirewallPolicySpec{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"x": "y"}},
				Egress:            []v1alpha1.Rule{{Action: v1alpha1.ActionDeny}}}},
		},
		Namespaces: []v1alpha1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "n"}}, {ObjectMeta: metav1.ObjectMeta{Name: "unknown"}}},
		Identities: map[string]uint32{"n": 3},
	}
	r := &ids{keys: map[uint32]RuleKey{}}
	in.RuleID = r.id
	out := Resolve(in)
	if len(out.Policies) != 1 {
		t.Fatalf("%d identities resolved, want only the one with an identity", len(out.Policies))
	}
	p := out.Policies[3]
	var order []string
	for _, rule := range p.Rules {
		order = append(order, r.keys[rule.ID].Policy)
	}
	if strings.Join(order, ",") != "z-first,a,b" {
		t.Errorf("rule order %v, want z-first (priority 5), a, b", order)
	}
	if !p.Rules[0].Audit || p.Rules[1].Audit || !p.Rules[1].AllPeers || p.Rules[2].AllPeers || len(p.Rules[2].Peers) != 0 {
		t.Errorf("rules %+v", p.Rules)
	}
	if !p.MetadataAllowed || p.DefaultEgress != bpf.ActionDeny || out.Defaults.DefaultEgress != bpf.ActionDeny {
		t.Errorf("policy %+v, defaults %+v", p, out.Defaults)
	}
}

// A Deny rule by namespace also names the unknown pod (an address of a pod range whose pod is not known yet, which
// may be of the namespaces denied); an Allow rule by namespace does not, so the window before a remote pod is known
// never opens what its namespace would be denied.
func TestDenyByNamespaceNamesTheUnknownPod(t *testing.T) {
	zone := func(z string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"zone": z}}
	}
	in := Input{
		Policies: []v1alpha1.FirewallPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.FirewallPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{},
			Ingress: []v1alpha1.Rule{{Action: v1alpha1.ActionAllow, From: []v1alpha1.Peer{{NamespaceSelector: zone("web")}}},
				{Action: v1alpha1.ActionDeny, From: []v1alpha1.Peer{{NamespaceSelector: zone("untrusted")}}}}}}},
		Namespaces: []v1alpha1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "w", Labels: map[string]string{"zone": "web"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "u", Labels: map[string]string{"zone": "untrusted"}}}},
		Identities: map[string]uint32{"w": 3, "u": 4},
		RuleID:     (&ids{keys: map[uint32]RuleKey{}}).id,
	}
	rules := Resolve(in).Policies[3].Rules
	if len(rules) != 2 {
		t.Fatalf("rules %+v", rules)
	}
	if got := rules[0].Peers[0].Identities; len(got) != 1 || got[0] != 3 {
		t.Errorf("allow from zone web: peers %v, want only w's identity", got)
	}
	if got := rules[1].Peers[0].Identities; len(got) != 2 || got[0] != 4 || got[1] != bpf.IdentityUnknownPod {
		t.Errorf("deny from zone untrusted: peers %v, want u's identity and the unknown pod", got)
	}
	ipc := policy.NewIPCache([]policy.IPCacheEntry{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Class: bpf.ClassPod,
		Identity: bpf.IdentityUnknownPod}})
	r := policy.Evaluate(Resolve(in).Policies[3], policy.Defaults{}, ipc, policy.Packet{Direction: bpf.Ingress,
		Protocol: policy.ProtoTCP, Port: 80, Remote: netip.MustParseAddr("10.244.1.9")})
	if r.Action != bpf.ActionDeny || r.Reason != bpf.ReasonUnknownPod {
		t.Errorf("an unknown pod: action %d reason %s, want denied as unknown-pod", r.Action, bpf.ReasonName(r.Reason))
	}
}

// Names resolve as written: fqdn peers normalized into their rules, dnsDeny names in the order of the policies
// that select the namespace (priority, then name), each with a rule id of its own named dnsDeny[i], and the DNS
// settings with their defaults or FirewallConfig's values.
func TestResolveNames(t *testing.T) {
	in, rules := load(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: payments-names}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: payments}}
  priority: 50
  egress:
  - action: Allow
    to: [{fqdn: API.Stripe.com.}, {fqdn: "**.s3.amazonaws.com"}]
    ports: [{protocol: TCP, port: 443}]
  dnsDeny: ["*.Tracker.example", bad.example.org]
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: everyone-names}
spec:
  namespaceSelector: {}
  mode: Audit
  dnsDeny: ["**.ru"]`)
	out := Resolve(in)
	p := out.Policies[in.Identities["payments"]]
	if p == nil || len(p.Rules) == 0 {
		t.Fatalf("payments resolved to %+v", p)
	}
	first := p.Rules[0]
	if len(first.Peers) != 2 || first.Peers[0].FQDN != "api.stripe.com" || first.Peers[1].FQDN != "**.s3.amazonaws.com" {
		t.Errorf("the fqdn rule's peers: %+v", first.Peers)
	}
	if got := p.FQDNPatterns(); len(got) != 2 || got[0] != "**.s3.amazonaws.com" || got[1] != "api.stripe.com" {
		t.Errorf("FQDNPatterns %v", got)
	}
	if _, err := policy.Compile(p); err != nil {
		t.Errorf("payments does not compile: %v", err)
	}
	var names []string
	for _, d := range p.DNSDeny {
		k := rules.keys[d.ID]
		names = append(names, k.Policy+"/"+k.Name()+"="+strings.Join(d.Patterns, ",")+map[bool]string{true: " audit"}[d.Audit])
	}
	want := "payments-names/dnsDeny[0]=*.tracker.example payments-names/dnsDeny[1]=bad.example.org everyone-names/dnsDeny[0]=**.ru audit"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("payments' dnsDeny:\n got %s\nwant %s", got, want)
	}
	if s := out.Policies[in.Identities["shared-services"]]; len(s.DNSDeny) != 1 || len(s.FQDNPatterns()) != 0 {
		t.Errorf("shared-services: dnsDeny %+v, fqdn %v", s.DNSDeny, s.FQDNPatterns())
	}
	if d := out.DNS; d.ClusterDNSService != "kube-system/kube-dns" || d.MinTTL != 30*time.Second ||
		d.Grace != time.Minute || d.MaxLearned != 4096 || d.TrustedResolvers != nil {
		t.Errorf("default DNS settings: %+v", d)
	}
	ttl, grace := int32(5), int32(0)
	in.Config = &v1alpha1.FirewallConfig{Spec: v1alpha1.FirewallConfigSpec{DNS: &v1alpha1.DNSConfig{
		TrustedResolvers: []string{"10.96.0.10", "fd00:10:96::a"}, ClusterDNSService: "dns/coredns",
		MinTTLSeconds: &ttl, GraceSeconds: &grace}}}
	if d := Resolve(in).DNS; len(d.TrustedResolvers) != 2 || d.ClusterDNSService != "dns/coredns" ||
		d.MinTTL != 5*time.Second || d.Grace != 0 {
		t.Errorf("configured DNS settings: %+v", d)
	}
}
