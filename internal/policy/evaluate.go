package policy

import (
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
)

// Packet is what policy judges of the first packet of a flow, from the endpoint's side.
type Packet struct {
	Direction bpf.Direction
	Protocol  uint8
	Port      uint16     // destination port for egress, the pod's port for ingress, the ICMP type for ICMP/ICMPv6, 0 for other protocols
	Remote    netip.Addr // the far end: destination for egress, source for ingress
	// FQDN is what the identity learned of Remote from DNS answers: bit i set when an answer for a name of its
	// fqdn pattern of slot i (IdentityPolicy.Slots) held the address and has not expired. It counts for world
	// addresses only: fqdn peers never open the cluster, its nodes or the metadata API.
	FQDN uint64
}

// Result is the decision about a Packet, with everything flow events report.
type Result struct {
	Action         bpf.Action // ActionAllow or ActionDeny, before audit mode
	Reason         bpf.Reason // ReasonAllowRule, ReasonAllowDefault, ReasonDenyRule, ReasonDenyDefault, ReasonMetadata
	RuleID         uint32     // the Enforce rule that decided; 0 when a default or the metadata rule decided
	AuditRuleID    uint32     // the first matching rule of an Audit policy, reported when it comes before the deciding Enforce rule (or no Enforce rule matched); 0 = none
	AuditAction    bpf.Action // that rule's action
	RemoteClass    bpf.Class
	RemoteIdentity uint32
	Verdict        bpf.Verdict // after audit mode (IdentityPolicy.Audit): Allowed; Denied; or Audit when it would have been denied
}

// Evaluate decides pkt for an identity whose policy is p (nil: the identity has no policy, and the cluster
// defaults d apply) with the remote classified by ipc. It is the reference the compiled datapath must agree
// with, and walks the rules in order, one by one, without cleverness:
//
//  1. the metadata API is denied unless the namespace may reach it; then it counts as the world;
//  2. the first matching rule of an Enforce policy decides, and the first matching rule of an Audit policy
//     is reported when it comes before that one;
//  3. no Enforce rule matched: encapsulation sent to a node or another cluster address (not a pod) is denied;
//     the world gets the identity's default for the direction; everything else (nodes, pods, Services, the
//     rest of the cluster) is allowed.
//
// A remote in a NAT64 prefix is judged as the IPv4 address it embeds (NAT64Embedded).
func Evaluate(p *IdentityPolicy, d Defaults, ipc *IPCache, pkt Packet) Result {
	var r Result
	pkt.Remote = pkt.Remote.WithZone("") // the datapath knows no zones
	if v4, ok := NAT64Embedded(pkt.Remote); ok {
		pkt.Remote = v4
	}
	r.RemoteClass, r.RemoteIdentity = ipc.Lookup(pkt.Remote)
	r.Action, r.Reason = decide(p, d, r.RemoteClass, r.RemoteIdentity, pkt, &r)
	switch {
	case r.Action == bpf.ActionAllow:
		r.Verdict = bpf.VerdictAllowed
	case p != nil && p.Audit:
		r.Verdict = bpf.VerdictAudit
	default:
		r.Verdict = bpf.VerdictDenied
	}
	return r
}

// decide is steps 1 to 3 of Evaluate; it fills r's rule fields and returns the action and its reason.
func decide(p *IdentityPolicy, d Defaults, class bpf.Class, identity uint32, pkt Packet, r *Result) (bpf.Action, bpf.Reason) {
	worldDefault := d.DefaultEgress
	if pkt.Direction == bpf.Ingress {
		worldDefault = d.DefaultIngress
	}
	var rules []Rule
	metadataAllowed := false
	if p != nil {
		rules = p.Rules
		metadataAllowed = p.MetadataAllowed
		worldDefault = p.DefaultEgress
		if pkt.Direction == bpf.Ingress {
			worldDefault = p.DefaultIngress
		}
	}

	// what the remote learned from answers counts for the world only: a hostile answer naming a pod, a node or
	// the metadata API (even one the namespace may reach) opens nothing
	var learned []string // the fqdn patterns the remote was learned for
	if class == bpf.ClassWorld && pkt.Direction == bpf.Egress && pkt.FQDN != 0 && p != nil {
		for name, slot := range p.Slots() {
			if slot < 64 && pkt.FQDN&(1<<slot) != 0 {
				learned = append(learned, name)
			}
		}
	}
	if class == bpf.ClassMetadata {
		if !metadataAllowed {
			return bpf.ActionDeny, bpf.ReasonMetadata
		}
		class = bpf.ClassWorld
	}
	var decider *Rule
	audited := false
	for i := range rules {
		rule := &rules[i]
		if rule.Direction != pkt.Direction || !rule.matchesPort(pkt.Protocol, pkt.Port) ||
			!rule.matchesPeer(pkt.Remote, identity, learned) {
			continue
		}
		if rule.Audit {
			if !audited {
				audited = true
				r.AuditRuleID, r.AuditAction = rule.ID, rule.Action
			}
			continue
		}
		decider = rule
		break
	}

	if decider != nil {
		r.RuleID = decider.ID
		if decider.Action == bpf.ActionAllow {
			return bpf.ActionAllow, bpf.ReasonAllowRule
		}
		if identity == bpf.IdentityUnknownPod {
			return bpf.ActionDeny, bpf.ReasonUnknownPod
		}
		return bpf.ActionDeny, bpf.ReasonDenyRule
	}
	if pkt.Direction == bpf.Egress && (class == bpf.ClassNode || class == bpf.ClassCluster) &&
		IsEncapsulation(pkt.Protocol, pkt.Port) {
		return bpf.ActionDeny, bpf.ReasonEncapsulation
	}
	if class == bpf.ClassWorld && worldDefault == bpf.ActionDeny {
		return bpf.ActionDeny, bpf.ReasonDenyDefault
	}
	return bpf.ActionAllow, bpf.ReasonAllowDefault
}

// Encapsulations a node decapsulates: IP protocols, and UDP destination ports.
var (
	EncapsulationProtocols = []uint8{4, 41, 47, 97, 115} // IPIP, 6in4, GRE, EtherIP, L2TP
	EncapsulationUDPPorts  = []uint16{4789, 8472, 6081}  // VXLAN, the kernel's VXLAN default, Geneve
)

// IsEncapsulation reports whether a packet of proto to port is tunnel traffic that a node would decapsulate:
// without a rule that allows it, a pod may not send it to a node or another cluster address.
func IsEncapsulation(proto uint8, port uint16) bool {
	for _, p := range EncapsulationProtocols {
		if proto == p {
			return true
		}
	}
	if proto == ProtoUDP {
		for _, p := range EncapsulationUDPPorts {
			if port == p {
				return true
			}
		}
	}
	return false
}

var (
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")
	nat64LocalUse  = netip.MustParsePrefix("64:ff9b:1::/48")
)

// NAT64Embedded is the IPv4 address an IPv6 address of a NAT64 prefix stands for: 64:ff9b::/96, or 64:ff9b:1::/48
// with a /96 NAT64 prefix inside it (the IPv4 address in the last 32 bits, RFC 6052).
func NAT64Embedded(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() || a.Is4In6() || !(nat64WellKnown.Contains(a) || nat64LocalUse.Contains(a)) {
		return a, false
	}
	b := a.As16()
	return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
}

// matchesPort reports whether the rule's ports cover a packet of protocol proto to port.
func (r *Rule) matchesPort(proto uint8, port uint16) bool {
	if r.AllPorts {
		return true
	}
	for _, pr := range r.Ports {
		if pr.Protocol == proto && pr.First <= port && port <= pr.Last {
			return true
		}
	}
	return false
}

// matchesPeer reports whether the rule's peers cover the remote address a, whose namespace identity (for
// pods and Services) is identity, 0 for anything else, and which was learned for the fqdn patterns learned.
func (r *Rule) matchesPeer(a netip.Addr, identity uint32, learned []string) bool {
	if r.AllPeers {
		return true
	}
	for _, peer := range r.Peers {
		if peer.FQDN != "" {
			if slices.Contains(learned, peer.FQDN) {
				return true
			}
			continue
		}
		if peer.matches(a, identity) {
			return true
		}
	}
	return false
}

func (p *Peer) matches(a netip.Addr, identity uint32) bool {
	if !p.IsCIDR() {
		if identity == 0 {
			return false
		}
		for _, id := range p.Identities {
			if id == identity {
				return true
			}
		}
		return false
	}
	if !p.CIDR.Contains(a) {
		return false
	}
	for _, e := range p.Except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}
