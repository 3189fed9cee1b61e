package policy_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

func TestValidate(t *testing.T) {
	good := func() policy.Rule {
		return policy.Rule{ID: 5, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("10.0.0.0/8", "10.1.0.0/16")},
			Ports: portRange(policy.ProtoTCP, 80, 443)}
	}
	tests := []struct {
		name   string
		mutate func(p *policy.IdentityPolicy)
		want   string // a part of the error; "" = valid
	}{
		{"valid", func(p *policy.IdentityPolicy) {}, ""},
		{"valid: AllPeers ignores peers", func(p *policy.IdentityPolicy) {
			p.Rules[0].AllPeers = true
			p.Rules[0].Peers = []policy.Peer{{CIDR: pfx("::ffff:1.2.3.0/120")}}
		}, ""},
		{"valid: AllPorts ignores ports", func(p *policy.IdentityPolicy) {
			p.Rules[0].AllPorts = true
			p.Rules[0].Ports = portRange(policy.ProtoTCP, 9, 1)
		}, ""},
		{"valid: selector without namespaces", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{{}} }, ""},
		{"valid: highest rule id", func(p *policy.IdentityPolicy) { p.Rules[0].ID = bpf.MaxRules - 1 }, ""},
		{"valid: host bits in a cidr", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("10.0.0.1/8", "10.1.2.3/16")} }, ""},
		{"valid: single port, full range", func(p *policy.IdentityPolicy) {
			p.Rules[0].Ports = []policy.PortRange{{policy.ProtoTCP, 0, 0}, {policy.ProtoUDP, 0, 65535}, {policy.ProtoICMP, 8, 8}}
		}, ""},

		{"rule id 0", func(p *policy.IdentityPolicy) { p.Rules[0].ID = 0 }, "rule id 0: must be 1 to 65535"},
		{"rule id too large", func(p *policy.IdentityPolicy) { p.Rules[0].ID = bpf.MaxRules }, "rule id 65536"},
		{"action none", func(p *policy.IdentityPolicy) { p.Rules[0].Action = bpf.ActionNone }, "rule 5: action 0: must be Allow or Deny"},
		{"unknown direction", func(p *policy.IdentityPolicy) { p.Rules[0].Direction = 2 }, "rule 5: direction 2"},
		{"default egress", func(p *policy.IdentityPolicy) { p.DefaultEgress = bpf.ActionNone }, "default egress: action 0"},
		{"default ingress", func(p *policy.IdentityPolicy) { p.DefaultIngress = 7 }, "default ingress: action 7"},
		{"inverted ports", func(p *policy.IdentityPolicy) { p.Rules[0].Ports = portRange(policy.ProtoUDP, 9000, 8000) }, "rule 5: protocol 17 ports 9000-8000: first is after last"},
		{"cidr and identities", func(p *policy.IdentityPolicy) { p.Rules[0].Peers[0].Identities = []uint32{4} }, "rule 5: peer 10.0.0.0/8: a peer is a cidr or namespaces, not both"},
		{"identity 0", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{{Identities: []uint32{4, 0}}} }, "rule 5: namespace peer: identity 0"},
		{"except without cidr", func(p *policy.IdentityPolicy) {
			p.Rules[0].Peers = []policy.Peer{{Identities: []uint32{4}, Except: []netip.Prefix{pfx("10.0.0.0/8")}}}
		}, "except needs a cidr"},
		{"except outside", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("10.0.0.0/8", "11.0.0.0/16")} }, "rule 5: cidr 10.0.0.0/8: except 11.0.0.0/16 is not strictly inside it"},
		{"except equal", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("10.0.0.0/8", "10.0.0.0/8")} }, "except 10.0.0.0/8 is not strictly inside"},
		{"except wider", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("10.1.0.0/16", "10.0.0.0/8")} }, "except 10.0.0.0/8 is not strictly inside"},
		{"except of the other family", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("0.0.0.0/0", "2001:db8::/32")} }, "except 2001:db8::/32 is of the other address family"},
		{"invalid except", func(p *policy.IdentityPolicy) {
			p.Rules[0].Peers = []policy.Peer{{CIDR: pfx("10.0.0.0/8"), Except: []netip.Prefix{{}}}}
		}, "rule 5: cidr 10.0.0.0/8: invalid except prefix"},
		{"4-in-6 cidr", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("::ffff:10.0.0.0/104")} }, "rule 5: cidr ::ffff:10.0.0.0/104: 4-in-6 mapped prefix; write IPv4 prefixes as plain IPv4"},
		{"4-in-6 except", func(p *policy.IdentityPolicy) { p.Rules[0].Peers = []policy.Peer{cidrP("::/0", "::ffff:10.0.0.0/104")} }, "except ::ffff:10.0.0.0/104: 4-in-6 mapped prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &policy.IdentityPolicy{Identity: 2, DefaultEgress: allow, DefaultIngress: deny, Rules: []policy.Rule{good()}}
			tt.mutate(p)
			err := p.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("no error, want %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
			if _, cerr := policy.Compile(p); (cerr == nil) != (err == nil) {
				t.Errorf("Compile error %v, Validate error %v", cerr, err)
			}
		})
	}
	if err := (*policy.IdentityPolicy)(nil).Validate(); err == nil {
		t.Error("a nil policy should not validate")
	}
	if _, err := policy.Compile(nil); err == nil {
		t.Error("Compile(nil) should fail")
	}
}
