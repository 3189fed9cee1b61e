package enforcer

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policy"
)

// nameStore is one pair of the datapath's name maps: identity -> set, and (set, base name) -> V.
type nameStore[V comparable] struct {
	point func(identity, set uint32) error
	put   func(set uint32, base string, v V) error
	del   func(set uint32, base string) error
	// what a datapath kept from an earlier enforcer: identity -> set, and the sets its names are in
	pointed func() (map[uint32]uint32, error)
	inUse   func() (map[uint32]int, error)
	delSet  func(set uint32) error
}

// nameSet is one set of names as written: identities whose names are the same share it.
type nameSet[V comparable] struct {
	id    uint32
	key   string // the names, encoded: the set's identity among sets
	names map[string]V
	refs  int
}

// nameSets keeps a pair of name maps equal to what the identities' policies say, writing only what changed: an
// identity whose names did not change costs nothing, a set that one identity alone uses is changed in place
// (new names written before old ones go, so no name that stays denied is ever missing), and a set that others
// share is left to them while a new one is written.
type nameSets[V comparable] struct {
	store nameStore[V]
	byKey map[string]*nameSet[V]
	byID  map[uint32]*nameSet[V]
	of    map[uint32]*nameSet[V] // identity -> its set
	// until the first sync: nothing known of the maps. The sets found there then are stale (written by an
	// earlier enforcer, their contents unknown): their identities are pointed at sets written anew, and they go.
	known   bool
	stale   map[uint32]bool
	pointed map[uint32]uint32 // identities the maps point at a set, as found
}

func newNameSets[V comparable](store nameStore[V]) *nameSets[V] {
	return &nameSets[V]{store: store}
}

// sync makes the maps hold want (identity -> base name -> value; an identity absent or without names points at
// no set). After a failure it starts over at the next call, as after a restart: nothing it wrote is trusted.
func (s *nameSets[V]) sync(want map[uint32]map[string]V) (err error) {
	defer func() {
		if err != nil {
			s.known = false
		}
	}()
	if !s.known {
		if err := s.adopt(); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if err := s.give(id, want[id]); err != nil {
			return err
		}
	}
	for id := range s.of {
		if _, ok := want[id]; !ok {
			if err := s.give(id, nil); err != nil {
				return err
			}
		}
	}
	for id := range s.pointed {
		if _, ok := want[id]; !ok {
			if err := s.store.point(id, 0); err != nil {
				return err
			}
		}
		delete(s.pointed, id)
	}
	for set := range s.stale {
		if err := s.store.delSet(set); err != nil {
			return err
		}
		delete(s.stale, set)
	}
	return nil
}

// adopt forgets what it wrote and takes the maps' sets as stale.
func (s *nameSets[V]) adopt() error {
	pointed, err := s.store.pointed()
	if err != nil {
		return err
	}
	inUse, err := s.store.inUse()
	if err != nil {
		return err
	}
	s.byKey, s.byID, s.of = map[string]*nameSet[V]{}, map[uint32]*nameSet[V]{}, map[uint32]*nameSet[V]{}
	s.stale, s.pointed = map[uint32]bool{}, pointed
	for set := range inUse {
		s.stale[set] = true
	}
	for _, set := range pointed {
		s.stale[set] = true
	}
	s.known = true
	return nil
}

// give points an identity at the set of names (none: no set).
func (s *nameSets[V]) give(id uint32, names map[string]V) error {
	key := encodeNames(names)
	cur := s.of[id]
	if cur != nil && cur.key == key {
		return nil
	}
	if cur == nil && len(names) == 0 {
		if _, found := s.pointed[id]; !found {
			return nil
		}
	}
	var target *nameSet[V]
	if len(names) > 0 {
		target = s.byKey[key]
		switch {
		case target != nil:
		case cur != nil && cur.refs == 1:
			if err := s.rewrite(cur, names, key); err != nil {
				return err
			}
			return nil
		default:
			target = &nameSet[V]{id: s.freeID(), key: key, names: names}
			for base, v := range names {
				if err := s.store.put(target.id, base, v); err != nil {
					return err
				}
			}
			s.byKey[key], s.byID[target.id] = target, target
		}
	}
	setID := uint32(0)
	if target != nil {
		setID = target.id
	}
	if err := s.store.point(id, setID); err != nil {
		return err
	}
	delete(s.pointed, id)
	if target != nil {
		target.refs++
		s.of[id] = target
	} else {
		delete(s.of, id)
	}
	if cur != nil {
		cur.refs--
		if cur.refs == 0 {
			delete(s.byKey, cur.key)
			delete(s.byID, cur.id)
			for base := range cur.names {
				if err := s.store.del(cur.id, base); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// rewrite changes the names of a set in place: new and changed names first, then the ones that go.
func (s *nameSets[V]) rewrite(set *nameSet[V], names map[string]V, key string) error {
	for base, v := range names {
		if old, ok := set.names[base]; !ok || old != v {
			if err := s.store.put(set.id, base, v); err != nil {
				return err
			}
		}
	}
	for base := range set.names {
		if _, ok := names[base]; !ok {
			if err := s.store.del(set.id, base); err != nil {
				return err
			}
		}
	}
	delete(s.byKey, set.key)
	set.key, set.names = key, names
	s.byKey[key] = set
	return nil
}

// freeID is the smallest set id neither in use nor stale.
func (s *nameSets[V]) freeID() uint32 {
	id := uint32(1)
	for s.byID[id] != nil || s.stale[id] {
		id++
	}
	return id
}

// encodeNames is a canonical text of a set of names and their values.
func encodeNames[V comparable](names map[string]V) string {
	var b strings.Builder
	for _, base := range slices.Sorted(maps.Keys(names)) {
		fmt.Fprintf(&b, "%s=%v;", base, names[base])
	}
	return b.String()
}

// dnsDenyNames is what dns_names holds for an identity's dnsDeny rules: per base name and form, the first
// Enforce rule and the first Audit rule that deny it.
func dnsDenyNames(p *policy.IdentityPolicy) map[string]bpf.DNSValue {
	if len(p.DNSDeny) == 0 {
		return nil
	}
	out := map[string]bpf.DNSValue{}
	for _, r := range p.DNSDeny {
		for _, pattern := range r.Patterns {
			n, err := v1alpha1.ParseNamePattern(pattern)
			if err != nil {
				continue // resolve normalized it
			}
			v := out[n.Base]
			ids := &v.Rule
			if r.Audit {
				ids = &v.AuditRule
			}
			if ids[n.Form] == 0 {
				ids[n.Form] = r.ID
			}
			out[n.Base] = v
		}
	}
	return out
}

// dnsDenyStore is the datapath's dns_sets and dns_names.
func dnsDenyStore(dp *bpf.Datapath) nameStore[bpf.DNSValue] {
	return nameStore[bpf.DNSValue]{
		point:   dp.SetDNSSet,
		put:     dp.PutDNSName,
		del:     dp.DeleteDNSName,
		pointed: dp.DNSSets,
		inUse:   dp.DNSNameSets,
		delSet:  dp.DeleteDNSNameSet,
	}
}

// syncNames writes the name sets of the identities' policies: the names each may not resolve. Queries are read
// by the DNS stage before conntrack, so a change holds for the next query without a generation.
func (e *Enforcer) syncNames(policies map[uint32]*policy.IdentityPolicy) error {
	deny := map[uint32]map[string]bpf.DNSValue{}
	fqdn := map[uint32]map[string]bpf.FQDNValue{}
	patterns := map[uint32][]string{}
	for id, p := range policies {
		if names := dnsDenyNames(p); names != nil {
			deny[id] = names
		}
		if names := fqdnNames(p); names != nil {
			fqdn[id] = names
			patterns[id] = p.SlotPatterns()
		}
	}
	if err := e.dnsDeny.sync(deny); err != nil {
		return fmt.Errorf("write the names namespaces may not resolve: %w", err)
	}
	// the patterns before the maps point at them: an answer handed to the learner meanwhile finds them
	e.fqdnPatterns.Store(&patterns)
	if err := e.fqdn.sync(fqdn); err != nil {
		return fmt.Errorf("write the names of the fqdn peers: %w", err)
	}
	return nil
}

// FQDNPatterns are an identity's fqdn patterns indexed by slot ("" for a slot without one), as last applied.
func (e *Enforcer) FQDNPatterns(identity uint32) []string {
	if m := e.fqdnPatterns.Load(); m != nil {
		return (*m)[identity]
	}
	return nil
}
