package policytest

import (
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

// This file decodes fuzz inputs into small policies and ipcaches over a small world of addresses and ports:
// cidrs in 10.0.0.0/8 and fd00:250::/96 (or a whole family), ports 0 to 19, 65534 and 65535.

// ByteReader hands out a fuzz input a byte at a time, then zeros.
type ByteReader []byte

// Next is the next byte of the input, 0 once it is used up.
func (r *ByteReader) Next() byte {
	if len(*r) == 0 {
		return 0
	}
	b := (*r)[0]
	*r = (*r)[1:]
	return b
}

// SmallIPCache is the cluster of fuzz inputs, inside the addresses their policies name: pods of identities 1
// and 2, a Service of identity 3, a node network, the metadata API and the cluster ranges.
func SmallIPCache() *policy.IPCache {
	return policy.NewIPCache(smallIPCache())
}

func smallIPCache() []policy.IPCacheEntry {
	return []policy.IPCacheEntry{
		{Prefix: pfx("10.0.1.0/24"), Class: bpf.ClassCluster},
		{Prefix: pfx("10.0.1.5/32"), Class: bpf.ClassPod, Identity: 1},
		{Prefix: pfx("10.0.1.6/32"), Class: bpf.ClassPod, Identity: 2},
		{Prefix: pfx("10.0.2.7/32"), Class: bpf.ClassService, Identity: 3},
		{Prefix: pfx("10.0.3.0/24"), Class: bpf.ClassNode},
		{Prefix: pfx("10.0.4.4/32"), Class: bpf.ClassMetadata},
		{Prefix: pfx("169.254.169.254/32"), Class: bpf.ClassMetadata},
		{Prefix: pfx("fd00:250::1:0/112"), Class: bpf.ClassCluster},
		{Prefix: pfx("fd00:250::1:5/128"), Class: bpf.ClassPod, Identity: 1},
		{Prefix: pfx("fd00:250::4:4/128"), Class: bpf.ClassMetadata},
	}
}

// DecodeIPCache is SmallIPCache with up to 3 more entries decoded from r, which win over its own for the
// same prefix: any class, prefixes as policies' cidrs, identities 0 to 4 for pods and Services.
func DecodeIPCache(r *ByteReader) *policy.IPCache {
	classes := []bpf.Class{bpf.ClassPod, bpf.ClassService, bpf.ClassNode, bpf.ClassMetadata, bpf.ClassCluster, bpf.ClassWorld}
	es := smallIPCache()
	for range int(r.Next() % 4) {
		b := r.Next()
		e := policy.IPCacheEntry{Class: classes[int(b&7)%len(classes)],
			Prefix: decodePrefix(int(b>>3)&1, r.Next(), r.Next(), r.Next())}
		if e.Class == bpf.ClassPod || e.Class == bpf.ClassService {
			e.Identity = uint32(b>>4) % 5
		}
		es = append(es, e)
	}
	return policy.NewIPCache(es)
}

// DecodePolicy decodes a policy of identity 9 from r: its flags and defaults, and up to 8 rules of both
// directions and actions, Audit or not, with up to 3 peers (cidrs with up to 3 excepts, or up to 3
// namespaces among identities 1 to 4) and up to 3 port ranges of TCP, UDP, ICMP and protocol 47.
func DecodePolicy(r *ByteReader) *policy.IdentityPolicy {
	h := r.Next()
	p := &policy.IdentityPolicy{Identity: 9, MetadataAllowed: h&1 != 0, Audit: h&2 != 0,
		DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow}
	if h&4 != 0 {
		p.DefaultEgress = bpf.ActionDeny
	}
	if h&8 != 0 {
		p.DefaultIngress = bpf.ActionDeny
	}
	for range int(h>>4) % 9 {
		b, counts := r.Next(), r.Next()
		rule := policy.Rule{ID: uint32(r.Next()) + 1, Direction: bpf.Direction(b & 1), Action: bpf.ActionAllow,
			Audit: b&4 != 0, AllPeers: b&8 != 0, AllPorts: b&16 != 0}
		if b&2 != 0 {
			rule.Action = bpf.ActionDeny
		}
		for range int(counts & 3) {
			rule.Peers = append(rule.Peers, decodePeer(r))
		}
		for range int(counts>>2) & 3 {
			pr := policy.PortRange{Protocol: []uint8{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoICMP, 47}[r.Next()&3],
				First: decodePort(r.Next()), Last: decodePort(r.Next())}
			if pr.First > pr.Last {
				pr.First, pr.Last = pr.Last, pr.First
			}
			rule.Ports = append(rule.Ports, pr)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p
}

func decodePort(b byte) uint16 {
	switch v := b % 22; v {
	case 20:
		return 65534
	case 21:
		return 65535
	default:
		return uint16(v)
	}
}

func decodePeer(r *ByteReader) policy.Peer {
	t := r.Next()
	if t&3 == 0 {
		var ids []uint32
		for range int(t>>2) & 3 {
			ids = append(ids, uint32(r.Next()%4)+1)
		}
		return policy.Peer{Identities: ids}
	}
	peer := policy.Peer{CIDR: decodePrefix(int(t>>2)&1, r.Next(), r.Next(), r.Next())}
	for range int(t>>3) & 3 {
		if e := decodeExcept(peer.CIDR, r.Next(), r.Next(), r.Next()); e.IsValid() {
			peer.Except = append(peer.Except, e)
		}
	}
	return peer
}

// decodePrefix is 10.0.a.b/8..32 or fd00:250::a:b/96..128, or the whole family.
func decodePrefix(family int, a, b, length byte) netip.Prefix {
	if length == 255 {
		return wholeFamily[family]
	}
	if family == 0 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, a, b}), 8+int(length)%25).Masked()
	}
	v6 := [16]byte{0: 0xfd, 2: 0x02, 3: 0x50, 14: a, 15: b}
	return netip.PrefixFrom(netip.AddrFrom16(v6), 96+int(length)%33).Masked()
}

// decodeExcept is a prefix strictly inside c, its host bits taken from a and b; invalid when c has no room.
func decodeExcept(c netip.Prefix, a, b, length byte) netip.Prefix {
	room := c.Addr().BitLen() - c.Bits()
	if room == 0 {
		return netip.Prefix{}
	}
	bits := uint16(a)<<8 | uint16(b)
	i := 0
	addr := setHostBits(c.Addr(), c.Bits(), func() byte { i++; return byte(bits >> (i % 16)) })
	return netip.PrefixFrom(addr, c.Bits()+1+int(length)%room).Masked()
}

// Edges are what packets aimed at the edges of a policy and an ipcache are made of: every address at or
// next to an edge of a prefix either names, sorted; the protocols the policy names plus TCP and protocol 50,
// sorted; and for each protocol its port range edges plus 0 and 65535, sorted.
type Edges struct {
	Remotes   []netip.Addr
	Protocols []uint8
	Ports     map[uint8][]uint16
}

// NewEdges collects the edges of p (nil: no policy) and ipc.
func NewEdges(p *policy.IdentityPolicy, ipc *policy.IPCache) *Edges {
	t := NewTargets(p, ipc)
	e := &Edges{Ports: make(map[uint8][]uint16)}
	for _, pr := range t.prefixes {
		e.Remotes = append(e.Remotes, edges(pr)...)
	}
	slices.SortFunc(e.Remotes, netip.Addr.Compare)
	e.Remotes = slices.Compact(e.Remotes)
	e.Protocols = append(slices.Clone(t.protos), policy.ProtoTCP, 50)
	slices.Sort(e.Protocols)
	e.Protocols = slices.Compact(e.Protocols)
	for _, proto := range e.Protocols {
		ports := append(slices.Clone(t.ports[proto]), 0, 65535)
		slices.Sort(ports)
		e.Ports[proto] = slices.Compact(ports)
	}
	return e
}

// Packets are every packet of both directions, of each protocol to each of its ports, to each remote.
func (e *Edges) Packets() []policy.Packet {
	var out []policy.Packet
	for _, dir := range []bpf.Direction{bpf.Egress, bpf.Ingress} {
		for _, proto := range e.Protocols {
			for _, port := range e.Ports[proto] {
				for _, remote := range e.Remotes {
					out = append(out, policy.Packet{Direction: dir, Protocol: proto, Port: port, Remote: remote})
				}
			}
		}
	}
	return out
}
