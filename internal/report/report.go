// Package report answers, per namespace, who can reach what: the world (on which ports, to which addresses), the
// cloud metadata API, the other namespaces, and which ports are open to the world inbound, with the policies
// responsible. It asks the reference evaluator (the datapath's oracle) about one packet from each class of packets
// the rules tell apart, so the answer is exact for every address and port the rules name.
//
// East-west answers are about pods: a flow between two namespaces needs the sender's egress and the receiver's
// ingress. Each namespace's pods stand for one address at the top of the first IPv4 clusterCIDR (240.0.0.0/4
// without one), so CIDR rules that cover the pod range apply to them as they would to real pods.
//
// The model (this file) holds typed values: protocol numbers, port intervals, prefixes, namespaces and rule keys.
// Build (build.go) computes it; render.go writes it as text, a table, Markdown or HTML, and json.go as the JSON the
// enforcer's API serves and moatctl reads back.
package report

import (
	"cmp"
	"net/netip"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// Report is the answer for a whole cluster (or one node's view of it).
type Report struct {
	Namespaces []Namespace `json:"namespaces"`
}

// Namespace is what one namespace can reach, and what can reach it.
type Namespace struct {
	Name     string `json:"name"`
	Zone     string `json:"zone,omitempty"`
	Audit    bool   `json:"audit,omitempty"` // moat.dev/mode: Audit: nothing is enforced, denials are reported
	Egress   Reach  `json:"worldEgress"`     // to the Internet
	Metadata Reach  `json:"metadataAPI"`
	Ingress  Reach  `json:"worldIngress"` // from the Internet, to the namespace's pods
	Peers    []Peer `json:"namespaces"`   // to the other namespaces
}

// Openness is how much of a question's packets pass.
type Openness string

const (
	OpenAll  Openness = "all"
	OpenSome Openness = "some"
	OpenNone Openness = "none"
)

// Reach is one question's answer: how open it is; Grants say what is open, with the rule (or default) that opens
// it, and Denial, for an answer of none, what denies it.
type Reach struct {
	Open     Openness
	Grants   []Grant
	Policies []string // every policy whose rule decides some of it, sorted
	Denial   Denial   // when Open is none
}

// Peer is what one namespace can reach of another.
type Peer struct {
	Namespace string
	Zone      string
	Reach
}

// Grant is one open part: a protocol and ports, towards (or from) a remote, opened by a rule or a default.
type Grant struct {
	Protocol uint8          // the IP protocol number
	Ports    Ports          // the protocol's whole range reads "all"
	Remote   Remote         // towards (or from) which addresses or namespace
	Except   []netip.Prefix // parts of Remote decided otherwise (listed separately if open), by address
	// Rule is the rule that opens it; with no Policy, no rule matches and the default of Rule.Direction allows it.
	Rule RuleKey
}

// Ports are the ports (ICMP types) First to Last.
type Ports struct{ First, Last uint16 }

// Remote is the far side of a grant: addresses (a whole family's prefix is any address of it), or another
// namespace's pods, whatever their addresses.
type Remote struct {
	Prefix    netip.Prefix // when Namespace is empty
	Namespace string
}

// Direction is the side of a pod a rule or default faces.
type Direction string

const (
	Egress  Direction = "egress"
	Ingress Direction = "ingress"
)

// RuleKey names one rule of one policy: its direction, and its place among the policy's rules of that direction
// (resolve.RuleKey in the report's own terms, so that the model needs no datapath types).
type RuleKey struct {
	Policy    string
	Direction Direction
	Index     int
}

// Denial is what denies an answer of none: the rules that deny some of its packets (sorted), and the default
// that denies the others, if any does.
type Denial struct {
	Rules   []RuleKey `json:"rules,omitempty"`
	Default Default   `json:"default,omitempty"`
}

// Default is something other than a rule that denies packets no rule decides.
type Default string

const (
	DefaultWorldEgress   Default = "worldEgress"   // the namespace's world egress default is Deny
	DefaultWorldIngress  Default = "worldIngress"  // the namespace's world ingress default is Deny
	DefaultMetadataAPI   Default = "metadataAPI"   // the metadata API, which the namespace may not reach
	DefaultEncapsulation Default = "encapsulation" // tunnel traffic to a node or another cluster address
)

// Allows reports whether the reach opens a packet of a protocol ("tcp", or a number as reports write it) to
// port, towards (or from) addr: the question a connection attempt answers.
func (r Reach) Allows(protocol string, port uint16, addr netip.Addr) bool {
	switch r.Open {
	case OpenAll:
		return true
	case OpenNone:
		return false
	}
	proto, err := v1alpha1.ProtocolNumber(protocol)
	if err != nil {
		return false
	}
	for _, g := range r.Grants {
		if g.Protocol == proto && g.Ports.hold(proto, port) && g.holds(addr) {
			return true
		}
	}
	return false
}

// all reports whether the ports are the whole range of a protocol.
func (p Ports) all(proto uint8) bool {
	lo, hi := portRange(proto)
	return p.First <= lo && p.Last >= hi
}

func (p Ports) hold(proto uint8, port uint16) bool {
	return p.all(proto) || p.First <= port && port <= p.Last
}

// portRange is the ports of a protocol, or its types for ICMP and ICMPv6.
func portRange(proto uint8) (uint16, uint16) {
	if v1alpha1.IsICMP(proto) {
		return 0, 255
	}
	return 1, 65535
}

func (g Grant) holds(a netip.Addr) bool {
	if g.Remote.Namespace != "" {
		return true // the reach is about its pods, whatever their address
	}
	if !g.Remote.Prefix.Contains(a) {
		return false
	}
	for _, e := range g.Except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

// whole reports whether the remote is every address of a family.
func (r Remote) whole() bool { return r.Namespace == "" && r.Prefix.Bits() == 0 }

// compareRules orders rule keys by policy, direction and place.
func compareRules(a, b RuleKey) int {
	return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Index, b.Index))
}

// comparePrefixes orders prefixes by address, then length.
func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}
