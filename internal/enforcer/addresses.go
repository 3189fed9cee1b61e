package enforcer

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/moatfw/moat/bpf"
)

// addressBook keeps what the cluster says of addresses, object by object (a pod, a Service, a Node, a
// ServiceCIDR), and which prefixes changed since they were last taken: an event costs what its object touches,
// never the cluster. Of several claims on one prefix the strongest class wins (a pod or a Service over a node
// over the cluster's ranges) and, among pods, the newest (one pod ending while another starts with its address).
type addressBook struct {
	mu sync.Mutex
	// prefix -> each owner's claim: a slice, since a prefix has one claim nearly always (a map per prefix was the
	// enforcer's second biggest heap at 150,000 pods)
	claims map[netip.Prefix][]ownedClaim
	owned  map[string][]netip.Prefix // owner -> the prefixes it claims
	dirty  map[netip.Prefix]struct{}
}

// ownedClaim is one owner's claim on a prefix.
type ownedClaim struct {
	owner string
	claim
}

// claim is what one object says of a prefix.
type claim struct {
	class     bpf.Class
	namespace string
	created   time.Time
}

func newAddressBook() *addressBook {
	return &addressBook{claims: map[netip.Prefix][]ownedClaim{}, owned: map[string][]netip.Prefix{},
		dirty: map[netip.Prefix]struct{}{}}
}

// claimOf is owner's claim on p, if it has one, with b.mu held.
func (b *addressBook) claimOf(p netip.Prefix, owner string) (claim, bool) {
	for _, c := range b.claims[p] {
		if c.owner == owner {
			return c.claim, true
		}
	}
	return claim{}, false
}

// drop takes owner's claim on p away, with b.mu held.
func (b *addressBook) drop(p netip.Prefix, owner string) {
	cs := slices.DeleteFunc(b.claims[p], func(c ownedClaim) bool { return c.owner == owner })
	if len(cs) == 0 {
		delete(b.claims, p)
	} else {
		b.claims[p] = cs
	}
}

// set makes claims what owner says now (none: it says nothing any more), and reports whether any prefix's
// winner may have changed.
func (b *addressBook) set(owner string, claims map[netip.Prefix]claim) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	changed := false
	old := b.owned[owner]
	for _, p := range old {
		if c, ok := claims[p]; ok {
			if have, ok := b.claimOf(p, owner); ok && have == c {
				continue
			}
		}
		b.drop(p, owner)
		b.dirty[p], changed = struct{}{}, true
	}
	for p, c := range claims {
		if have, ok := b.claimOf(p, owner); ok {
			if have == c {
				continue
			}
			b.drop(p, owner)
		}
		b.claims[p] = append(b.claims[p], ownedClaim{owner: owner, claim: c})
		b.dirty[p], changed = struct{}{}, true
	}
	if len(claims) == 0 {
		delete(b.owned, owner)
	} else {
		b.owned[owner] = slices.Collect(maps.Keys(claims))
	}
	return changed
}

// strength orders the classes of the claims on one prefix.
func strength(c bpf.Class) int {
	switch c {
	case bpf.ClassCluster:
		return 1
	case bpf.ClassNode:
		return 2
	case bpf.ClassService:
		return 3
	case bpf.ClassPod:
		return 4
	}
	return 0
}

// winner is what the book says of p, with b.mu held.
func (b *addressBook) winner(p netip.Prefix) (Address, bool) {
	var best claim
	bestOwner, found := "", false
	for _, oc := range b.claims[p] {
		owner, c := oc.owner, oc.claim
		switch {
		case !found, strength(c.class) > strength(best.class),
			strength(c.class) == strength(best.class) && c.created.After(best.created),
			strength(c.class) == strength(best.class) && c.created.Equal(best.created) && owner > bestOwner:
			best, bestOwner, found = c, owner, true
		}
	}
	return Address{Prefix: p, Class: best.class, Namespace: best.namespace}, found
}

// all is every prefix's winner; it takes the changes too (the caller applies the whole state).
func (b *addressBook) all() []Address {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.dirty)
	out := make([]Address, 0, len(b.claims))
	for p := range b.claims {
		if a, ok := b.winner(p); ok {
			out = append(out, a)
		}
	}
	return out
}

// changes takes the prefixes whose winner may have changed since the last call (or all): each with its winner
// now, nil when nothing claims it any more.
func (b *addressBook) changes() map[netip.Prefix]*Address {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[netip.Prefix]*Address, len(b.dirty))
	for p := range b.dirty {
		if a, ok := b.winner(p); ok {
			out[p] = &a
		} else {
			out[p] = nil
		}
	}
	clear(b.dirty)
	return out
}
