// Package policy turns the resolved rules of a namespace identity into datapath map entries (the compiler),
// and decides packets by walking the same rules in order (the reference evaluator, the datapath's oracle and
// the engine of `moatctl trace`).
package policy

import (
	"net/netip"

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

// Peer is one entry of a rule's `to` or `from`: a CIDR with its excepts, or the identities a namespace
// selector resolves to (Identities set, CIDR invalid).
type Peer struct {
	CIDR       netip.Prefix
	Except     []netip.Prefix
	Identities []uint32
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
}

// Defaults are the cluster defaults for endpoints whose identity has no policy (not yet known).
type Defaults struct {
	DefaultEgress  bpf.Action
	DefaultIngress bpf.Action
}

// Entry is one element of an identity's policy map.
type Entry = bpf.PolicyEntry
