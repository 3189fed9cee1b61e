package bpf

// What only the datapath's own tests read: the tables and tries behind the Datapath, and their sizes.

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// LoadSpec is the compiled datapath's collection spec, for tests of its BTF.
var LoadSpec = loadMoat

// PolicyTrieCapacity is how many entries one identity's policy trie holds.
func (dp *Datapath) PolicyTrieCapacity() int {
	if dp.inner == nil {
		return 0
	}
	return int(dp.inner.MaxEntries)
}

func (dp *Datapath) openPolicy(identity uint32) (*ebpf.Map, error) {
	id, err := dp.PolicyMapID(identity)
	if err != nil {
		return nil, err
	}
	inner, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("open policy map of identity %d: %w", identity, err)
	}
	return inner, nil
}

// PolicyEntries reads back an identity's policy trie.
func (dp *Datapath) PolicyEntries(identity uint32) (map[PolicyKey]PolicyValue, error) {
	inner, err := dp.openPolicy(identity)
	if err != nil {
		return nil, err
	}
	defer inner.Close()
	return readAll[PolicyKey, PolicyValue](inner, fmt.Sprintf("policy of identity %d", identity))
}

// PolicyBytes is the kernel's accounting of an identity's policy trie (its memlock), for memory reports.
func (dp *Datapath) PolicyBytes(identity uint32) (uint64, error) {
	inner, err := dp.openPolicy(identity)
	if err != nil {
		return 0, err
	}
	defer inner.Close()
	info, err := inner.Info()
	if err != nil {
		return 0, fmt.Errorf("policy map info of identity %d: %w", identity, err)
	}
	bytes, ok := info.Memlock()
	if !ok {
		return 0, fmt.Errorf("policy map of identity %d: the kernel does not report its memory", identity)
	}
	return bytes, nil
}

// ConntrackMap is the conntrack table .
func (dp *Datapath) ConntrackMap() *ebpf.Map { return dp.maps.Conntrack }

// FragmentsMap is the table of first fragment verdicts .
func (dp *Datapath) FragmentsMap() *ebpf.Map { return dp.maps.Fragments }

// EntryBytes is each map's key plus value size in bytes: the payload one entry holds (the kernel adds its own
// per-element bookkeeping on top).
func (dp *Datapath) EntryBytes() map[string]int {
	out := map[string]int{}
	for name, m := range dp.allMapsByName() {
		if m != nil {
			out[name] = int(m.KeySize() + m.ValueSize())
		}
	}
	return out
}
