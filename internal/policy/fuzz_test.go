package policy

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/moatfw/moat/bpf"
)

// FuzzCompile decodes the input into a small policy over a small world of addresses and ports, and checks
// that the simulated datapath agrees with Evaluate on every packet aimed at an edge of a cidr, except,
// ipcache entry or port range.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x1f, 0x00, 0x01, 0x01, 0x01, 0x00, 0x10, 0x08, 0x10, 0x00, 0x01, 0x05})
	f.Add([]byte{0x23, 0x3a, 0x12, 0x07, 0x09, 0x00, 0x00, 0x10, 0x04, 0x00, 0x01, 0x04, 0x1e, 0x0d, 0x33})
	rng := rand.New(rand.NewPCG(7, 11))
	for range 24 {
		b := make([]byte, 16+rng.IntN(112))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		f.Add(b)
	}
	ipc := fuzzIPCache()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := fuzzPolicy(data)
		if err := p.Validate(); err != nil {
			t.Fatalf("the decoder made an invalid policy: %v\n%s", err, formatPolicy(p))
		}
		entries, err := Compile(p)
		if err != nil {
			t.Fatalf("Compile: %v\n%s", err, formatPolicy(p))
		}
		checkEntries(t, entries)
		m, err := newDatapathModel(entries, Defaults{DefaultEgress: allow, DefaultIngress: deny}, ipc, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, pkt := range edgePackets(p, ipc) {
			want := Evaluate(p, Defaults{DefaultEgress: allow, DefaultIngress: deny}, ipc, pkt)
			if got := m.decide(pkt); got != want {
				t.Fatalf("the datapath disagrees with Evaluate\npacket %s\ndatapath %s\nEvaluate %s\npolicy %sipcache entries of the remote:\n%s",
					formatPacket(pkt), formatResult(got), formatResult(want), formatPolicy(p), formatIPCache(ipc, pkt.Remote))
			}
		}
	})
}

// fuzzIPCache is the fuzz world's cluster, inside the addresses fuzz policies name.
func fuzzIPCache() *IPCache {
	return NewIPCache([]IPCacheEntry{
		{Prefix: pfx("10.0.1.0/24"), Class: bpf.ClassCluster},
		{Prefix: pfx("10.0.1.5/32"), Class: bpf.ClassPod, Identity: 1},
		{Prefix: pfx("10.0.1.6/32"), Class: bpf.ClassPod, Identity: 2},
		{Prefix: pfx("10.0.2.7/32"), Class: bpf.ClassService, Identity: 3},
		{Prefix: pfx("10.0.3.0/24"), Class: bpf.ClassNode},
		{Prefix: pfx("10.0.4.4/32"), Class: bpf.ClassMetadata},
		{Prefix: pfx("169.254.169.254/32"), Class: bpf.ClassMetadata},
		{Prefix: pfx("fd00::1:0/112"), Class: bpf.ClassCluster},
		{Prefix: pfx("fd00::1:5/128"), Class: bpf.ClassPod, Identity: 1},
		{Prefix: pfx("fd00::4:4/128"), Class: bpf.ClassMetadata},
	})
}

// byteReader hands out the fuzz input a byte at a time, then zeros.
type byteReader []byte

func (r *byteReader) next() byte {
	if len(*r) == 0 {
		return 0
	}
	b := (*r)[0]
	*r = (*r)[1:]
	return b
}

// fuzzPolicy decodes up to 8 rules whose cidrs lie in 10.0.0.0/8 or fd00::/96 (or are a whole family) and
// whose ports are 0 to 19, 65534 and 65535 of TCP, UDP, ICMP and protocol 47.
func fuzzPolicy(data []byte) *IdentityPolicy {
	r := byteReader(data)
	h := r.next()
	p := &IdentityPolicy{Identity: 9, MetadataAllowed: h&1 != 0, Audit: h&2 != 0, DefaultEgress: allow, DefaultIngress: allow}
	if h&4 != 0 {
		p.DefaultEgress = deny
	}
	if h&8 != 0 {
		p.DefaultIngress = deny
	}
	for range int(h>>4) % 9 {
		b, counts := r.next(), r.next()
		rule := Rule{ID: uint32(r.next()) + 1, Direction: bpf.Direction(b & 1), Action: allow, Audit: b&4 != 0,
			AllPeers: b&8 != 0, AllPorts: b&16 != 0}
		if b&2 != 0 {
			rule.Action = deny
		}
		for range int(counts & 3) {
			rule.Peers = append(rule.Peers, fuzzPeer(&r))
		}
		for range int(counts>>2) & 3 {
			pr := PortRange{Protocol: []uint8{ProtoTCP, ProtoUDP, ProtoICMP, 47}[r.next()&3], First: fuzzPort(r.next()), Last: fuzzPort(r.next())}
			if pr.First > pr.Last {
				pr.First, pr.Last = pr.Last, pr.First
			}
			rule.Ports = append(rule.Ports, pr)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p
}

func fuzzPort(b byte) uint16 {
	switch v := b % 22; v {
	case 20:
		return 65534
	case 21:
		return 65535
	default:
		return uint16(v)
	}
}

func fuzzPeer(r *byteReader) Peer {
	t := r.next()
	if t&3 == 0 {
		var ids []uint32
		for range int(t>>2) & 3 {
			ids = append(ids, uint32(r.next()%4)+1)
		}
		return Peer{Identities: ids}
	}
	peer := Peer{CIDR: fuzzPrefix(int(t>>2)&1, r.next(), r.next(), r.next())}
	for range int(t>>3) & 3 {
		if e := fuzzExcept(peer.CIDR, r.next(), r.next(), r.next()); e.IsValid() {
			peer.Except = append(peer.Except, e)
		}
	}
	return peer
}

// fuzzPrefix is 10.0.a.b/8..32 or fd00::a:b/96..128, or the whole family.
func fuzzPrefix(family int, a, b, length byte) netip.Prefix {
	if length == 255 {
		return wholeFamily[family]
	}
	if family == 0 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, a, b}), 8+int(length)%25).Masked()
	}
	v6 := [16]byte{0: 0xfd, 14: a, 15: b}
	return netip.PrefixFrom(netip.AddrFrom16(v6), 96+int(length)%33).Masked()
}

// fuzzExcept is a prefix strictly inside c, its host bits taken from a and b; invalid when c has no room.
func fuzzExcept(c netip.Prefix, a, b, length byte) netip.Prefix {
	room := c.Addr().BitLen() - c.Bits()
	if room == 0 {
		return netip.Prefix{}
	}
	bits := uint16(a)<<8 | uint16(b)
	i := 0
	addr := setHostBits(c.Addr(), c.Bits(), func() byte { i++; return byte(bits >> (i % 16)) })
	return netip.PrefixFrom(addr, c.Bits()+1+int(length)%room).Masked()
}

// edgePackets are the packets of both directions, the protocols the policy names plus two it does not, to
// each port range edge and to each address at or next to an edge of a prefix the policy or ipcache names.
func edgePackets(p *IdentityPolicy, ipc *IPCache) []Packet {
	t := newTargets(p, ipc)
	var remotes []netip.Addr
	for _, pr := range t.prefixes {
		remotes = append(remotes, edges(pr)...)
	}
	slices.SortFunc(remotes, netip.Addr.Compare)
	remotes = slices.Compact(remotes)
	protos := append(slices.Clone(t.protos), ProtoTCP, 50)
	slices.Sort(protos)
	protos = slices.Compact(protos)

	var out []Packet
	for _, dir := range []bpf.Direction{bpf.Egress, bpf.Ingress} {
		for _, proto := range protos {
			ports := append(slices.Clone(t.ports[proto]), 0, 65535)
			slices.Sort(ports)
			for _, port := range slices.Compact(ports) {
				for _, remote := range remotes {
					out = append(out, Packet{Direction: dir, Protocol: proto, Port: port, Remote: remote})
				}
			}
		}
	}
	return out
}
