// Package report answers, per namespace, who can reach what: the world (on which ports, to which addresses), the
// cloud metadata API, the other namespaces, and which ports are open to the world inbound, with the policies
// responsible. It asks the reference evaluator (the datapath's oracle) about one packet from each class of packets
// the rules tell apart, so the answer is exact for every address and port the rules name.
//
// East-west answers are about pods: a flow between two namespaces needs the sender's egress and the receiver's
// ingress. Each namespace's pods stand for one address at the top of the first IPv4 clusterCIDR (240.0.0.0/4
// without one), so CIDR rules that cover the pod range apply to them as they would to real pods.
package report

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/resolve"
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

// Reach is one question's answer: Open is "all", "some" or "none"; Grants say what is open, with the rule (or
// default) that opens it.
type Reach struct {
	Open     string   `json:"open"`
	Grants   []Grant  `json:"grants,omitempty"`
	Policies []string `json:"policies,omitempty"` // every policy whose rule decides some of it
	Why      string   `json:"why,omitempty"`      // for none or all: what decides
}

// Grant is one open part: a protocol and ports, towards (or from) addresses, opened by a rule or a default.
type Grant struct {
	Protocol string   `json:"protocol"`
	Ports    string   `json:"ports"`             // "443", "8000-8080", "all"
	Remote   string   `json:"remote"`            // a CIDR, "any", or a namespace
	Except   []string `json:"except,omitempty"`  // parts of Remote decided otherwise (listed separately if open)
	Policy   string   `json:"policy,omitempty"`  // empty: the default decides
	Rule     string   `json:"rule,omitempty"`    // "egress[0]"
	Default  string   `json:"default,omitempty"` // which default, when no rule decides
}

// Peer is what one namespace can reach of another.
type Peer struct {
	Namespace string `json:"namespace"`
	Zone      string `json:"zone,omitempty"`
	Reach
}

// Input is the state to report on (what an enforcer applies, or what the API server holds).
type Input struct {
	Config     *v1alpha1.FirewallConfig
	Policies   []v1alpha1.FirewallPolicy
	Namespaces []v1alpha1.Namespace
}

// protocols the report asks about, with the port or type that stands for "any" of a protocol without ports.
var protocols = []uint8{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP, policy.ProtoICMP, policy.ProtoICMPv6}

// protocolsOf is the protocols the report asks about for a policy: the usual ones, and any other a rule names.
func protocolsOf(ps ...*policy.IdentityPolicy) []uint8 {
	out := append([]uint8{}, protocols...)
	for _, p := range ps {
		if p == nil {
			continue
		}
		for _, r := range p.Rules {
			for _, pr := range r.Ports {
				if !slices.Contains(out, pr.Protocol) {
					out = append(out, pr.Protocol)
				}
			}
		}
	}
	return out
}

// Build computes the report.
func Build(in Input) Report {
	ids := map[string]uint32{}
	for i, ns := range in.Namespaces {
		ids[ns.Name] = uint32(i + 1)
	}
	keys := map[uint32]resolve.RuleKey{}
	out := resolve.Resolve(resolve.Input{Config: in.Config, Policies: in.Policies, Namespaces: in.Namespaces, Identities: ids,
		RuleID: func(k resolve.RuleKey) uint32 {
			id := uint32(len(keys) + 1)
			keys[id] = k
			return id
		}})
	names := map[uint32]string{}
	for n, id := range ids {
		names[id] = n
	}
	b := &builder{out: out, keys: keys, names: names}
	var special []netip.Prefix // not the world: what the ipcache classifies otherwise
	var entries []policy.IPCacheEntry
	for _, p := range out.Metadata {
		entries = append(entries, policy.IPCacheEntry{Prefix: p, Class: bpf.ClassMetadata})
	}
	for _, p := range out.Cluster {
		entries = append(entries, policy.IPCacheEntry{Prefix: p, Class: bpf.ClassCluster})
		special = append(special, p)
	}
	for _, p := range out.Nodes {
		entries = append(entries, policy.IPCacheEntry{Prefix: p, Class: bpf.ClassNode})
		special = append(special, p)
	}
	special = append(special, out.Metadata...)
	// one address per namespace's pods, inside the pod range
	b.podBase = netip.MustParsePrefix("240.0.0.0/4")
	for _, c := range out.Cluster {
		if c.Addr().Is4() && c.Bits() <= 20 {
			b.podBase = c
			break
		}
	}
	for _, id := range ids {
		entries = append(entries, policy.IPCacheEntry{Prefix: netip.PrefixFrom(b.podAddr(id), 32), Class: bpf.ClassPod, Identity: id})
	}
	b.ipc = policy.NewIPCache(entries)
	b.special = special

	var r Report
	for _, ns := range in.Namespaces {
		id := ids[ns.Name]
		p := out.Policies[id]
		n := Namespace{Name: ns.Name, Zone: ns.Labels[v1alpha1.LabelZone], Audit: p != nil && p.Audit}
		n.Egress = b.world(p, bpf.Egress)
		n.Ingress = b.world(p, bpf.Ingress)
		n.Metadata = b.metadata(p)
		for _, other := range in.Namespaces {
			if other.Name == ns.Name {
				continue
			}
			oid := ids[other.Name]
			pr := Peer{Namespace: other.Name, Zone: other.Labels[v1alpha1.LabelZone]}
			pr.Reach = b.eastWest(p, id, out.Policies[oid], oid)
			n.Peers = append(n.Peers, pr)
		}
		r.Namespaces = append(r.Namespaces, n)
	}
	return r
}

// podAddr is the address standing for a namespace's pods: counted down from the top of the pod range.
func (b *builder) podAddr(id uint32) netip.Addr {
	a := b.podBase.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << (32 - b.podBase.Bits())) - 1 // the range's last address
	v -= id
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

type builder struct {
	out     resolve.Output
	keys    map[uint32]resolve.RuleKey
	names   map[uint32]string
	ipc     *policy.IPCache
	special []netip.Prefix
	podBase netip.Prefix
}

// decision is the evaluator's answer for one class of packets.
type decision struct {
	allowed bool
	rule    uint32
	reason  bpf.Reason
}

func (b *builder) decide(p *policy.IdentityPolicy, pkt policy.Packet) decision {
	res := policy.Evaluate(p, b.out.Defaults, b.ipc, pkt)
	return decision{allowed: res.Verdict != bpf.VerdictDenied, rule: res.RuleID, reason: res.Reason}
}

// world answers egress to, or ingress from, the world.
func (b *builder) world(p *policy.IdentityPolicy, dir bpf.Direction) Reach {
	regions := b.worldRegions(p, dir)
	var grants []Grant
	denies := denials{}
	total, open := 0, 0
	for _, reg := range regions {
		for _, proto := range protocolsOf(p) {
			if reg.addr.Is4() && proto == policy.ProtoICMPv6 || reg.addr.Is6() && proto == policy.ProtoICMP {
				continue
			}
			for _, iv := range intervals(p, dir, proto, reg.addr) {
				d := b.decide(p, policy.Packet{Direction: dir, Protocol: proto, Port: iv.first, Remote: reg.addr})
				total++
				if !d.allowed {
					b.denied(denies, d)
					continue
				}
				open++
				g := b.grant(proto, iv, reg.name, d, dir)
				g.Except = reg.except
				grants = append(grants, g)
			}
		}
	}
	return b.summarize(grants, total, open, denies, p, dir)
}

// metadata answers whether the namespace reaches the metadata API.
func (b *builder) metadata(p *policy.IdentityPolicy) Reach {
	var grants []Grant
	denies := denials{}
	total, open := 0, 0
	for _, m := range b.out.Metadata {
		for _, proto := range protocolsOf(p) {
			if m.Addr().Is4() && proto == policy.ProtoICMPv6 || m.Addr().Is6() && proto == policy.ProtoICMP {
				continue
			}
			for _, iv := range intervals(p, bpf.Egress, proto, m.Addr()) {
				d := b.decide(p, policy.Packet{Direction: bpf.Egress, Protocol: proto, Port: iv.first, Remote: m.Addr()})
				total++
				if !d.allowed {
					b.denied(denies, d)
					continue
				}
				open++
				grants = append(grants, b.grant(proto, iv, m.String(), d, bpf.Egress))
			}
		}
	}
	r := b.summarize(grants, total, open, denies, p, bpf.Egress)
	if r.Open == "none" && !named(denies) {
		r.Why = fmt.Sprintf("blocked by default (label the namespace %s=allow, or list it in FirewallConfig's metadataAPI)", v1alpha1.LabelMetadata)
	}
	return r
}

// eastWest answers what a pod of one namespace reaches of another's pods: its egress and their ingress.
func (b *builder) eastWest(from *policy.IdentityPolicy, fromID uint32, to *policy.IdentityPolicy, toID uint32) Reach {
	var grants []Grant
	denies := denials{}
	total, open := 0, 0
	for _, proto := range protocolsOf(from, to) {
		if proto == policy.ProtoICMPv6 {
			continue // the synthetic pod addresses are IPv4
		}
		ivs := merge(intervals(from, bpf.Egress, proto, b.podAddr(toID)), intervals(to, bpf.Ingress, proto, b.podAddr(fromID)))
		for _, iv := range ivs {
			out := b.decide(from, policy.Packet{Direction: bpf.Egress, Protocol: proto, Port: iv.first, Remote: b.podAddr(toID)})
			in := b.decide(to, policy.Packet{Direction: bpf.Ingress, Protocol: proto, Port: iv.first, Remote: b.podAddr(fromID)})
			total++
			if !out.allowed || !in.allowed {
				if !out.allowed {
					b.denied(denies, out)
				} else {
					b.denied(denies, in)
				}
				continue
			}
			open++
			d := out
			dir := bpf.Egress
			if out.rule == 0 && in.rule != 0 {
				d, dir = in, bpf.Ingress
			}
			grants = append(grants, b.grant(proto, iv, b.names[toID], d, dir))
		}
	}
	return b.summarize(grants, total, open, denies, from, bpf.Egress)
}

func named(ds denials) bool {
	for k := range ds {
		if k != "" {
			return true
		}
	}
	return false
}

// denials are the rules that deny some class of packets, named "policy rule"; "" stands for a default.
type denials map[string]bool

func (b *builder) denied(ds denials, d decision) {
	if k, ok := b.keys[d.rule]; ok && d.rule != 0 {
		ds[k.Policy+" "+k.Name()] = true
	} else {
		ds[""] = true
	}
}

func (b *builder) grant(proto uint8, iv interval, remote string, d decision, dir bpf.Direction) Grant {
	g := Grant{Protocol: v1alpha1.ProtocolName(proto), Ports: iv.String(proto), Remote: remote}
	if k, ok := b.keys[d.rule]; ok && d.rule != 0 {
		g.Policy, g.Rule = k.Policy, k.Name()
	} else {
		g.Default = "no rule matches; the " + strings.ToLower(dir.String()) + " default allows it"
	}
	return g
}

// summarize merges neighbouring grants of one protocol, remote and decider, and says all, some or none.
func (b *builder) summarize(grants []Grant, total, open int, denies denials, p *policy.IdentityPolicy, dir bpf.Direction) Reach {
	r := Reach{Open: "some"}
	switch {
	case open == 0:
		r.Open = "none"
	case open == total:
		r.Open = "all"
	}
	seen := map[string]bool{}
	var merged []Grant
	for _, g := range grants {
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if last.Protocol == g.Protocol && last.Remote == g.Remote && slices.Equal(last.Except, g.Except) &&
				last.Policy == g.Policy && last.Rule == g.Rule && last.Default == g.Default && adjacent(last.Ports, g.Ports) {
				last.Ports = joinPorts(last.Ports, g.Ports)
				continue
			}
		}
		merged = append(merged, g)
		if g.Policy != "" && !seen[g.Policy] {
			seen[g.Policy] = true
			r.Policies = append(r.Policies, g.Policy)
		}
	}
	r.Grants = merged
	if r.Open == "none" {
		r.Grants = nil
		r.Why = "denied"
		if p != nil && (dir == bpf.Egress && p.DefaultEgress == bpf.ActionDeny || dir == bpf.Ingress && p.DefaultIngress == bpf.ActionDeny) {
			r.Why = "denied by the world default, and no rule allows it"
		}
		rules := make([]string, 0, len(denies))
		for k := range denies {
			if k != "" {
				rules = append(rules, k)
			}
		}
		if len(rules) > 0 {
			sort.Strings(rules)
			r.Why = "denied by " + strings.Join(rules, ", ")
			if denies[""] {
				r.Why += "; the rest by the " + strings.ToLower(dir.String()) + " default"
			}
			for _, k := range rules {
				if pol, _, _ := strings.Cut(k, " "); !slices.Contains(r.Policies, pol) {
					r.Policies = append(r.Policies, pol)
				}
			}
		}
	}
	sort.Strings(r.Policies)
	return r
}

// region is a part of the world that every rule either covers whole or not at all.
type region struct {
	addr   netip.Addr // stands for the region
	name   string     // the smallest named prefix that holds it, or "any"
	except []string   // the largest named prefixes inside that one: not part of the region
}

// worldRegions cuts the world into parts the rules tell apart: for every prefix a rule names (cidr or except),
// the part of it outside every smaller named prefix; and the rest of each family. Cluster, node and metadata
// ranges are not the world, and are cut out.
func (b *builder) worldRegions(p *policy.IdentityPolicy, dir bpf.Direction) []region {
	var named []netip.Prefix
	if p != nil {
		for _, r := range p.Rules {
			if r.Direction != dir {
				continue
			}
			for _, peer := range r.Peers {
				if peer.IsCIDR() {
					named = append(named, peer.CIDR.Masked())
					for _, e := range peer.Except {
						named = append(named, e.Masked())
					}
				}
			}
		}
	}
	all := append(append([]netip.Prefix{}, named...), b.special...)
	all = append(all, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
	sort.Slice(all, func(i, j int) bool {
		if all[i].Bits() != all[j].Bits() {
			return all[i].Bits() < all[j].Bits()
		}
		return all[i].Addr().Less(all[j].Addr())
	})
	var out []region
	seen := map[netip.Prefix]bool{}
	isSpecial := map[netip.Prefix]bool{}
	for _, s := range b.special {
		isSpecial[s.Masked()] = true
	}
	for _, pfx := range all {
		if seen[pfx] || isSpecial[pfx] {
			continue
		}
		seen[pfx] = true
		var inner []netip.Prefix
		for _, q := range all {
			if q.Bits() > pfx.Bits() && q.Addr().Is4() == pfx.Addr().Is4() && pfx.Contains(q.Addr()) {
				inner = append(inner, q)
			}
		}
		if a, ok := uncovered(pfx, inner); ok && !b.inSpecial(a) {
			name := pfx.String()
			if pfx.Bits() == 0 {
				name = "any"
				if pfx.Addr().Is6() {
					name = "any (IPv6)"
				}
			}
			out = append(out, region{addr: a, name: name, except: outermost(inner)})
		}
	}
	return out
}

// outermost is the prefixes of a set that no other of the set holds, as strings, sorted.
func outermost(set []netip.Prefix) []string {
	var out []string
	seen := map[netip.Prefix]bool{}
	for _, p := range set {
		inside := false
		for _, q := range set {
			if q.Bits() < p.Bits() && q.Contains(p.Addr()) {
				inside = true
				break
			}
		}
		if !inside && !seen[p] {
			seen[p] = true
			out = append(out, p.String())
		}
	}
	sort.Strings(out)
	return out
}

func (b *builder) inSpecial(a netip.Addr) bool {
	for _, s := range b.special {
		if s.Contains(a) {
			return true
		}
	}
	return false
}

// uncovered finds an address of p that none of inner holds.
func uncovered(p netip.Prefix, inner []netip.Prefix) (netip.Addr, bool) {
	var hit []netip.Prefix
	for _, q := range inner {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return netip.Addr{}, false // p is inside q: covered whole
		}
		if q.Bits() > p.Bits() && p.Contains(q.Addr()) {
			hit = append(hit, q)
		}
	}
	if len(hit) == 0 {
		return p.Addr(), true
	}
	if p.Bits() == p.Addr().BitLen() {
		return netip.Addr{}, false
	}
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	if a, ok := uncovered(lo, hit); ok {
		return a, true
	}
	hiAddr := p.Addr().As16()
	bit := p.Bits()
	if p.Addr().Is4() {
		bit += 96
	}
	hiAddr[bit/8] |= 0x80 >> (bit % 8)
	hi := netip.AddrFrom16(hiAddr)
	if p.Addr().Is4() {
		hi = hi.Unmap()
	}
	return uncovered(netip.PrefixFrom(hi, p.Bits()+1), hit)
}

// interval is ports (or ICMP types) first..last that every rule treats alike.
type interval struct{ first, last uint16 }

func (iv interval) String(proto uint8) string {
	max := uint16(65535)
	if proto == policy.ProtoICMP || proto == policy.ProtoICMPv6 {
		max = 255
	}
	lo := uint16(1)
	if max == 255 {
		lo = 0
	}
	switch {
	case iv.first <= lo && iv.last >= max:
		return "all"
	case iv.first == iv.last:
		return strconv.Itoa(int(iv.first))
	}
	return fmt.Sprintf("%d-%d", iv.first, iv.last)
}

// intervals cuts a protocol's ports into the intervals the rules of a direction tell apart (rules whose peers
// can hold remote, or all rules when remote is invalid).
func intervals(p *policy.IdentityPolicy, dir bpf.Direction, proto uint8, remote netip.Addr) []interval {
	lo, hi := uint32(1), uint32(65535)
	if proto == policy.ProtoICMP || proto == policy.ProtoICMPv6 {
		lo, hi = 0, 255
	}
	cuts := map[uint32]bool{lo: true}
	if p != nil {
		for _, r := range p.Rules {
			if r.Direction != dir || r.AllPorts || !mayHold(r, remote) {
				continue
			}
			for _, pr := range r.Ports {
				if pr.Protocol != proto {
					continue
				}
				cuts[max(uint32(pr.First), lo)] = true
				if uint32(pr.Last)+1 <= hi {
					cuts[uint32(pr.Last)+1] = true
				}
			}
		}
	}
	var starts []uint32
	for c := range cuts {
		starts = append(starts, c)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	out := make([]interval, 0, len(starts))
	for i, s := range starts {
		end := hi
		if i+1 < len(starts) {
			end = starts[i+1] - 1
		}
		out = append(out, interval{uint16(s), uint16(end)})
	}
	return out
}

// mayHold reports whether a rule's peers can match remote (namespace peers always may: pods are judged by
// identity).
func mayHold(r policy.Rule, remote netip.Addr) bool {
	if r.AllPeers {
		return true
	}
	for _, peer := range r.Peers {
		if !peer.IsCIDR() || peer.CIDR.Contains(remote) {
			return true
		}
	}
	return false
}

// merge cuts two interval lists of one protocol at the union of their boundaries.
func merge(a, b []interval) []interval {
	cuts := map[uint16]bool{}
	last := uint16(0)
	for _, l := range [][]interval{a, b} {
		for _, iv := range l {
			cuts[iv.first] = true
			last = max(last, iv.last)
		}
	}
	var starts []uint16
	for c := range cuts {
		starts = append(starts, c)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	out := make([]interval, 0, len(starts))
	for i, s := range starts {
		end := last
		if i+1 < len(starts) {
			end = starts[i+1] - 1
		}
		out = append(out, interval{s, end})
	}
	return out
}

func bounds(s string) (int, int, bool) {
	if s == "all" {
		return 0, 0, false
	}
	a, b, found := strings.Cut(s, "-")
	lo, err := strconv.Atoi(a)
	if err != nil {
		return 0, 0, false
	}
	hi := lo
	if found {
		if hi, err = strconv.Atoi(b); err != nil {
			return 0, 0, false
		}
	}
	return lo, hi, true
}

func adjacent(a, b string) bool {
	_, ahi, ok1 := bounds(a)
	blo, _, ok2 := bounds(b)
	return ok1 && ok2 && ahi+1 == blo
}

func joinPorts(a, b string) string {
	lo, _, _ := bounds(a)
	_, hi, _ := bounds(b)
	if (lo <= 1 && hi == 65535) || (lo == 0 && hi == 255) {
		return "all"
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

// Allows reports whether the reach opens a packet of a protocol ("tcp") to port, towards (or from) addr: the
// question a connection attempt answers.
func (r Reach) Allows(protocol string, port uint16, addr netip.Addr) bool {
	switch r.Open {
	case "all":
		return true
	case "none":
		return false
	}
	for _, g := range r.Grants {
		if g.Protocol != protocol || !portIn(g.Ports, port) || !g.holds(addr) {
			continue
		}
		return true
	}
	return false
}

func portIn(ports string, port uint16) bool {
	if ports == "all" {
		return true
	}
	lo, hi, ok := bounds(ports)
	return ok && int(port) >= lo && int(port) <= hi
}

func (g Grant) holds(a netip.Addr) bool {
	var p netip.Prefix
	switch g.Remote {
	case "any":
		p = netip.MustParsePrefix("0.0.0.0/0")
	case "any (IPv6)":
		p = netip.MustParsePrefix("::/0")
	default:
		var err error
		if p, err = netip.ParsePrefix(g.Remote); err != nil {
			return true // a namespace: the reach is about its pods, whatever their address
		}
	}
	if !p.Contains(a) {
		return false
	}
	for _, e := range g.Except {
		if q, err := netip.ParsePrefix(e); err == nil && q.Contains(a) {
			return false
		}
	}
	return true
}
