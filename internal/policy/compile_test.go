package policy_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

func ref(order int, r policy.Rule) bpf.RuleRef {
	return bpf.RuleRef{Order: uint32(order), RuleId: r.ID, Action: uint8(r.Action)}
}

func cidrEntry(class uint16, prefix string, enforce, audit bpf.RuleRef) policy.Entry {
	v := policy.EmptyValue()
	v.Enforce, v.Audit = enforce, audit
	return policy.Entry{Key: bpf.CIDRKey(class, pfx(prefix)), Value: v}
}

func portEntry(dir bpf.Direction, proto uint8, port uint16, bits int, class uint32) policy.Entry {
	v := policy.EmptyValue()
	v.PortClass = class
	return policy.Entry{Key: bpf.PortKey(dir, proto, port, bits), Value: v}
}

func peerEntry(class uint16, identity uint32, enforce, audit bpf.RuleRef) policy.Entry {
	v := policy.EmptyValue()
	v.Enforce, v.Audit = enforce, audit
	return policy.Entry{Key: bpf.PeerKey(class, identity), Value: v}
}

// TestCompileEntries pins the exact entries of small policies: what each kind of entry holds, that shadowed
// rules cost nothing, and that a hole in a protocol's ports gets an explicit class 0.
func TestCompileEntries(t *testing.T) {
	none := bpf.NoRule()
	web := policy.Rule{ID: 1, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("10.0.0.0/8", "10.1.0.0/16")}, Ports: portRange(policy.ProtoTCP, 443, 443)}
	denyAll := policy.Rule{ID: 2, Direction: bpf.Egress, Action: deny, AllPeers: true, AllPorts: true}
	auditDB := policy.Rule{ID: 3, Direction: bpf.Ingress, Action: deny, Audit: true, Peers: []policy.Peer{{Identities: []uint32{4, 5}}}, Ports: portRange(policy.ProtoTCP, 5432, 5432)}
	holes := policy.Rule{ID: 4, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("2001:db8::/32")},
		Ports: []policy.PortRange{{policy.ProtoTCP, 0, 1000}, {policy.ProtoTCP, 1002, 65535}}}
	nobody := policy.Rule{ID: 5, Direction: bpf.Ingress, Action: deny, Peers: []policy.Peer{}, AllPorts: true}

	tests := []struct {
		name  string
		rules []policy.Rule
		want  []policy.Entry // without the header
	}{
		{"one rule", []policy.Rule{web}, []policy.Entry{
			portEntry(bpf.Egress, 0, 0, 8, 0),
			portEntry(bpf.Egress, policy.ProtoTCP, 443, 32, 1),
			portEntry(bpf.Ingress, 0, 0, 8, 0),
			cidrEntry(1, "10.0.0.0/8", ref(0, web), none),
			cidrEntry(1, "10.1.0.0/16", none, none),
		}},
		{"a rule, then deny everything", []policy.Rule{web, denyAll}, []policy.Entry{
			portEntry(bpf.Egress, 0, 0, 8, 1),
			portEntry(bpf.Egress, policy.ProtoTCP, 443, 32, 2),
			portEntry(bpf.Ingress, 0, 0, 8, 0),
			cidrEntry(1, "0.0.0.0/0", ref(1, denyAll), none),
			cidrEntry(1, "::/0", ref(1, denyAll), none),
			cidrEntry(2, "0.0.0.0/0", ref(1, denyAll), none),
			cidrEntry(2, "10.0.0.0/8", ref(0, web), none),
			cidrEntry(2, "10.1.0.0/16", ref(1, denyAll), none),
			cidrEntry(2, "::/0", ref(1, denyAll), none),
		}},
		{"a shadowed rule costs nothing", []policy.Rule{denyAll, web}, []policy.Entry{
			portEntry(bpf.Egress, 0, 0, 8, 1),
			portEntry(bpf.Ingress, 0, 0, 8, 0),
			cidrEntry(1, "0.0.0.0/0", ref(0, denyAll), none),
			cidrEntry(1, "::/0", ref(0, denyAll), none),
		}},
		{"audit rule with namespace peers", []policy.Rule{auditDB}, []policy.Entry{
			portEntry(bpf.Egress, 0, 0, 8, 0),
			portEntry(bpf.Ingress, 0, 0, 8, 0),
			portEntry(bpf.Ingress, policy.ProtoTCP, 5432, 32, 1),
			peerEntry(1, 4, none, ref(0, auditDB)),
			peerEntry(1, 5, none, ref(0, auditDB)),
		}},
		{"a hole in a protocol's ports is class 0", []policy.Rule{holes}, []policy.Entry{
			portEntry(bpf.Egress, 0, 0, 8, 0),
			portEntry(bpf.Egress, policy.ProtoTCP, 0, 16, 1),
			portEntry(bpf.Egress, policy.ProtoTCP, 1001, 32, 0),
			portEntry(bpf.Ingress, 0, 0, 8, 0),
			cidrEntry(1, "2001:db8::/32", ref(0, holes), none),
		}},
		{"a rule without peers needs no class", []policy.Rule{nobody}, []policy.Entry{
			portEntry(bpf.Egress, 0, 0, 8, 0),
			portEntry(bpf.Ingress, 0, 0, 8, 0),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := withRules(tt.rules...)
			got, err := policy.Compile(p)
			if err != nil {
				t.Fatal(err)
			}
			identity := policy.IdentityValue(p)
			want := slices.Clone(tt.want)
			slices.SortFunc(want, policy.CompareEntries)
			for i := range want {
				if want[i].Key.Data[0] == uint8(bpf.KindPort) { // port entries carry the identity's flags and defaults
					want[i].Value.Flags, want[i].Value.DefaultVerdict = identity.Flags, identity.DefaultVerdict
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("entries:\n%s\nwant:\n%s", formatEntries(got), formatEntries(want))
			}
		})
	}
}

// A policy without rules compiles to one root port entry per direction, which carries the identity's flags and
// world defaults: the datapath reads them from the PORT entry it looks up anyway.
func TestCompileIdentityFlags(t *testing.T) {
	p := &policy.IdentityPolicy{Identity: 3, MetadataAllowed: true, Audit: true, DefaultEgress: deny, DefaultIngress: allow}
	got, err := policy.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d entries, want one root port entry per direction", len(got))
	}
	for _, dir := range []bpf.Direction{bpf.Egress, bpf.Ingress} {
		root := got[int(dir)]
		if root.Key != bpf.PortKey(dir, 0, 0, 8) || root.Value.PortClass != 0 ||
			root.Value.Flags != uint32(bpf.IdentityAllowMeta|bpf.IdentityAudit) ||
			root.Value.DefaultVerdict != [2]uint8{uint8(deny), uint8(allow)} ||
			root.Value.Enforce != bpf.NoRule() || root.Value.Audit != bpf.NoRule() {
			t.Errorf("%s root port entry %+v: want class 0 with the identity's flags and defaults", dir, root)
		}
	}
	p.MetadataAllowed, p.Audit = false, false
	if got, _ := policy.Compile(p); got[0].Value.Flags != 0 || got[1].Value.Flags != 0 {
		t.Errorf("flags %d and %d, want 0", got[0].Value.Flags, got[1].Value.Flags)
	}
}

// TestCompileManyPortClasses checks that a policy needing more port classes than the keys can name is
// refused, and one just below the limit compiles.
func TestCompileManyPortClasses(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles 65,536 rules")
	}
	p := distinctRules(policy.MaxClasses + 1)
	if _, err := policy.Compile(p); err == nil || !strings.Contains(err.Error(), "more than 65535 port classes") {
		t.Errorf("Compile of %d classes: %v", policy.MaxClasses+1, err)
	}
	p.Rules = p.Rules[:policy.MaxClasses]
	entries, err := policy.Compile(p)
	if err != nil {
		t.Fatalf("Compile of %d classes: %v", policy.MaxClasses, err)
	}
	if s := policy.Stats(entries); s.Classes != policy.MaxClasses {
		t.Errorf("%d classes, want %d", s.Classes, policy.MaxClasses)
	}
}

// distinctRules is a policy of n rules each with its own port and cidr, egress and ingress alternating.
func distinctRules(n int) *policy.IdentityPolicy {
	p := withRules()
	for i := range n {
		r := policy.Rule{ID: uint32(i%int(bpf.MaxRules-1)) + 1, Direction: bpf.Direction(i & 1), Action: allow}
		if i%3 == 0 {
			r.Action = deny
		}
		var c netip.Prefix
		if i%4 == 3 {
			c = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 16), byte(i >> 8), byte(i)}), 56)
		} else {
			c = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32-i%8)
		}
		r.Peers = []policy.Peer{{CIDR: c.Masked()}}
		proto := policy.ProtoTCP
		if i%5 == 4 {
			proto = policy.ProtoUDP
		}
		port := uint16(i/2 + 1)
		r.Ports = []policy.PortRange{{Protocol: proto, First: port, Last: port}}
		p.Rules = append(p.Rules, r)
	}
	return p
}

func TestStats(t *testing.T) {
	p := distinctRules(1000)
	entries, err := policy.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := policy.Stats(entries)
	if s.Entries != len(entries) || s.Entries != s.Ports+s.CIDRs+s.Peers || s.Classes != 1000 || s.CIDRs != 1000 || s.Peers != 0 {
		t.Errorf("stats %+v", s)
	}
	if s.Bytes() != s.Entries*60 {
		t.Errorf("%d bytes for %d entries of a 24-byte key and a 36-byte value", s.Bytes(), s.Entries)
	}
	t.Logf("1,000 rules: %+v, %d bytes", s, s.Bytes())
}

func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		p := distinctRules(n)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			var s policy.EntryStats
			for b.Loop() {
				entries, err := policy.Compile(p)
				if err != nil {
					b.Fatal(err)
				}
				s = policy.Stats(entries)
			}
			b.ReportMetric(float64(s.Entries), "entries")
			b.ReportMetric(float64(s.Ports), "port-entries")
			b.ReportMetric(float64(s.Classes), "classes")
			b.ReportMetric(float64(s.Bytes()), "map-bytes")
		})
	}
}

func formatEntries(es []policy.Entry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "  len %3d %x -> enforce %+v audit %+v class %d flags %d defaults %v\n", e.Key.Prefixlen, e.Key.Data,
			e.Value.Enforce, e.Value.Audit, e.Value.PortClass, e.Value.Flags, e.Value.DefaultVerdict)
	}
	return b.String()
}

// An fqdn peer compiles to the PEER entry of its pattern's slot (its place in the sorted patterns), and an
// identity with fqdn peers carries the flag that makes the datapath look world addresses up among the learned
// ones; one without has no flag.
func TestCompileFQDNPeers(t *testing.T) {
	api := policy.Rule{ID: 1, Direction: bpf.Egress, Action: allow,
		Peers: []policy.Peer{{FQDN: "api.example.com"}, {FQDN: "*.cdn.example"}}, Ports: portRange(policy.ProtoTCP, 443, 443)}
	p := &policy.IdentityPolicy{Identity: 9, DefaultEgress: deny, DefaultIngress: deny, Rules: []policy.Rule{api}}
	entries, err := policy.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	// slots: "*.cdn.example" sorts before "api.example.com"
	want := map[uint32]bool{bpf.IdentityFQDN(0): false, bpf.IdentityFQDN(1): false}
	for _, e := range entries {
		if e.Key.Data[0] == uint8(bpf.KindPort) && e.Value.Flags&uint32(bpf.IdentityFQDNPeers) == 0 {
			t.Errorf("port entry %v has flags %#x, without the fqdn flag", e.Key, e.Value.Flags)
		}
		if e.Key.Data[0] != uint8(bpf.KindPeer) {
			continue
		}
		for id := range want {
			if e.Key == bpf.PeerKey(1, id) && e.Value.Enforce == ref(0, api) {
				want[id] = true
			}
		}
	}
	for id, found := range want {
		if !found {
			t.Errorf("no PEER entry of class 1 for identity %#x allowing rule 1", id)
		}
	}
	plain, err := policy.Compile(&policy.IdentityPolicy{Identity: 9, DefaultEgress: deny, DefaultIngress: deny})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range plain {
		if e.Value.Flags&uint32(bpf.IdentityFQDNPeers) != 0 {
			t.Errorf("entry %v of a policy without fqdn peers has the fqdn flag", e.Key)
		}
	}
}
