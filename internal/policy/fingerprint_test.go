package policy_test

import (
	"net/netip"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

// The fingerprint ignores the identity a policy is for, and changes with anything that changes what it compiles to.
func TestFingerprint(t *testing.T) {
	base := func() *policy.IdentityPolicy {
		return &policy.IdentityPolicy{Identity: 7, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionDeny,
			Rules: []policy.Rule{{ID: 3, Direction: bpf.Egress, Action: bpf.ActionDeny,
				Peers: []policy.Peer{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
					{Identities: []uint32{4, 5}}},
				Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: 80, Last: 90}}}}}
	}
	want := policy.Fingerprint(base())
	other := base()
	other.Identity = 8
	if policy.Fingerprint(other) != want {
		t.Errorf("two identities with the same rules have different fingerprints")
	}
	for name, change := range map[string]func(p *policy.IdentityPolicy){
		"metadata":       func(p *policy.IdentityPolicy) { p.MetadataAllowed = true },
		"audit":          func(p *policy.IdentityPolicy) { p.Audit = true },
		"egress default": func(p *policy.IdentityPolicy) { p.DefaultEgress = bpf.ActionDeny },
		"rule id":        func(p *policy.IdentityPolicy) { p.Rules[0].ID = 4 },
		"action":         func(p *policy.IdentityPolicy) { p.Rules[0].Action = bpf.ActionAllow },
		"direction":      func(p *policy.IdentityPolicy) { p.Rules[0].Direction = bpf.Ingress },
		"cidr":           func(p *policy.IdentityPolicy) { p.Rules[0].Peers[0].CIDR = netip.MustParsePrefix("10.0.0.0/9") },
		"cidr family":    func(p *policy.IdentityPolicy) { p.Rules[0].Peers[0].CIDR = netip.MustParsePrefix("a00::/8") },
		"except":         func(p *policy.IdentityPolicy) { p.Rules[0].Peers[0].Except = nil },
		"peer identity":  func(p *policy.IdentityPolicy) { p.Rules[0].Peers[1].Identities = []uint32{4} },
		"port":           func(p *policy.IdentityPolicy) { p.Rules[0].Ports[0].Last = 91 },
		"all ports":      func(p *policy.IdentityPolicy) { p.Rules[0].AllPorts = true },
		"a second rule":  func(p *policy.IdentityPolicy) { p.Rules = append(p.Rules, policy.Rule{ID: 9, AllPeers: true}) },
	} {
		p := base()
		change(p)
		if policy.Fingerprint(p) == want {
			t.Errorf("%s: the fingerprint did not change", name)
		}
	}
}
