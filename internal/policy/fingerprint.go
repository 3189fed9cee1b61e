package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
)

// Fingerprint identifies what a policy compiles to: everything but the identity it is for, so that identities
// whose resolved rules are the same get the same fingerprint (and can share one compiled trie), and a policy
// whose fingerprint did not change need not be compiled again.
func Fingerprint(p *IdentityPolicy) [sha256.Size]byte { return NewFingerprinter().Of(p) }

// Fingerprinter fingerprints many policies of one resolve: a list of peer identities that several rules share
// (a namespace selector's, shared by every namespace a policy selects) is hashed once, and its digest stands for
// it. Use one per resolve: the lists must not change while it lives.
type Fingerprinter struct {
	buf []byte
	ids map[idList][sha256.Size]byte // a list, by where it is -> its digest
}

type idList struct {
	first *uint32
	n     int
}

// NewFingerprinter makes a Fingerprinter.
func NewFingerprinter() *Fingerprinter {
	return &Fingerprinter{ids: map[idList][sha256.Size]byte{}}
}

// Of is p's fingerprint.
func (f *Fingerprinter) Of(p *IdentityPolicy) [sha256.Size]byte {
	b := f.buf[:0]
	flag := func(v bool) byte {
		if v {
			return 1
		}
		return 0
	}
	b = append(b, flag(p.MetadataAllowed), flag(p.Audit), byte(p.DefaultEgress), byte(p.DefaultIngress))
	if p.FQDNSlots != nil { // the slots are in the compiled entries
		for _, name := range slices.Sorted(maps.Keys(p.FQDNSlots)) {
			b = append(b, name...)
			b = append(b, 0, byte(p.FQDNSlots[name]))
		}
	}
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
			b = binary.LittleEndian.AppendUint32(b, uint32(len(peer.FQDN)))
			b = append(b, peer.FQDN...)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(peer.Identities)))
			if len(peer.Identities) > 0 {
				d := f.identities(peer.Identities)
				b = append(b, d[:]...)
			}
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Ports)))
		for _, pr := range r.Ports {
			b = append(b, pr.Protocol)
			b = binary.LittleEndian.AppendUint16(b, pr.First)
			b = binary.LittleEndian.AppendUint16(b, pr.Last)
		}
	}
	f.buf = b
	return sha256.Sum256(b)
}

// identities is the digest of a list of identities, worked out once per list.
func (f *Fingerprinter) identities(ids []uint32) [sha256.Size]byte {
	key := idList{&ids[0], len(ids)}
	if d, ok := f.ids[key]; ok {
		return d
	}
	b := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	d := sha256.Sum256(b)
	f.ids[key] = d
	return d
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
