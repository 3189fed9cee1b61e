package policy

import (
	"slices"
	"sort"

	"github.com/moatfw/moat/bpf"
)

// The port space of a direction is the 24 bits the datapath looks up after the direction in a PORT key: the
// protocol (8 bits), then the port (16 bits): the destination port for egress, the pod's port for ingress,
// the ICMP type for ICMP and ICMPv6, 0 for protocols without ports.
const (
	portSpaceBits = 24
	portSpaceEnd  = 1 << portSpaceBits
)

// segment is a stretch of a direction's port space, from start to the next segment's start, where the same
// rules apply: set is a rule set id (compiler.sets) before classes are resolved, a class id after.
type segment struct {
	start uint32
	set   int
}

// portSegments cuts the direction's port space at every boundary of a port range, and gives each piece
// its rule set: the rules with AllPorts, and the rules with a port range covering the piece. Neighbouring
// pieces with the same set are one segment.
func (c *compiler) portSegments(dir bpf.Direction) []segment {
	type event struct {
		at    uint32
		rule  int
		delta int
	}
	var all []int
	var events []event
	for i := range c.p.Rules {
		r := &c.p.Rules[i]
		if r.Direction != dir {
			continue
		}
		if r.AllPorts {
			all = append(all, i)
			continue
		}
		for _, pr := range r.Ports {
			base := uint32(pr.Protocol) << 16
			events = append(events,
				event{at: base | uint32(pr.First), rule: i, delta: 1},
				event{at: base + uint32(pr.Last) + 1, rule: i, delta: -1})
		}
	}
	slices.SortFunc(events, func(a, b event) int { return int(a.at) - int(b.at) })

	count := make(map[int]int) // rule -> how many of its ranges cover the current point
	var active, set []int      // rules with a range covering the current point, ascending; the current rule set
	var segs []segment
	pos := uint32(0)
	for i := 0; ; {
		next := uint32(portSpaceEnd)
		if i < len(events) {
			next = events[i].at
		}
		if next > pos {
			set = mergeSorted(set[:0], all, active)
			id := c.sets.intern(set)
			if len(segs) == 0 || segs[len(segs)-1].set != id {
				segs = append(segs, segment{start: pos, set: id})
			}
			pos = next
		}
		if i == len(events) {
			return segs
		}
		for ; i < len(events) && events[i].at == next; i++ {
			e := events[i]
			before := count[e.rule]
			count[e.rule] = before + e.delta
			switch {
			case before == 0:
				at, _ := slices.BinarySearch(active, e.rule)
				active = slices.Insert(active, at, e.rule)
			case before+e.delta == 0:
				at, _ := slices.BinarySearch(active, e.rule)
				active = slices.Delete(active, at, at+1)
			}
		}
	}
}

// mergeSorted appends the union of two ascending lists without common elements to dst.
func mergeSorted(dst, a, b []int) []int {
	for len(a) > 0 && len(b) > 0 {
		if a[0] < b[0] {
			dst, a = append(dst, a[0]), a[1:]
		} else {
			dst, b = append(dst, b[0]), b[1:]
		}
	}
	dst = append(dst, a...)
	return append(dst, b...)
}

// portEntries encodes a direction's port classes as PORT entries: the fewest prefixes of the port space such
// that the most specific prefix covering every point names the point's class (a point no entry covers has
// class 0, as has an entry with class 0). The encoding is ORTC (Draves et al., "Constructing optimal IP
// routing tables"): a binary trie over the space down to the blocks of one class, candidate classes computed
// bottom up (the children's common candidates if any, else all of them), then top down an entry wherever
// the class inherited from above is not a candidate.
//
// Every entry also carries the identity's flags and world defaults (identity), and the root of each direction
// always gets an entry: the datapath reads those from the PORT entry it looks up, and a missing root means a
// policy map that was never filled whole.
func portEntries(dir bpf.Direction, segs []segment, classes []uint16, identity bpf.PolicyValue) []Entry {
	var resolved []segment
	for _, s := range segs {
		class := int(classes[s.set])
		if len(resolved) == 0 || resolved[len(resolved)-1].set != class {
			resolved = append(resolved, segment{start: s.start, set: class})
		}
	}
	t := portTrie{segs: resolved}
	root := t.build(0, 0, 0, len(resolved))
	var out []Entry
	t.emit(root, noClass, func(n *portNode, class uint32) {
		v := emptyValue()
		v.PortClass = class
		v.Flags = identity.Flags
		v.DefaultVerdict = identity.DefaultVerdict
		key := bpf.PortKey(dir, uint8(n.lo>>16), uint16(n.lo), 8+int(n.depth))
		out = append(out, Entry{Key: key, Value: v})
	})
	return out
}

// noClass is inherited by the root, so that it always gets an entry.
const noClass = ^uint32(0)

// portNode is a prefix of the port space: the block of 1<<(24-depth) points from lo.
type portNode struct {
	lo          uint32
	depth       uint8
	left, right int32    // children in portTrie.nodes; -1 for a block of one class
	candidates  []uint32 // ORTC's candidate classes, ascending
}

type portTrie struct {
	segs  []segment
	nodes []portNode
}

// build adds the node of the block at lo with depth bits fixed; segs[first:last] are the segments that
// overlap it. It returns the node's index.
func (t *portTrie) build(lo uint32, depth uint8, first, last int) int32 {
	idx := int32(len(t.nodes))
	t.nodes = append(t.nodes, portNode{lo: lo, depth: depth, left: -1, right: -1})
	if last-first == 1 {
		t.nodes[idx].candidates = []uint32{uint32(t.segs[first].set)}
		return idx
	}
	mid := lo + 1<<(portSpaceBits-1-int(depth))
	// segments that start before mid overlap the left half; the last one starting at or before mid overlaps
	// the right half too
	split := first + sort.Search(last-first, func(i int) bool { return t.segs[first+i].start >= mid })
	rightFirst := split
	if split == last || t.segs[split].start > mid {
		rightFirst = split - 1
	}
	left := t.build(lo, depth+1, first, split)
	right := t.build(mid, depth+1, rightFirst, last)
	t.nodes[idx].left, t.nodes[idx].right = left, right
	lc, rc := t.nodes[left].candidates, t.nodes[right].candidates
	if both := intersectSorted(lc, rc); len(both) > 0 {
		t.nodes[idx].candidates = both
	} else {
		t.nodes[idx].candidates = unionSorted(lc, rc)
	}
	return idx
}

// emit walks the trie top down: a node whose candidates include the inherited class needs no entry;
// otherwise it gets one, with its smallest candidate, which its children inherit.
func (t *portTrie) emit(idx int32, inherited uint32, entry func(n *portNode, class uint32)) {
	n := &t.nodes[idx]
	if _, ok := slices.BinarySearch(n.candidates, inherited); !ok {
		inherited = n.candidates[0]
		entry(n, inherited)
	}
	if n.left >= 0 {
		t.emit(n.left, inherited, entry)
		t.emit(n.right, inherited, entry)
	}
}

func intersectSorted(a, b []uint32) []uint32 {
	var out []uint32
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0] < b[0]:
			a = a[1:]
		case a[0] > b[0]:
			b = b[1:]
		default:
			out = append(out, a[0])
			a, b = a[1:], b[1:]
		}
	}
	return out
}

func unionSorted(a, b []uint32) []uint32 {
	out := make([]uint32, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0] < b[0]:
			out, a = append(out, a[0]), a[1:]
		case a[0] > b[0]:
			out, b = append(out, b[0]), b[1:]
		default:
			out = append(out, a[0])
			a, b = a[1:], b[1:]
		}
	}
	out = append(out, a...)
	return append(out, b...)
}
