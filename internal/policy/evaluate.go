package policy

import (
	"net/netip"

	"github.com/moatfw/moat/bpf"
)

// Packet is what policy judges of the first packet of a flow, from the endpoint's side.
type Packet struct {
	Direction bpf.Direction
	Protocol  uint8
	Port      uint16     // destination port for egress, the pod's port for ingress, the ICMP type for ICMP/ICMPv6, 0 for other protocols
	Remote    netip.Addr // the far end: destination for egress, source for ingress
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
//  3. no Enforce rule matched: the world gets the identity's default for the direction, everything else
//     (nodes, pods, Services, the rest of the cluster) is allowed.
func Evaluate(p *IdentityPolicy, d Defaults, ipc *IPCache, pkt Packet) Result {
	var r Result
	pkt.Remote = pkt.Remote.WithZone("") // the datapath knows no zones
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
			!rule.matchesPeer(pkt.Remote, identity) {
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
		return bpf.ActionDeny, bpf.ReasonDenyRule
	}
	if class == bpf.ClassWorld && worldDefault == bpf.ActionDeny {
		return bpf.ActionDeny, bpf.ReasonDenyDefault
	}
	return bpf.ActionAllow, bpf.ReasonAllowDefault
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
// pods and Services) is identity, 0 for anything else.
func (r *Rule) matchesPeer(a netip.Addr, identity uint32) bool {
	if r.AllPeers {
		return true
	}
	for _, peer := range r.Peers {
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
