// Package policy turns the resolved rules of a namespace identity into datapath map entries (the compiler),
// and decides packets by walking the same rules in order (the reference evaluator, the datapath's oracle and
// the engine of `moatctl trace`).
package policy

import (
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
)

// Protocol numbers the policy API names.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// PortRange is one entry of a rule's ports: ports First..Last of TCP, UDP or SCTP, ICMP or ICMPv6 types
// First..Last, or 0..65535 for every port (and for protocols without ports).
type PortRange struct {
	Protocol    uint8
	First, Last uint16
}

// Peer is one entry of a rule's `to` or `from`: a CIDR with its excepts, the identities a namespace selector
// resolves to (Identities set, CIDR invalid), or a name pattern (FQDN set: an egress peer of the world addresses
// the identity learned from answers for names of the pattern).
type Peer struct {
	CIDR       netip.Prefix
	Except     []netip.Prefix
	Identities []uint32
	FQDN       string // a normalized pattern (NormalizeName): "api.example.com", "*.example.com", "**.example.com"
}

// IsCIDR reports whether the peer is a CIDR peer.
func (p Peer) IsCIDR() bool { return p.CIDR.IsValid() }

// Rule is one resolved rule of an identity. The order of an IdentityPolicy's Rules is the evaluation order:
// policies by priority and name, then rule order inside each policy.
type Rule struct {
	ID        uint32 // 1..bpf.MaxRules-1: names the rule in counters and flow events
	Direction bpf.Direction
	Action    bpf.Action // ActionAllow or ActionDeny
	Audit     bool       // the rule's policy is in Audit mode: reported, never deciding
	AllPeers  bool       // `to`/`from` omitted: every remote address
	Peers     []Peer     // used when !AllPeers; empty means no peer at all
	AllPorts  bool       // `ports` omitted: every protocol and port
	Ports     []PortRange
}

// IdentityPolicy is everything the datapath needs to decide the packets of one namespace identity.
type IdentityPolicy struct {
	Identity        uint32
	MetadataAllowed bool       // the namespace is in the metadata API's allowNamespaces
	Audit           bool       // moat.dev/mode: Audit: every verdict is report-only
	DefaultEgress   bpf.Action // world traffic no rule matched
	DefaultIngress  bpf.Action
	Rules           []Rule
	// DNSDeny are the names the namespace may not resolve, in evaluation order: a query for one is answered
	// NXDOMAIN by the datapath (an Audit rule's only reported).
	DNSDeny []DNSRule
	// FQDNSlots gives each fqdn pattern its slot (bpf.IdentityFQDN), the bit learned addresses hold it by; nil:
	// their place in FQDNPatterns. The enforcer keeps a pattern's slot while the pattern stays, since the
	// addresses learned for it hold that bit.
	FQDNSlots map[string]int
}

// DNSRule is one dnsDeny rule: name patterns, normalized, the rule's id and its policy's mode.
type DNSRule struct {
	ID       uint32
	Audit    bool
	Patterns []string
}

// Slots are the identity's fqdn patterns by slot: FQDNSlots, or their place in FQDNPatterns.
func (p *IdentityPolicy) Slots() map[string]int {
	if p.FQDNSlots != nil {
		return p.FQDNSlots
	}
	out := map[string]int{}
	for i, name := range p.FQDNPatterns() {
		out[name] = i
	}
	return out
}

// SlotPatterns is the identity's fqdn patterns indexed by slot ("" for a slot no pattern has).
func (p *IdentityPolicy) SlotPatterns() []string {
	var out []string
	for name, slot := range p.Slots() {
		for len(out) <= slot {
			out = append(out, "")
		}
		out[slot] = name
	}
	return out
}

// FQDNPatterns are the name patterns of the identity's fqdn peers, sorted and without duplicates.
func (p *IdentityPolicy) FQDNPatterns() []string {
	var out []string
	for i := range p.Rules {
		for _, peer := range p.Rules[i].Peers {
			if peer.FQDN != "" {
				out = append(out, peer.FQDN)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Defaults are the cluster defaults for endpoints whose identity has no policy (not yet known).
type Defaults struct {
	DefaultEgress  bpf.Action
	DefaultIngress bpf.Action
}

// Entry is one element of an identity's policy map.
type Entry = bpf.PolicyEntry
