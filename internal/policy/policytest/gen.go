// Package policytest generates what the differential tests of the policy compiler and of the datapath feed
// both to them and to the reference evaluator (policy.Evaluate): random policies, ipcaches and packets aimed
// at the edges of what they name, and small ones decoded from fuzz inputs. It also prints them and shrinks a
// policy that makes a test fail.
package policytest

import (
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

var (
	anchors4 = []netip.Prefix{pfx("0.0.0.0/0"), pfx("10.0.0.0/8"), pfx("10.244.0.0/16"), pfx("100.64.0.0/10"),
		pfx("192.168.0.0/16"), pfx("198.51.100.0/24"), pfx("203.0.113.0/24"), pfx("169.254.169.254/32")}
	anchors6 = []netip.Prefix{pfx("::/0"), pfx("2001:db8::/32"), pfx("2001:db8:1::/48"), pfx("fd00::/8"),
		pfx("fd00:10:244::/56"), pfx("fd00:ec2::254/128")}
	wellKnownPorts = []uint16{0, 1, 22, 53, 79, 80, 81, 443, 1023, 1024, 5432, 8000, 8080, 8100, 32767, 32768, 65534, 65535}
	wholeFamily    = [2]netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// Generator draws random policies, ipcaches and packets, reusing what it drew before so that cidrs nest and
// overlap, port ranges share edges, and ipcache entries and packets land on what the policies name. Its cidrs lie anywhere in both families, mostly inside a few anchors
// (10.0.0.0/8, 10.244.0.0/16, 100.64.0.0/10, 192.168.0.0/16, 198.51.100.0/24, 203.0.113.0/24, the metadata
// API, 2001:db8::/32, fd00::/8); its packets go to any address, mostly at the edges of those cidrs.
// A Generator is not safe for concurrent use.
type Generator struct {
	rng        *rand.Rand
	prefixes   [2][]netip.Prefix // cidrs and excepts drawn so far, by family
	ports      []uint16          // port range edges drawn so far
	identities []uint32          // the namespace identities of peers and ipcache entries
	broad      int               // percent of rules with AllPeers; big policies have few, or their first ones shadow the rest
	avoid      map[netip.Addr]bool
}

// NewGenerator returns a generator that draws everything from rng: the same seed, the same policies.
func NewGenerator(rng *rand.Rand) *Generator {
	g := &Generator{rng: rng, ports: slices.Clone(wellKnownPorts), broad: 15}
	for i := 0; i < 3+rng.IntN(10); i++ {
		g.ports = append(g.ports, uint16(rng.IntN(65536)))
	}
	for id := uint32(1); id <= uint32(4+rng.IntN(10)); id++ {
		g.identities = append(g.identities, id)
	}
	return g
}

// Avoid keeps addrs out of the remotes of the packets the generator draws from now on, for instance the
// addresses of the endpoint that sends and receives them.
func (g *Generator) Avoid(addrs ...netip.Addr) {
	if g.avoid == nil {
		g.avoid = make(map[netip.Addr]bool)
	}
	for _, a := range addrs {
		g.avoid[a] = true
	}
}

func (g *Generator) chance(percent int) bool { return g.rng.IntN(100) < percent }

// setHostBits returns a with the bits after the first n set to 1 (ones) or to random values.
func setHostBits(a netip.Addr, n int, fill func() byte) netip.Addr {
	b := a.As16()
	off := 0
	if a.Is4() {
		off = 96
	}
	for i := off + n; i < 128; i++ {
		byteIdx, bit := i/8, 7-i%8
		b[byteIdx] &^= 1 << bit
		b[byteIdx] |= (fill() & 1) << bit
	}
	out := netip.AddrFrom16(b)
	if a.Is4() {
		out = out.Unmap()
	}
	return out
}

func (g *Generator) randomInside(p netip.Prefix) netip.Addr {
	return setHostBits(p.Addr(), p.Bits(), func() byte { return byte(g.rng.IntN(2)) })
}

func lastAddr(p netip.Prefix) netip.Addr {
	return setHostBits(p.Masked().Addr(), p.Bits(), func() byte { return 1 })
}

// contains reports whether prefix outer contains prefix inner (both masked, of the same family).
func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// subPrefix draws a prefix inside p, at least minExtra bits longer, usually only a few.
func (g *Generator) subPrefix(p netip.Prefix, minExtra int) netip.Prefix {
	room := p.Addr().BitLen() - p.Bits()
	if room < minExtra {
		return netip.Prefix{}
	}
	extra := minExtra
	switch r := g.rng.IntN(10); {
	case r < 5:
		extra += g.rng.IntN(min(4, room-minExtra) + 1)
	case r < 8:
		extra += g.rng.IntN(min(12, room-minExtra) + 1)
	default:
		extra += g.rng.IntN(room - minExtra + 1)
	}
	return netip.PrefixFrom(g.randomInside(p), p.Bits()+extra).Masked()
}

func (g *Generator) cidr(f int) netip.Prefix {
	var out netip.Prefix
	if len(g.prefixes[f]) > 0 && g.chance(60) {
		parent := g.prefixes[f][g.rng.IntN(len(g.prefixes[f]))]
		if g.chance(30) {
			return parent
		}
		out = g.subPrefix(parent, 0)
	} else {
		anchors := anchors4
		if f == 1 {
			anchors = anchors6
		}
		if g.broad < 10 {
			anchors = anchors[1:] // no /0
		}
		out = g.subPrefix(anchors[g.rng.IntN(len(anchors))], 0)
	}
	g.prefixes[f] = append(g.prefixes[f], out)
	return out
}

// fqdnPool are the name patterns fqdn peers take (their slots are their places among those a policy uses).
var fqdnPool = []string{"**.c.example", "*.b.example", "a.example", "api.example.com", "z.example"}

// peer is a random peer; names only where they may be (fqdn: egress peers of Allow rules).
func (g *Generator) peer(fqdn bool) policy.Peer {
	if fqdn && g.chance(6) {
		return policy.Peer{FQDN: fqdnPool[g.rng.IntN(len(fqdnPool))]}
	}
	if g.chance(25) {
		var ids []uint32
		for range g.rng.IntN(4) {
			ids = append(ids, g.identities[g.rng.IntN(len(g.identities))])
		}
		return policy.Peer{Identities: ids}
	}
	f := g.rng.IntN(2)
	p := policy.Peer{CIDR: g.cidr(f)}
	for range g.rng.IntN(4) {
		parent := p.CIDR
		if len(p.Except) > 0 && g.chance(30) {
			parent = p.Except[g.rng.IntN(len(p.Except))] // nested or repeated excepts
		}
		e := g.subPrefix(parent, 1)
		if parent != p.CIDR {
			e = g.subPrefix(parent, 0)
		}
		if !e.IsValid() || !contains(p.CIDR, e) || e == p.CIDR {
			continue
		}
		g.prefixes[f] = append(g.prefixes[f], e)
		p.Except = append(p.Except, e)
	}
	if g.chance(10) { // host bits set: the compiler masks them
		p.CIDR = netip.PrefixFrom(g.randomInside(p.CIDR), p.CIDR.Bits())
	}
	return p
}

func (g *Generator) port() uint16 {
	if g.chance(80) {
		return g.ports[g.rng.IntN(len(g.ports))]
	}
	v := uint16(g.rng.IntN(65536))
	g.ports = append(g.ports, v)
	return v
}

func (g *Generator) portRange() policy.PortRange {
	var pr policy.PortRange
	switch r := g.rng.IntN(100); {
	case r < 35:
		pr.Protocol = policy.ProtoTCP
	case r < 60:
		pr.Protocol = policy.ProtoUDP
	case r < 65:
		pr.Protocol = policy.ProtoSCTP
	case r < 75:
		pr.Protocol = policy.ProtoICMP
	case r < 85:
		pr.Protocol = policy.ProtoICMPv6
	default:
		pr.Protocol = []uint8{0, 47, 50, 255, uint8(g.rng.IntN(256))}[g.rng.IntN(5)]
	}
	switch pr.Protocol {
	case policy.ProtoICMP, policy.ProtoICMPv6:
		switch r := g.rng.IntN(10); {
		case r < 5:
			t := uint16([]int{0, 3, 8, 11, 128, 129, 135, 136, 255, g.rng.IntN(256)}[g.rng.IntN(10)])
			pr.First, pr.Last = t, t
		case r < 8:
			a, b := uint16(g.rng.IntN(256)), uint16(g.rng.IntN(256))
			pr.First, pr.Last = min(a, b), max(a, b)
		case r < 9:
			pr.First, pr.Last = 0, 255
		default:
			pr.First, pr.Last = 0, 65535
		}
		return pr
	case policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP:
	default:
		if g.chance(80) {
			pr.First, pr.Last = 0, 65535
			return pr
		}
	}
	switch r := g.rng.IntN(10); {
	case r < 4:
		p := g.port()
		pr.First, pr.Last = p, p
	case r < 9:
		a, b := g.port(), g.port()
		pr.First, pr.Last = min(a, b), max(a, b)
	default:
		pr.First, pr.Last = 0, 65535
	}
	return pr
}

func (g *Generator) rule() policy.Rule {
	r := policy.Rule{ID: uint32(1 + g.rng.IntN(int(bpf.MaxRules)-1)), Direction: bpf.Direction(g.rng.IntN(2)), Action: bpf.ActionAllow}
	if g.chance(50) {
		r.Action = bpf.ActionDeny
	}
	r.Audit = g.chance(15)
	if r.AllPeers = g.chance(g.broad); !r.AllPeers {
		n := 1 + g.rng.IntN(3)
		if g.chance(3) {
			n = 0
		}
		for range n {
			r.Peers = append(r.Peers, g.peer(r.Direction == bpf.Egress && r.Action == bpf.ActionAllow))
		}
	}
	if r.AllPorts = g.chance(g.broad * 5 / 3); !r.AllPorts {
		n := 1 + g.rng.IntN(3)
		if g.chance(3) {
			n = 0
		}
		for range n {
			r.Ports = append(r.Ports, g.portRange())
		}
	}
	return r
}

// Action draws Allow or Deny.
func (g *Generator) Action() bpf.Action {
	if g.chance(50) {
		return bpf.ActionDeny
	}
	return bpf.ActionAllow
}

// Defaults draws cluster defaults: Allow or Deny for each direction.
func (g *Generator) Defaults() policy.Defaults {
	return policy.Defaults{DefaultEgress: g.Action(), DefaultIngress: g.Action()}
}

// Policy draws the policy of an identity (1 to 100) with the given number of rules: both directions and
// actions, Audit rules, cidr peers of both families with excepts (nested and repeated ones too), namespace
// peers, port ranges of TCP, UDP and SCTP, ICMP and ICMPv6 types, other protocols, rules for every peer or
// every port, and now and then no peer or no port at all. Rule ids repeat now and then, as nothing forbids.
func (g *Generator) Policy(rules int) *policy.IdentityPolicy {
	p := &policy.IdentityPolicy{Identity: uint32(1 + g.rng.IntN(100)), MetadataAllowed: g.chance(50), Audit: g.chance(20),
		DefaultEgress: g.Action(), DefaultIngress: g.Action()}
	if rules > 50 {
		g.broad = 2
	}
	for range rules {
		p.Rules = append(p.Rules, g.rule())
	}
	return p
}

// IPCache draws a cluster: its ranges, nodes, the metadata API, Services, and pods both in the pod ranges and
// at addresses the cidrs drawn so far name.
func (g *Generator) IPCache() *policy.IPCache {
	es := []policy.IPCacheEntry{
		{Prefix: pfx("10.244.0.0/16"), Class: bpf.ClassCluster},
		{Prefix: pfx("10.96.0.0/12"), Class: bpf.ClassCluster},
		{Prefix: pfx("fd00:10:244::/56"), Class: bpf.ClassCluster},
		{Prefix: pfx("192.168.1.0/24"), Class: bpf.ClassNode},
		{Prefix: pfx("169.254.169.254/32"), Class: bpf.ClassMetadata},
		{Prefix: pfx("fd00:ec2::254/128"), Class: bpf.ClassMetadata},
		{Prefix: pfx("100.100.100.200/32"), Class: bpf.ClassMetadata},
	}
	id := func() uint32 {
		if g.chance(5) {
			return 0
		}
		return g.identities[g.rng.IntN(len(g.identities))]
	}
	host := func(p netip.Prefix) netip.Prefix {
		a := g.randomInside(p)
		return netip.PrefixFrom(a, a.BitLen())
	}
	for range 5 + g.rng.IntN(20) {
		es = append(es, policy.IPCacheEntry{Prefix: host(pfx("10.244.0.0/16")), Class: bpf.ClassPod, Identity: id()})
		es = append(es, policy.IPCacheEntry{Prefix: host(pfx("fd00:10:244::/56")), Class: bpf.ClassPod, Identity: id()})
	}
	for range 1 + g.rng.IntN(5) {
		es = append(es, policy.IPCacheEntry{Prefix: host(pfx("10.96.0.0/12")), Class: bpf.ClassService, Identity: id()})
		es = append(es, policy.IPCacheEntry{Prefix: host(pfx("192.168.0.0/16")), Class: bpf.ClassNode})
	}
	classes := []bpf.Class{bpf.ClassPod, bpf.ClassService, bpf.ClassNode, bpf.ClassMetadata, bpf.ClassCluster, bpf.ClassWorld}
	for f := range g.prefixes {
		for _, p := range g.prefixes[f] {
			if !g.chance(20) {
				continue
			}
			c := classes[g.rng.IntN(len(classes))]
			e := policy.IPCacheEntry{Prefix: host(p), Class: c}
			if c == bpf.ClassPod || c == bpf.ClassService {
				e.Identity = id()
			}
			if g.chance(20) {
				e.Prefix = g.subPrefix(p, 0)
			}
			es = append(es, e)
		}
	}
	return policy.NewIPCache(es)
}

// Targets is what packets should aim at: the prefixes a policy and an ipcache name, and the port range edges
// of the policy by protocol.
type Targets struct {
	prefixes []netip.Prefix
	ports    map[uint8][]uint16
	protos   []uint8
}

// NewTargets collects the targets of p (nil: no policy) and ipc.
func NewTargets(p *policy.IdentityPolicy, ipc *policy.IPCache) *Targets {
	t := &Targets{ports: make(map[uint8][]uint16)}
	for _, e := range ipc.Entries() {
		t.prefixes = append(t.prefixes, e.Prefix)
	}
	if p == nil {
		return t
	}
	for _, r := range p.Rules {
		for _, peer := range r.Peers {
			if peer.IsCIDR() {
				t.prefixes = append(t.prefixes, peer.CIDR.Masked())
				t.prefixes = append(t.prefixes, peer.Except...)
			}
		}
		for _, pr := range r.Ports {
			t.ports[pr.Protocol] = append(t.ports[pr.Protocol], pr.First, pr.Last)
			if pr.First > 0 {
				t.ports[pr.Protocol] = append(t.ports[pr.Protocol], pr.First-1)
			}
			if pr.Last < 65535 {
				t.ports[pr.Protocol] = append(t.ports[pr.Protocol], pr.Last+1)
			}
		}
	}
	for proto := range t.ports {
		t.protos = append(t.protos, proto)
	}
	slices.Sort(t.protos)
	return t
}

// edges are the addresses at and just outside the ends of p.
func edges(p netip.Prefix) []netip.Addr {
	first, last := p.Masked().Addr(), lastAddr(p)
	out := []netip.Addr{first, last}
	if prev := first.Prev(); prev.IsValid() {
		out = append(out, prev)
	}
	if next := last.Next(); next.IsValid() {
		out = append(out, next)
	}
	return out
}

// Packet draws the first packet of a flow: either direction; mostly a protocol and a port range edge of
// the targets, else any protocol and port (for ICMP and ICMPv6 the port is a type, and may be beyond 255
// where a range ends at 255 or 65535); mostly a remote at or next to an edge of a target prefix, else
// anywhere, 4-in-6 addresses included. The remote is never one that Avoid named.
func (g *Generator) Packet(t *Targets) policy.Packet {
	for {
		pkt := g.packet(t)
		if !g.avoid[pkt.Remote] {
			return pkt
		}
	}
}

func (g *Generator) packet(t *Targets) policy.Packet {
	pkt := policy.Packet{Direction: bpf.Direction(g.rng.IntN(2))}
	if len(t.protos) > 0 && g.chance(75) {
		pkt.Protocol = t.protos[g.rng.IntN(len(t.protos))]
	} else {
		pkt.Protocol = []uint8{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP, policy.ProtoICMPv6, policy.ProtoSCTP,
			0, 47, 255, uint8(g.rng.IntN(256)), 4, 41}[g.rng.IntN(11)]
	}
	icmp := pkt.Protocol == policy.ProtoICMP || pkt.Protocol == policy.ProtoICMPv6
	switch ports := t.ports[pkt.Protocol]; {
	case len(ports) > 0 && g.chance(70):
		pkt.Port = ports[g.rng.IntN(len(ports))]
	case icmp:
		pkt.Port = uint16(g.rng.IntN(256))
	case g.chance(20):
		pkt.Port = []uint16{0, 65535, 4789, 8472, 6081}[g.rng.IntN(5)] // edges, and encapsulation ports
	default:
		pkt.Port = uint16(g.rng.IntN(65536))
	}
	switch r := g.rng.IntN(100); {
	case r < 70 && len(t.prefixes) > 0:
		p := t.prefixes[g.rng.IntN(len(t.prefixes))]
		if g.chance(70) {
			es := edges(p)
			pkt.Remote = es[g.rng.IntN(len(es))]
		} else {
			pkt.Remote = g.randomInside(p)
		}
	case r < 85:
		a := anchors4
		if g.chance(40) {
			a = anchors6
		}
		pkt.Remote = g.randomInside(a[g.rng.IntN(len(a))])
	case r < 88:
		pkt.Remote = netip.AddrFrom16(g.randomInside(anchors4[g.rng.IntN(len(anchors4))]).As16()) // 4-in-6
	case r < 92:
		// NAT64: an IPv4 address of the targets or the anchors, in the well-known or the local-use prefix
		v4 := g.randomInside(anchors4[g.rng.IntN(len(anchors4))])
		if len(t.prefixes) > 0 && g.chance(60) {
			if p := t.prefixes[g.rng.IntN(len(t.prefixes))]; p.Addr().Is4() {
				v4 = g.randomInside(p)
			}
		}
		b := v4.As4()
		n := [16]byte{0, 0x64, 0xff, 0x9b, 12: b[0], 13: b[1], 14: b[2], 15: b[3]}
		if g.chance(30) {
			n[5] = 1 // 64:ff9b:1::/48
		}
		pkt.Remote = netip.AddrFrom16(n)
	default:
		pkt.Remote = g.randomInside(wholeFamily[g.rng.IntN(2)])
	}
	if g.chance(30) { // learned from answers for some of the identity's fqdn patterns
		pkt.FQDN = g.rng.Uint64() & (1<<len(fqdnPool) - 1)
	}
	return pkt
}

// NewRand is the random source a seed stands for in the differential tests and their failure reports.
func NewRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// RuleCount is how many rules the i-th policy of a differential run gets: the first 1,000, every eighth a few
// hundred, some none at all, the others up to 30.
func RuleCount(rng *rand.Rand, i int) int {
	rules := 1 + rng.IntN(30)
	switch {
	case i == 0:
		rules = 1000
	case i%8 == 7:
		rules = 100 + rng.IntN(300)
	case i%8 == 3:
		rules = 0
	}
	return rules
}
