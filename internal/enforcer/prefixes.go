package enforcer

import (
	"iter"
	"net/netip"
	"unique"

	"github.com/moatfw/moat/bpf"
)

// prefixTable is what the enforcer keeps of each prefix it deals with, in one entry: what the source says of it
// (an address, with its namespace) and what the datapath's ipcache holds for it. At 150,000 dual-stack pods that
// is 300,000 prefixes; two maps of them (the addresses, the ipcache as written) were the enforcer's third biggest
// heap.
type prefixTable struct {
	m prefixMap[prefixEntry]
	n int // entries written: what the ipcache holds, counted here so that no reader walks the kernel's trie
}

// prefixMap is a map keyed by prefix, in three maps: IPv4 addresses by their 4 bytes, IPv6 addresses by their 16,
// and every other prefix (ranges: a few thousand at most). One key type for all, 18 bytes (24 beside a value
// with a pointer), made Go's map take 98 bytes per entry of the enforcer's table, 84 of the book's, at 300,000
// addresses (a map's groups are a power of two, so its slots are a half to seven eighths full): each family's
// addresses keyed by their own bytes take 20 MB less of the two. The zero value is an empty map.
type prefixMap[V any] struct {
	v4    map[[4]byte]V
	v6    map[[16]byte]V // an IPv4-mapped IPv6 address too: a prefix is kept as given
	other map[netip.Prefix]V
}

// get is the value of p (masked, as every prefix here).
func (m *prefixMap[V]) get(p netip.Prefix) (V, bool) {
	var v V
	var ok bool
	a := p.Addr()
	switch {
	case !p.IsSingleIP():
		v, ok = m.other[p]
	case a.Is4():
		v, ok = m.v4[a.As4()]
	default:
		v, ok = m.v6[a.As16()]
	}
	return v, ok
}

func (m *prefixMap[V]) set(p netip.Prefix, v V) {
	a := p.Addr()
	switch {
	case !p.IsSingleIP():
		if m.other == nil {
			m.other = map[netip.Prefix]V{}
		}
		m.other[p] = v
	case a.Is4():
		if m.v4 == nil {
			m.v4 = map[[4]byte]V{}
		}
		m.v4[a.As4()] = v
	default:
		if m.v6 == nil {
			m.v6 = map[[16]byte]V{}
		}
		m.v6[a.As16()] = v
	}
}

func (m *prefixMap[V]) delete(p netip.Prefix) {
	a := p.Addr()
	switch {
	case !p.IsSingleIP():
		delete(m.other, p)
	case a.Is4():
		delete(m.v4, a.As4())
	default:
		delete(m.v6, a.As16())
	}
}

func (m *prefixMap[V]) len() int { return len(m.v4) + len(m.v6) + len(m.other) }

// all yields every prefix with its value; an entry may be deleted or replaced meanwhile.
func (m *prefixMap[V]) all() iter.Seq2[netip.Prefix, V] {
	return func(yield func(netip.Prefix, V) bool) {
		for a, v := range m.v4 {
			if !yield(netip.PrefixFrom(netip.AddrFrom4(a), 32), v) {
				return
			}
		}
		for a, v := range m.v6 {
			if !yield(netip.PrefixFrom(netip.AddrFrom16(a), 128), v) {
				return
			}
		}
		for p, v := range m.other {
			if !yield(p, v) {
				return
			}
		}
	}
}

// prefixEntry is one prefix's entry: 16 bytes (the ipcache entry kept as its two fields, not as the map's value
// with its padding).
type prefixEntry struct {
	namespace unique.Handle[string] // the address's namespace (the zero handle when it is not an address)
	identity  uint32                // the ipcache entry's identity, if written
	class     uint8                 // the address's bpf.Class
	isAddress bool                  // the source says something of the prefix
	written   bool                  // the ipcache holds an entry for it
	ipClass   uint8                 // the ipcache entry's class, if written
}

// ipcacheValue is the ipcache entry the prefix's entry says the ipcache holds.
func (en prefixEntry) ipcacheValue() bpf.IPCacheValue {
	return bpf.IPCacheValue{Class: en.ipClass, Identity: en.identity}
}

// address is what the source says of p, if anything.
func (t *prefixTable) address(p netip.Prefix) (Address, bool) {
	en, ok := t.m.get(p)
	if !ok || !en.isAddress {
		return Address{}, false
	}
	return en.address(p), true
}

// address is what the source says of p, the prefix of an entry that is an address.
func (en prefixEntry) address(p netip.Prefix) Address {
	return Address{Prefix: p, Class: bpf.Class(en.class), Namespace: en.namespace.Value()}
}

// setAddress records what the source says of a.Prefix.
func (t *prefixTable) setAddress(a Address) {
	p := a.Prefix.Masked()
	en, _ := t.m.get(p)
	en.namespace, en.class, en.isAddress = unique.Make(a.Namespace), uint8(a.Class), true
	t.m.set(p, en)
}

// dropAddress records that the source says nothing of p any more.
func (t *prefixTable) dropAddress(p netip.Prefix) {
	en, ok := t.m.get(p)
	switch {
	case !ok:
	case !en.written:
		t.m.delete(p)
	default:
		en.namespace, en.class, en.isAddress = unique.Handle[string]{}, 0, false
		t.m.set(p, en)
	}
}

// clearAddresses forgets every address (the ipcache's entries stay).
func (t *prefixTable) clearAddresses() {
	for p, en := range t.m.all() {
		if en.isAddress {
			t.dropAddress(p)
		}
	}
}

// addresses yields every address the source gave.
func (t *prefixTable) addresses() iter.Seq[Address] {
	return func(yield func(Address) bool) {
		for p, en := range t.m.all() {
			if en.isAddress && !yield(en.address(p)) {
				return
			}
		}
	}
}

// ipcache is what the datapath's ipcache holds for p, as this enforcer wrote or found it.
func (t *prefixTable) ipcache(p netip.Prefix) (bpf.IPCacheValue, bool) {
	en, ok := t.m.get(p)
	return en.ipcacheValue(), ok && en.written
}

// setIPCache records that the ipcache holds v for p.
func (t *prefixTable) setIPCache(p netip.Prefix, v bpf.IPCacheValue) {
	en, _ := t.m.get(p)
	if !en.written {
		t.n++
	}
	en.ipClass, en.identity, en.written = v.Class, v.Identity, true
	t.m.set(p, en)
}

// dropIPCache records that the ipcache holds nothing for p.
func (t *prefixTable) dropIPCache(p netip.Prefix) {
	en, ok := t.m.get(p)
	if ok && en.written {
		t.n--
	}
	switch {
	case !ok:
	case !en.isAddress:
		t.m.delete(p)
	default:
		en.ipClass, en.identity, en.written = 0, 0, false
		t.m.set(p, en)
	}
}

// writtenCount is how many entries the ipcache holds.
func (t *prefixTable) writtenCount() int { return t.n }

// written yields every entry the ipcache holds (one may be dropped meanwhile).
func (t *prefixTable) written() iter.Seq2[netip.Prefix, bpf.IPCacheValue] {
	return func(yield func(netip.Prefix, bpf.IPCacheValue) bool) {
		for p, en := range t.m.all() {
			if en.written && !yield(p, en.ipcacheValue()) {
				return
			}
		}
	}
}
