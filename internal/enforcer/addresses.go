package enforcer

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"unique"

	"github.com/moatfw/moat/bpf"
)

// addressBook keeps what the cluster says of addresses, object by object (a pod, a Service, a Node, a
// ServiceCIDR), and which prefixes changed since they were last taken: an event costs what its object touches,
// never the cluster. Of several claims on one prefix the strongest class wins (a pod or a Service over a node
// over the cluster's ranges) and, among pods, the newest (one pod ending while another starts with its address).
//
// It is the enforcer's biggest table at scale (two prefixes for each of 150,000 dual-stack pods), so it keeps one
// entry per prefix and nothing per object: an object's claims are given again when it changes or goes (set's
// was, from the object the informer last handed on), and a claim names its owner with the object's own strings.
type addressBook struct {
	mu     sync.Mutex
	claims prefixMap[claims]
	dirty  prefixMap[struct{}]
}

// ownerKind is the kind of object a claim comes from.
type ownerKind uint8

const (
	ownerPod ownerKind = iota + 1
	ownerService
	ownerNode
	ownerSelf // this node's own Node, watched apart from the feed
	ownerServiceCIDR
)

// owner is the object a claim comes from; its namespace is the claim's (noNamespace for nodes and ranges), kept
// once for all the claims that name it.
type owner struct {
	kind      ownerKind
	namespace unique.Handle[string]
	name      string
}

// noNamespace is the namespace of a claim that has none.
var noNamespace = unique.Make("")

// claim is what one object says of a prefix.
type claim struct {
	owner
	class   uint8 // a bpf.Class
	created int64 // the object's creation, in Unix nanoseconds
}

// prefixClaim is a claim with the prefix it is on: what an object says, as the claims functions list it.
type prefixClaim struct {
	prefix netip.Prefix
	claim
}

// claims are the claims on one prefix: nearly always one (a slice or a map per prefix was the enforcer's biggest
// heap at 150,000 pods). A claim is kept once for all the prefixes an object says the same of (a dual-stack
// pod's two addresses).
type claims struct {
	first *claim
	more  *[]*claim
}

func newAddressBook() *addressBook {
	return &addressBook{}
}

// add puts c on p (instead of its owner's claim there, if any), with b.mu held; it reports whether that changed
// anything.
func (b *addressBook) add(p netip.Prefix, c *claim) bool {
	cs, ok := b.claims.get(p)
	switch {
	case !ok:
		b.claims.set(p, claims{first: c})
		return true
	case cs.first.owner == c.owner:
		if *cs.first == *c {
			return false
		}
		cs.first = c
	case cs.more == nil:
		cs.more = &[]*claim{c}
	default:
		more := *cs.more
		i := slices.IndexFunc(more, func(m *claim) bool { return m.owner == c.owner })
		switch {
		case i >= 0 && *more[i] == *c:
			return false
		case i >= 0:
			more[i] = c
		default:
			*cs.more = append(more, c)
		}
	}
	b.claims.set(p, cs)
	return true
}

// drop takes o's claim on p away, with b.mu held; it reports whether there was one.
func (b *addressBook) drop(p netip.Prefix, o owner) bool {
	cs, ok := b.claims.get(p)
	switch {
	case !ok:
		return false
	case cs.first.owner == o && cs.more == nil:
		b.claims.delete(p)
		return true
	case cs.first.owner == o:
		cs.first = (*cs.more)[0]
		*cs.more = slices.Delete(*cs.more, 0, 1)
	case cs.more == nil:
		return false
	default:
		i := slices.IndexFunc(*cs.more, func(m *claim) bool { return m.owner == o })
		if i < 0 {
			return false
		}
		*cs.more = slices.Delete(*cs.more, i, i+1)
	}
	if len(*cs.more) == 0 {
		cs.more = nil
	}
	b.claims.set(p, cs)
	return true
}

// set replaces what an object said (was: its claims as last given, none for a new object) with what it says now
// (none: it is gone), and reports whether any prefix's winner may have changed.
func (b *addressBook) set(was, now []prefixClaim) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	changed := false
	for _, w := range was {
		if slices.ContainsFunc(now, func(n prefixClaim) bool { return n.prefix == w.prefix && n.owner == w.owner }) {
			continue // replaced below, or the same
		}
		if b.drop(w.prefix, w.owner) {
			b.dirty.set(w.prefix, struct{}{})
			changed = true
		}
	}
	var kept []*claim // one of each claim, whatever the prefixes it is on
	for _, n := range now {
		i := slices.IndexFunc(kept, func(c *claim) bool { return *c == n.claim })
		if i < 0 {
			c := n.claim
			kept, i = append(kept, &c), len(kept)
		}
		if b.add(n.prefix, kept[i]) {
			b.dirty.set(n.prefix, struct{}{})
			changed = true
		}
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

// beats: does claim c win over best? The stronger class, then the newer object, then (for a tie) the owner
// that sorts last.
func (c claim) beats(best claim) bool {
	if s, t := strength(bpf.Class(c.class)), strength(bpf.Class(best.class)); s != t {
		return s > t
	}
	if c.created != best.created {
		return c.created > best.created
	}
	return cmp.Or(cmp.Compare(c.kind, best.kind), cmp.Compare(c.namespace.Value(), best.namespace.Value()),
		cmp.Compare(c.name, best.name)) > 0
}

// winner is what the book says of p, with b.mu held.
func (b *addressBook) winner(p netip.Prefix) (Address, bool) {
	cs, ok := b.claims.get(p)
	if !ok {
		return Address{}, false
	}
	best := cs.first
	if cs.more != nil {
		for _, c := range *cs.more {
			if c.beats(*best) {
				best = c
			}
		}
	}
	return Address{Prefix: p, Class: bpf.Class(best.class), Namespace: best.namespace.Value()}, true
}

// each yields every prefix's winner, with b.mu held.
func (b *addressBook) each(yield func(Address) bool) {
	for p := range b.claims.all() {
		if a, ok := b.winner(p); ok && !yield(a) {
			return
		}
	}
}

// takeAll yields every prefix's winner, and takes the changes too: for a caller that applies them all. It holds
// the book meanwhile, so that no change is taken that it does not yield.
func (b *addressBook) takeAll(yield func(Address) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dirty = prefixMap[struct{}]{} // new maps: a cleared one keeps its size
	b.each(yield)
}

// maxChanges is how many changed prefixes changes hands on at most (or a fraction of the book, if more): past
// that, applying them all is cheaper than a map of changes the size of the book (the start, when every address
// is new).
const maxChanges = 4096

// changes takes the prefixes whose winner may have changed since the last call (or takeAll): each with its
// winner now, nil when nothing claims it any more. When there are too many (more than maxChanges and an eighth
// of the book), it takes none and says so: takeAll is the way to them.
func (b *addressBook) changes() (map[netip.Prefix]*Address, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dirty.len() > max(maxChanges, b.claims.len()/8) {
		return nil, false
	}
	out := make(map[netip.Prefix]*Address, b.dirty.len())
	for p := range b.dirty.all() {
		if a, ok := b.winner(p); ok {
			out[p] = &a
		} else {
			out[p] = nil
		}
	}
	b.dirty = prefixMap[struct{}]{}
	return out, true
}
