package policy

import (
	"math/bits"
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
)

// classEntries computes the CIDR and PEER entries of a port class whose rules are the given positions of the
// policy, ascending. The keys carry class 0: the caller writes the class id in once classes are resolved.
func (c *compiler) classEntries(rules []int) []Entry {
	var out []Entry
	for f := range wholeFamily {
		out = c.cidrEntries(rules, f, out)
	}
	return c.peerEntries(rules, out)
}

// cidrEntries appends the CIDR entries of one address family of a class.
//
// The prefixes that matter are the class's cidrs and excepts of that family ("interesting" prefixes). Any
// two are nested or disjoint, so for an address a whose most specific interesting prefix is P, a cidr peer
// covers a exactly when its cidr contains P and none of its excepts does: the first matching rule is the
// same for every address of P outside P's more specific interesting prefixes. The walk visits the
// interesting prefixes depth first, keeping the set of peers that cover the current prefix, and emits an
// entry for P only where the first Enforce or the first Audit rule differs from P's nearest interesting
// ancestor's (for a top-level prefix: from no rule, which a lookup miss gives).
func (c *compiler) cidrEntries(rules []int, f int, out []Entry) []Entry {
	w := &c.walk
	w.reset(len(rules))
	for li, pos := range rules {
		for _, cp := range c.peers[pos].cidrs[f] {
			peer := int32(len(w.peerRule))
			w.peerRule = append(w.peerRule, int32(li))
			n := w.node(cp.cidr)
			n.starts = append(n.starts, peer)
			for _, e := range cp.except {
				n := w.node(e)
				n.excepts = append(n.excepts, peer)
			}
		}
	}
	if len(w.nodes) == 0 {
		return out
	}
	w.exceptDepth = slices.Grow(w.exceptDepth[:0], len(w.peerRule))[:len(w.peerRule)]
	clear(w.exceptDepth)
	slices.SortFunc(w.nodes, func(a, b prefixNode) int { return comparePrefix(a.prefix, b.prefix) })

	audit := func(li int32) bool { return c.p.Rules[rules[li]].Audit }
	type frame struct {
		node  int
		first firstRules
	}
	var stack []frame
	for i := range w.nodes {
		n := &w.nodes[i]
		for len(stack) > 0 && !contains(w.nodes[stack[len(stack)-1].node].prefix, n.prefix) {
			w.leave(stack[len(stack)-1].node, audit)
			stack = stack[:len(stack)-1]
		}
		w.enter(i, audit)
		first := firstRules{enforce: w.enforce.first(), audit: w.audit.first()}
		inherited := firstRules{enforce: -1, audit: -1}
		if len(stack) > 0 {
			inherited = stack[len(stack)-1].first
		}
		if first != inherited {
			v := emptyValue()
			if first.enforce >= 0 {
				v.Enforce = c.ruleRef(rules[first.enforce])
			}
			if first.audit >= 0 {
				v.Audit = c.ruleRef(rules[first.audit])
			}
			out = append(out, Entry{Key: bpf.CIDRKey(0, n.prefix), Value: v})
		}
		stack = append(stack, frame{node: i, first: first})
	}
	for len(stack) > 0 {
		w.leave(stack[len(stack)-1].node, audit)
		stack = stack[:len(stack)-1]
	}
	return out
}

// contains reports whether prefix outer contains prefix inner (both masked, of the same family).
func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// firstRules are the first Enforce and the first Audit rule that match, as indexes into the class's rules;
// -1 is none.
type firstRules struct {
	enforce, audit int32
}

// peerEntries appends the PEER entries of a class: for each identity its namespace peers name, the first
// Enforce and the first Audit rule of the class naming it.
func (c *compiler) peerEntries(rules []int, out []Entry) []Entry {
	first := make(map[uint32]*bpf.PolicyValue)
	var ids []uint32
	for _, pos := range rules {
		for _, id := range c.peers[pos].identities {
			v, ok := first[id]
			if !ok {
				ev := emptyValue()
				v = &ev
				first[id] = v
				ids = append(ids, id)
			}
			ref := &v.Enforce
			if c.p.Rules[pos].Audit {
				ref = &v.Audit
			}
			if ref.Order == bpf.OrderNone {
				*ref = c.ruleRef(pos)
			}
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		out = append(out, Entry{Key: bpf.PeerKey(0, id), Value: *first[id]})
	}
	return out
}

// cidrWalk is the state of cidrEntries' walk over one family of one class, kept between calls to reuse memory.
type cidrWalk struct {
	nodes       []prefixNode
	index       map[netip.Prefix]int
	peerRule    []int32 // cidr peer -> its rule, as an index into the class's rules
	exceptDepth []int32 // cidr peer -> how many of its excepts contain the current prefix
	ruleCount   []int32 // rule -> how many of its cidr peers cover the current prefix
	enforce     firstActive
	audit       firstActive
}

// prefixNode is an interesting prefix: the cidr of the peers in starts and an except of the peers in excepts.
type prefixNode struct {
	prefix          netip.Prefix
	starts, excepts []int32
}

func (w *cidrWalk) reset(rules int) {
	w.nodes = w.nodes[:0]
	if w.index == nil {
		w.index = make(map[netip.Prefix]int)
	}
	clear(w.index)
	w.peerRule = w.peerRule[:0]
	w.ruleCount = slices.Grow(w.ruleCount[:0], rules)[:rules]
	clear(w.ruleCount)
	w.enforce.reset(rules)
	w.audit.reset(rules)
}

func (w *cidrWalk) node(p netip.Prefix) *prefixNode {
	i, ok := w.index[p]
	if !ok {
		i = len(w.nodes)
		w.index[p] = i
		w.nodes = append(w.nodes, prefixNode{prefix: p})
	}
	return &w.nodes[i]
}

// enter makes the walk's current prefix the node's: its peers start covering, and the peers it is an except
// of stop. The node's ancestors have been entered.
func (w *cidrWalk) enter(i int, audit func(int32) bool) {
	n := &w.nodes[i]
	for _, peer := range n.starts {
		w.cover(w.peerRule[peer], 1, audit)
	}
	for _, peer := range n.excepts {
		w.exceptDepth[peer]++
		if w.exceptDepth[peer] == 1 {
			w.cover(w.peerRule[peer], -1, audit)
		}
	}
}

// leave undoes enter; the node's descendants have been left.
func (w *cidrWalk) leave(i int, audit func(int32) bool) {
	n := &w.nodes[i]
	for _, peer := range n.excepts {
		w.exceptDepth[peer]--
		if w.exceptDepth[peer] == 0 {
			w.cover(w.peerRule[peer], 1, audit)
		}
	}
	for _, peer := range n.starts {
		w.cover(w.peerRule[peer], -1, audit)
	}
}

// cover counts one more (delta 1) or one fewer (-1) cidr peer of the rule covering the current prefix.
func (w *cidrWalk) cover(rule int32, delta int32, audit func(int32) bool) {
	before := w.ruleCount[rule]
	w.ruleCount[rule] += delta
	if (before == 0) == (w.ruleCount[rule] == 0) {
		return
	}
	set := &w.enforce
	if audit(rule) {
		set = &w.audit
	}
	set.add(int(rule), delta)
}

// firstActive is a set of small integers (a Fenwick tree of 0/1 counts) that finds its smallest member in
// logarithmic time: the first rule among those that match.
type firstActive struct {
	tree []int32 // 1-based
	size int32
	top  int // the largest power of two not above the capacity
}

func (f *firstActive) reset(n int) {
	f.tree = slices.Grow(f.tree[:0], n+1)[:n+1]
	clear(f.tree)
	f.size = 0
	f.top = 0
	if n > 0 {
		f.top = 1 << (bits.Len(uint(n)) - 1)
	}
}

// add adds (delta 1) or removes (-1) member i.
func (f *firstActive) add(i int, delta int32) {
	f.size += delta
	for i++; i < len(f.tree); i += i & -i {
		f.tree[i] += delta
	}
}

// first is the smallest member, or -1 when the set is empty.
func (f *firstActive) first() int32 {
	if f.size == 0 {
		return -1
	}
	pos, rem := 0, int32(1)
	for step := f.top; step > 0; step >>= 1 {
		if next := pos + step; next < len(f.tree) && f.tree[next] < rem {
			pos = next
			rem -= f.tree[next]
		}
	}
	return int32(pos)
}
