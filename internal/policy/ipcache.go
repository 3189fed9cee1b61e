package policy

import (
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
)

// IPCacheEntry classifies every remote address in Prefix: what it is (a pod, a Service, a node, the metadata
// API, the rest of the cluster) and, for pods and Services, the identity of their namespace.
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Class    bpf.Class
	Identity uint32
}

// IPCache is the Go model of the datapath's ipcache map: a longest-prefix match from remote address to class
// and identity, where an address nothing covers is the world.
type IPCache struct {
	byPrefix map[netip.Prefix]IPCacheEntry
	lens4    []int // distinct prefix lengths of the IPv4 entries, longest first
	lens6    []int
}

// NewIPCache builds the ipcache of entries. Invalid prefixes are skipped; of two entries for the same prefix
// the later wins, as a later map update would.
func NewIPCache(entries []IPCacheEntry) *IPCache {
	c := &IPCache{byPrefix: make(map[netip.Prefix]IPCacheEntry, len(entries))}
	for _, e := range entries {
		if !e.Prefix.IsValid() {
			continue
		}
		e.Prefix = e.Prefix.Masked()
		c.byPrefix[e.Prefix] = e
	}
	for p := range c.byPrefix {
		if p.Addr().Is4() {
			c.lens4 = append(c.lens4, p.Bits())
		} else {
			c.lens6 = append(c.lens6, p.Bits())
		}
	}
	for _, lens := range []*[]int{&c.lens4, &c.lens6} {
		slices.Sort(*lens)
		*lens = slices.Compact(*lens)
		slices.Reverse(*lens)
	}
	return c
}

// Lookup classifies a remote address: the entry with the longest prefix of the address's family that
// contains it, else the world with no identity. A nil IPCache is empty.
func (c *IPCache) Lookup(a netip.Addr) (bpf.Class, uint32) {
	if c == nil || !a.IsValid() {
		return bpf.ClassWorld, 0
	}
	a = a.WithZone("")
	lens := c.lens6
	if a.Is4() {
		lens = c.lens4
	}
	for _, bits := range lens {
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if e, ok := c.byPrefix[p]; ok {
			return e.Class, e.Identity
		}
	}
	return bpf.ClassWorld, 0
}

// Entries lists the ipcache's entries with masked prefixes, IPv4 first, by address and then prefix length.
func (c *IPCache) Entries() []IPCacheEntry {
	if c == nil {
		return nil
	}
	out := make([]IPCacheEntry, 0, len(c.byPrefix))
	for _, e := range c.byPrefix {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b IPCacheEntry) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

// comparePrefix orders prefixes IPv4 first, then by address, then shorter first: for prefixes that are
// nested or disjoint, this lists every prefix before the prefixes inside it (a depth-first walk).
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
