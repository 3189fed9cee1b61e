package policytest

import (
	"net/netip"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

// NRulesFirstPort is the port of NRules' first non-matching rule; rule i (from 0) names port NRulesFirstPort+i.
const NRulesFirstPort = 1024

// NRulesCIDR is the destination of NRules' i-th non-matching rule (from 0): distinct /28s in 100.64.0.0/10.
func NRulesCIDR(i int) netip.Prefix {
	a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>12), byte(i >> 4), byte(i&15) << 4})
	return netip.PrefixFrom(a, 28)
}

// NRules is a policy of n egress rules of one identity, as a benchmark wants it: n-1 rules that do not match
// the flow under test (NRulesCIDR(i), port NRulesFirstPort+i, action other), then the one that does (TCP to dst
// on ports first to last, action last). Egress not matched gets defaultEgress; ingress is denied.
func NRules(identity uint32, n int, other, last, defaultEgress bpf.Action, dst netip.Prefix, first, lastPort uint16) *policy.IdentityPolicy {
	p := &policy.IdentityPolicy{Identity: identity, DefaultEgress: defaultEgress, DefaultIngress: bpf.ActionDeny}
	for i := 0; i < n-1; i++ {
		p.Rules = append(p.Rules, policy.Rule{ID: uint32(i + 1), Direction: bpf.Egress, Action: other,
			Peers: []policy.Peer{{CIDR: NRulesCIDR(i)}},
			Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: uint16(NRulesFirstPort + i), Last: uint16(NRulesFirstPort + i)}}})
	}
	p.Rules = append(p.Rules, policy.Rule{ID: uint32(n), Direction: bpf.Egress, Action: last,
		Peers: []policy.Peer{{CIDR: dst}},
		Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: first, Last: lastPort}}})
	return p
}
