package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
)

// Fingerprint identifies what a policy compiles to: everything but the identity it is for, so that identities
// whose resolved rules are the same get the same fingerprint (and can share one compiled trie), and a policy
// whose fingerprint did not change need not be compiled again.
func Fingerprint(p *IdentityPolicy) [sha256.Size]byte {
	b := make([]byte, 0, 64+32*len(p.Rules))
	flag := func(v bool) byte {
		if v {
			return 1
		}
		return 0
	}
	b = append(b, flag(p.MetadataAllowed), flag(p.Audit), byte(p.DefaultEgress), byte(p.DefaultIngress))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Rules)))
	for i := range p.Rules {
		r := &p.Rules[i]
		b = binary.LittleEndian.AppendUint32(b, r.ID)
		b = append(b, byte(r.Direction), byte(r.Action), flag(r.Audit), flag(r.AllPeers), flag(r.AllPorts))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Peers)))
		for _, peer := range r.Peers {
			b = appendPrefix(b, peer.CIDR)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(peer.Except)))
			for _, e := range peer.Except {
				b = appendPrefix(b, e)
			}
			b = binary.LittleEndian.AppendUint32(b, uint32(len(peer.Identities)))
			for _, id := range peer.Identities {
				b = binary.LittleEndian.AppendUint32(b, id)
			}
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Ports)))
		for _, pr := range r.Ports {
			b = append(b, pr.Protocol)
			b = binary.LittleEndian.AppendUint16(b, pr.First)
			b = binary.LittleEndian.AppendUint16(b, pr.Last)
		}
	}
	return sha256.Sum256(b)
}

// appendPrefix encodes a prefix unambiguously: the length of its address (0 for none), its bits, its address.
func appendPrefix(b []byte, p netip.Prefix) []byte {
	if !p.IsValid() {
		return append(b, 0)
	}
	a := p.Addr().AsSlice()
	b = append(b, byte(len(a)), byte(p.Bits()))
	return append(b, a...)
}
