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
type prefixTable map[prefixKey]prefixEntry

// prefixKey is a prefix as a map key: 18 bytes, not netip.Prefix's 32 (its address keeps a pointer for an IPv6
// zone, which no prefix here has). Keys are a good part of the per-prefix tables' size at 300,000 prefixes.
type prefixKey struct {
	addr [16]byte
	bits uint8
	v4   bool
}

func keyOf(p netip.Prefix) prefixKey {
	a := p.Addr()
	return prefixKey{addr: a.As16(), bits: uint8(p.Bits()), v4: a.Is4()}
}

func (k prefixKey) prefix() netip.Prefix {
	a := netip.AddrFrom16(k.addr)
	if k.v4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(k.bits))
}

// prefixEntry is one prefix's entry: 24 bytes.
type prefixEntry struct {
	namespace unique.Handle[string] // the address's namespace (the zero handle when it is not an address)
	class     uint8                 // the address's bpf.Class
	isAddress bool                  // the source says something of the prefix
	written   bool                  // the ipcache holds entry for it
	entry     bpf.IPCacheValue
}

// address is what the source says of p, if anything.
func (t prefixTable) address(p netip.Prefix) (Address, bool) {
	en, ok := t[keyOf(p)]
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
func (t prefixTable) setAddress(a Address) {
	k := keyOf(a.Prefix.Masked())
	en := t[k]
	en.namespace, en.class, en.isAddress = unique.Make(a.Namespace), uint8(a.Class), true
	t[k] = en
}

// dropAddress records that the source says nothing of p any more.
func (t prefixTable) dropAddress(p netip.Prefix) { t.dropAddressAt(keyOf(p)) }

func (t prefixTable) dropAddressAt(k prefixKey) {
	en, ok := t[k]
	switch {
	case !ok:
	case !en.written:
		delete(t, k)
	default:
		en.namespace, en.class, en.isAddress = unique.Handle[string]{}, 0, false
		t[k] = en
	}
}

// clearAddresses forgets every address (the ipcache's entries stay).
func (t prefixTable) clearAddresses() {
	for k, en := range t {
		if en.isAddress {
			t.dropAddressAt(k)
		}
	}
}

// addresses yields every address the source gave.
func (t prefixTable) addresses() iter.Seq[Address] {
	return func(yield func(Address) bool) {
		for k, en := range t {
			if en.isAddress && !yield(en.address(k.prefix())) {
				return
			}
		}
	}
}

// ipcache is what the datapath's ipcache holds for p, as this enforcer wrote or found it.
func (t prefixTable) ipcache(p netip.Prefix) (bpf.IPCacheValue, bool) {
	en, ok := t[keyOf(p)]
	return en.entry, ok && en.written
}

// setIPCache records that the ipcache holds v for p.
func (t prefixTable) setIPCache(p netip.Prefix, v bpf.IPCacheValue) {
	k := keyOf(p)
	en := t[k]
	en.entry, en.written = v, true
	t[k] = en
}

// dropIPCache records that the ipcache holds nothing for p.
func (t prefixTable) dropIPCache(p netip.Prefix) {
	k := keyOf(p)
	en, ok := t[k]
	switch {
	case !ok:
	case !en.isAddress:
		delete(t, k)
	default:
		en.entry, en.written = bpf.IPCacheValue{}, false
		t[k] = en
	}
}

// written yields every entry the ipcache holds (one may be dropped meanwhile).
func (t prefixTable) written() iter.Seq2[netip.Prefix, bpf.IPCacheValue] {
	return func(yield func(netip.Prefix, bpf.IPCacheValue) bool) {
		for k, en := range t {
			if en.written && !yield(k.prefix(), en.entry) {
				return
			}
		}
	}
}
