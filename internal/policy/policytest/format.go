package policytest

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

// FormatResult prints a decision on one line.
func FormatResult(r policy.Result) string {
	s := fmt.Sprintf("%s %s rule %d, remote %s/%d, verdict %s", ActionName(r.Action), bpf.ReasonName(r.Reason),
		r.RuleID, r.RemoteClass, r.RemoteIdentity, r.Verdict)
	if r.AuditRuleID != 0 || r.AuditAction != 0 {
		s += fmt.Sprintf(", audit rule %d (%s)", r.AuditRuleID, ActionName(r.AuditAction))
	}
	return s
}

// ActionName is "allow", "deny" or "none".
func ActionName(a bpf.Action) string {
	switch a {
	case bpf.ActionAllow:
		return "allow"
	case bpf.ActionDeny:
		return "deny"
	case bpf.ActionNone:
		return "none"
	}
	return fmt.Sprintf("action-%d", a)
}

// FormatPacket prints a packet on one line.
func FormatPacket(p policy.Packet) string {
	return fmt.Sprintf("%s proto %d port %d remote %s", p.Direction, p.Protocol, p.Port, p.Remote)
}

// FormatPolicy prints a policy (nil: no policy), a line for the identity and a line for each rule.
func FormatPolicy(p *policy.IdentityPolicy) string {
	if p == nil {
		return "no policy\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "identity %d metadata %v audit %v default egress %s ingress %s, %d rules:\n", p.Identity,
		p.MetadataAllowed, p.Audit, ActionName(p.DefaultEgress), ActionName(p.DefaultIngress), len(p.Rules))
	for i, r := range p.Rules {
		fmt.Fprintf(&b, "  [%d] id %d %s %s", i, r.ID, r.Direction, ActionName(r.Action))
		if r.Audit {
			b.WriteString(" (audit)")
		}
		writeList(&b, "peers", r.AllPeers, r.Peers, func(peer policy.Peer) {
			if !peer.IsCIDR() {
				fmt.Fprintf(&b, "identities %v", peer.Identities)
				return
			}
			fmt.Fprintf(&b, "%s", peer.CIDR)
			if len(peer.Except) > 0 {
				fmt.Fprintf(&b, " except %v", peer.Except)
			}
		})
		writeList(&b, "ports", r.AllPorts, r.Ports, func(pr policy.PortRange) {
			fmt.Fprintf(&b, "%d:%d-%d", pr.Protocol, pr.First, pr.Last)
		})
		b.WriteString("\n")
	}
	return b.String()
}

// writeList writes " all <what>" when all is set, else " <what> [" and the items, written by item and
// comma-separated, then "]".
func writeList[T any](b *strings.Builder, what string, all bool, items []T, item func(T)) {
	if all {
		b.WriteString(" all " + what)
		return
	}
	b.WriteString(" " + what + " [")
	for i, it := range items {
		if i > 0 {
			b.WriteString(", ")
		}
		item(it)
	}
	b.WriteString("]")
}

// FormatIPCache lists the ipcache entries that contain remote, a line each, the most specific (the one that
// counts) last.
func FormatIPCache(ipc *policy.IPCache, remote netip.Addr) string {
	var b strings.Builder
	for _, e := range ipc.Entries() {
		if e.Prefix.Contains(remote) {
			fmt.Fprintf(&b, "  %s %s/%d\n", e.Prefix, e.Class, e.Identity)
		}
	}
	if b.Len() == 0 {
		return "  (none: the world)\n"
	}
	return b.String()
}
