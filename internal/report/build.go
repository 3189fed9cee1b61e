package report

import (
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/resolve"
)

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
	keys := map[uint32]RuleKey{}
	out := resolve.Resolve(resolve.Input{Config: in.Config, Policies: in.Policies, Namespaces: in.Namespaces, Identities: ids,
		RuleID: func(k resolve.RuleKey) uint32 {
			id := uint32(len(keys) + 1)
			keys[id] = RuleKey{Policy: k.Policy, Direction: direction(k.Direction), Index: k.Index}
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
	keys    map[uint32]RuleKey // by rule id
	names   map[uint32]string
	ipc     *policy.IPCache
	special []netip.Prefix
	podBase netip.Prefix
}

// decision is the evaluator's answer for one class of packets.
type decision struct {
	allowed bool
	by      RuleKey // the rule that decides; with no Policy, none does and the default of its direction decides
	dflt    Default // for a denial by no rule: which default denies
}

func (b *builder) decide(p *policy.IdentityPolicy, pkt policy.Packet) decision {
	res := policy.Evaluate(p, b.out.Defaults, b.ipc, pkt)
	d := decision{allowed: res.Verdict != bpf.VerdictDenied, by: RuleKey{Direction: direction(pkt.Direction)}}
	if k, ok := b.keys[res.RuleID]; ok {
		d.by = k
		return d
	}
	if !d.allowed {
		switch {
		case res.Reason == bpf.ReasonMetadata:
			d.dflt = DefaultMetadataAPI
		case res.Reason == bpf.ReasonEncapsulation:
			d.dflt = DefaultEncapsulation
		case pkt.Direction == bpf.Ingress:
			d.dflt = DefaultWorldIngress
		default:
			d.dflt = DefaultWorldEgress
		}
	}
	return d
}

func direction(d bpf.Direction) Direction {
	if d == bpf.Ingress {
		return Ingress
	}
	return Egress
}

// world answers egress to, or ingress from, the world.
func (b *builder) world(p *policy.IdentityPolicy, dir bpf.Direction) Reach {
	return b.addresses(p, dir, b.worldRegions(p, dir))
}

// metadata answers whether the namespace reaches the metadata API.
func (b *builder) metadata(p *policy.IdentityPolicy) Reach {
	var regions []region
	for _, m := range b.out.Metadata {
		regions = append(regions, region{addr: m.Addr(), prefix: m})
	}
	return b.addresses(p, bpf.Egress, regions)
}

// addresses answers what a namespace reaches of regions (or what reaches it from them).
func (b *builder) addresses(p *policy.IdentityPolicy, dir bpf.Direction, regions []region) Reach {
	var t tally
	for _, reg := range regions {
		for _, proto := range protocolsOf(p) {
			if reg.addr.Is4() && proto == policy.ProtoICMPv6 || reg.addr.Is6() && proto == policy.ProtoICMP {
				continue
			}
			for _, ports := range intervals(p, dir, proto, reg.addr) {
				d := b.decide(p, policy.Packet{Direction: dir, Protocol: proto, Port: ports.First, Remote: reg.addr})
				t.add(d, Grant{Protocol: proto, Ports: ports, Remote: Remote{Prefix: reg.prefix}, Except: reg.except})
			}
		}
	}
	return t.reach()
}

// eastWest answers what a pod of one namespace reaches of another's pods: its egress and their ingress.
func (b *builder) eastWest(from *policy.IdentityPolicy, fromID uint32, to *policy.IdentityPolicy, toID uint32) Reach {
	var t tally
	for _, proto := range protocolsOf(from, to) {
		if proto == policy.ProtoICMPv6 {
			continue // the synthetic pod addresses are IPv4
		}
		for _, ports := range merge(intervals(from, bpf.Egress, proto, b.podAddr(toID)), intervals(to, bpf.Ingress, proto, b.podAddr(fromID))) {
			out := b.decide(from, policy.Packet{Direction: bpf.Egress, Protocol: proto, Port: ports.First, Remote: b.podAddr(toID)})
			in := b.decide(to, policy.Packet{Direction: bpf.Ingress, Protocol: proto, Port: ports.First, Remote: b.podAddr(fromID)})
			d := out // what denies it, or else the rule that opens it: the sender's, unless only the receiver's matched
			if out.allowed && (!in.allowed || out.by.Policy == "" && in.by.Policy != "") {
				d = in
			}
			t.add(d, Grant{Protocol: proto, Ports: ports, Remote: Remote{Namespace: b.names[toID]}})
		}
	}
	return t.reach()
}

// tally gathers the decisions about the classes of packets one question asks about.
type tally struct {
	total  int
	grants []Grant          // the open classes, in order
	rules  map[RuleKey]bool // the rules that deny some class
	dflt   Default          // the first default that denies some class
}

// add counts one class of packets: g, decided by d.
func (t *tally) add(d decision, g Grant) {
	t.total++
	switch {
	case d.allowed:
		g.Rule = d.by
		t.grants = append(t.grants, g)
	case d.by.Policy != "":
		if t.rules == nil {
			t.rules = map[RuleKey]bool{}
		}
		t.rules[d.by] = true
	case t.dflt == "":
		t.dflt = d.dflt
	}
}

// reach says all, some or none, with the open classes (neighbouring ports of one protocol, remote and decider
// merged) or what denies them.
func (t *tally) reach() Reach {
	r := Reach{Open: OpenSome}
	switch len(t.grants) {
	case 0:
		r.Open = OpenNone
		for k := range t.rules {
			r.Denial.Rules = append(r.Denial.Rules, k)
			r.Policies = append(r.Policies, k.Policy)
		}
		slices.SortFunc(r.Denial.Rules, compareRules)
		r.Denial.Default = t.dflt
	case t.total:
		r.Open = OpenAll
	}
	for _, g := range t.grants {
		if n := len(r.Grants); n > 0 && r.Grants[n-1].continuedBy(g) {
			r.Grants[n-1].Ports.Last = g.Ports.Last
			continue
		}
		r.Grants = append(r.Grants, g)
		if g.Rule.Policy != "" {
			r.Policies = append(r.Policies, g.Rule.Policy)
		}
	}
	slices.Sort(r.Policies)
	r.Policies = slices.Compact(r.Policies)
	return r
}

// continuedBy reports whether h takes up where g leaves off: the next ports, of the same protocol and remote,
// opened by the same rule or default.
func (g Grant) continuedBy(h Grant) bool {
	return g.Protocol == h.Protocol && g.Remote == h.Remote && slices.Equal(g.Except, h.Except) && g.Rule == h.Rule &&
		int(g.Ports.Last)+1 == int(h.Ports.First)
}

// region is a part of the world that every rule either covers whole or not at all.
type region struct {
	addr   netip.Addr     // stands for the region
	prefix netip.Prefix   // the smallest named prefix that holds it, or a whole family
	except []netip.Prefix // the largest named prefixes inside that one: not part of the region
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
			out = append(out, region{addr: a, prefix: pfx, except: outermost(inner)})
		}
	}
	return out
}

// outermost is the prefixes of a set that no other of the set holds, sorted.
func outermost(set []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
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
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefixes)
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

// intervals cuts a protocol's ports into the intervals the rules of a direction tell apart (rules whose peers
// can hold remote, or all rules when remote is invalid).
func intervals(p *policy.IdentityPolicy, dir bpf.Direction, proto uint8, remote netip.Addr) []Ports {
	first, last := portRange(proto)
	lo, hi := uint32(first), uint32(last)
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
	return cut(cuts, hi)
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
func merge(a, b []Ports) []Ports {
	cuts := map[uint32]bool{}
	last := uint32(0)
	for _, l := range [][]Ports{a, b} {
		for _, iv := range l {
			cuts[uint32(iv.First)] = true
			last = max(last, uint32(iv.Last))
		}
	}
	return cut(cuts, last)
}

// cut is the intervals that begin at each of starts and end before the next, the last at last.
func cut(starts map[uint32]bool, last uint32) []Ports {
	sorted := slices.Sorted(maps.Keys(starts))
	out := make([]Ports, 0, len(sorted))
	for i, s := range sorted {
		end := last
		if i+1 < len(sorted) {
			end = sorted[i+1] - 1
		}
		out = append(out, Ports{uint16(s), uint16(end)})
	}
	return out
}
