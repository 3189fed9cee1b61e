package policy

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/moatfw/moat/bpf"
)

// Validate reports the first thing in p that the compiler cannot express or that would not mean what it
// seems to: rule ids outside 1..bpf.MaxRules-1, unknown actions or directions, inverted port ranges, and
// peers that are invalid, ambiguous or carve out addresses they do not contain. Peers of a rule with
// AllPeers and ports of a rule with AllPorts are ignored, as everywhere else.
func (p *IdentityPolicy) Validate() error {
	if p == nil {
		return errors.New("no identity policy")
	}
	if err := validDefault(p.DefaultEgress); err != nil {
		return fmt.Errorf("default egress: %w", err)
	}
	if err := validDefault(p.DefaultIngress); err != nil {
		return fmt.Errorf("default ingress: %w", err)
	}
	if uint64(len(p.Rules)) >= uint64(bpf.OrderNone) {
		return fmt.Errorf("%d rules: more than the datapath can order", len(p.Rules))
	}
	for i := range p.Rules {
		if err := p.Rules[i].validate(); err != nil {
			return err
		}
	}
	patterns := p.FQDNPatterns()
	if n := len(patterns); n > bpf.MaxFQDNSlots {
		return fmt.Errorf("%d fqdn name patterns: at most %d per namespace", n, bpf.MaxFQDNSlots)
	}
	if p.FQDNSlots != nil {
		taken := map[int]string{}
		for _, name := range patterns {
			slot, ok := p.FQDNSlots[name]
			if !ok || slot < 0 || slot >= bpf.MaxFQDNSlots {
				return fmt.Errorf("fqdn pattern %q: no slot from 0 to %d", name, bpf.MaxFQDNSlots-1)
			}
			if other, dup := taken[slot]; dup {
				return fmt.Errorf("fqdn patterns %q and %q: both in slot %d", other, name, slot)
			}
			taken[slot] = name
		}
	}
	for _, d := range p.DNSDeny {
		if d.ID == 0 || d.ID >= bpf.MaxRules {
			return fmt.Errorf("dnsDeny rule id %d: must be 1 to %d", d.ID, bpf.MaxRules-1)
		}
	}
	return nil
}

func validDefault(a bpf.Action) error {
	if a != bpf.ActionAllow && a != bpf.ActionDeny {
		return fmt.Errorf("action %d: must be Allow or Deny", a)
	}
	return nil
}

func (r *Rule) validate() error {
	if r.ID == 0 || r.ID >= bpf.MaxRules {
		return fmt.Errorf("rule id %d: must be 1 to %d", r.ID, bpf.MaxRules-1)
	}
	if r.Action != bpf.ActionAllow && r.Action != bpf.ActionDeny {
		return fmt.Errorf("rule %d: action %d: must be Allow or Deny", r.ID, r.Action)
	}
	if r.Direction != bpf.Egress && r.Direction != bpf.Ingress {
		return fmt.Errorf("rule %d: direction %d: must be egress or ingress", r.ID, r.Direction)
	}
	if !r.AllPeers {
		for _, peer := range r.Peers {
			if peer.FQDN != "" && (r.Direction != bpf.Egress || r.Action != bpf.ActionAllow) {
				return fmt.Errorf("rule %d: fqdn peer %q: names are egress peers of Allow rules only", r.ID, peer.FQDN)
			}
		}
	}
	if !r.AllPorts {
		for _, pr := range r.Ports {
			if pr.First > pr.Last {
				return fmt.Errorf("rule %d: protocol %d ports %d-%d: first is after last", r.ID, pr.Protocol, pr.First, pr.Last)
			}
		}
	}
	if !r.AllPeers {
		for _, peer := range r.Peers {
			if err := peer.validate(); err != nil {
				return fmt.Errorf("rule %d: %w", r.ID, err)
			}
		}
	}
	return nil
}

// validate checks one peer. A peer with neither a CIDR nor identities is a namespace selector that selects
// no namespace at the moment: valid, and it matches nothing.
func (p Peer) validate() error {
	if p.FQDN != "" {
		if p.IsCIDR() || len(p.Except) > 0 || len(p.Identities) > 0 {
			return fmt.Errorf("fqdn peer %q: a peer is a name, a cidr or namespaces, one of them", p.FQDN)
		}
		return nil
	}
	if !p.IsCIDR() {
		if len(p.Except) > 0 {
			return fmt.Errorf("namespace peer with except %v: except needs a cidr", p.Except[0])
		}
		for _, id := range p.Identities {
			if id == 0 {
				return errors.New("namespace peer: identity 0 is not an identity")
			}
		}
		return nil
	}
	if len(p.Identities) > 0 {
		return fmt.Errorf("peer %v: a peer is a cidr or namespaces, not both", p.CIDR)
	}
	if err := plainPrefix(p.CIDR); err != nil {
		return fmt.Errorf("cidr %w", err)
	}
	c := p.CIDR.Masked()
	for _, e := range p.Except {
		if !e.IsValid() {
			return fmt.Errorf("cidr %v: invalid except prefix", p.CIDR)
		}
		if err := plainPrefix(e); err != nil {
			return fmt.Errorf("cidr %v: except %w", p.CIDR, err)
		}
		if e.Addr().Is4() != c.Addr().Is4() {
			return fmt.Errorf("cidr %v: except %v is of the other address family", p.CIDR, e)
		}
		if e.Bits() <= c.Bits() || !c.Contains(e.Addr()) {
			return fmt.Errorf("cidr %v: except %v is not strictly inside it", p.CIDR, e)
		}
	}
	return nil
}

// plainPrefix rejects prefixes the datapath would never match: IPv4 written as 4-in-6 mapped IPv6 (the
// datapath sees IPv4 packets as IPv4).
func plainPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%v: invalid prefix", p)
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("%v: 4-in-6 mapped prefix; write IPv4 prefixes as plain IPv4", p)
	}
	return nil
}
