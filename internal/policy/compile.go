package policy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/moatfw/moat/bpf"
)

// maxClasses bounds port class ids: CIDR and PEER keys hold them in two bytes, and 0 means "no rule".
const maxClasses = 0xffff

// Compile turns an identity's policy into the entries of its policy map, an LPM trie that lets the
// datapath's decide() find, in a fixed number of lookups whatever the number of rules, the same decision as
// Evaluate:
//
//   - HEADER: the identity's flags (metadata API allowed, audit mode) and its world defaults;
//   - PORT: (direction, protocol, port) -> port class, the set of rules whose ports cover the packet,
//     encoded as the fewest prefixes of the protocol and port bits;
//   - CIDR: (class, remote prefix) -> the first Enforce and the first Audit rule of the class whose cidr
//     peers cover every address of the prefix that no more specific entry covers (excepts included);
//   - PEER: (class, remote identity) -> the first Enforce and the first Audit rule of the class with a
//     namespace peer of that identity.
//
// The datapath takes, for Enforce and Audit separately, the earlier (smaller Order) of the CIDR and PEER
// results. Port classes with the same CIDR and PEER entries are one class. The entries are sorted by key.
//
// A class carries the CIDR entries of all its rules, so the peers of a rule that applies to many classes
// (every rule with AllPorts, or a wide port range) are written once per class: the map grows with the
// number of classes times such rules. A policy that needs more than 65,535 classes is refused.
func Compile(p *IdentityPolicy) ([]Entry, error) {
	if err := p.Validate(); err != nil {
		if p == nil {
			return nil, err
		}
		return nil, fmt.Errorf("policy of identity %d: %w", p.Identity, err)
	}
	c := newCompiler(p)

	var segs [2][]segment
	for _, dir := range []bpf.Direction{bpf.Egress, bpf.Ingress} {
		segs[dir] = c.portSegments(dir)
	}
	classes, classEntries, err := c.resolveClasses()
	if err != nil {
		return nil, fmt.Errorf("policy of identity %d: %w", p.Identity, err)
	}

	identity := identityValue(p)
	var entries []Entry
	for _, dir := range []bpf.Direction{bpf.Egress, bpf.Ingress} {
		entries = append(entries, portEntries(dir, segs[dir], classes, identity)...)
	}
	entries = append(entries, classEntries...)
	if len(entries) > bpf.MaxPolicyEntries {
		return nil, fmt.Errorf("policy of identity %d compiles to %d map entries, more than the %d one namespace "+
			"can hold: rules with every port or wide port ranges repeat their CIDRs once per port class",
			p.Identity, len(entries), bpf.MaxPolicyEntries)
	}
	slices.SortFunc(entries, compareEntries)
	return entries, nil
}

// identityValue holds what applies to the identity before and after the rules (its flags and world defaults),
// which every PORT entry carries.
func identityValue(p *IdentityPolicy) bpf.PolicyValue {
	v := emptyValue()
	if p.MetadataAllowed {
		v.Flags |= uint32(bpf.IdentityAllowMeta)
	}
	if p.Audit {
		v.Flags |= uint32(bpf.IdentityAudit)
	}
	if len(p.FQDNPatterns()) > 0 {
		// world remotes are looked up among the addresses learned from answers, and DNS goes to trusted
		// resolvers only
		v.Flags |= uint32(bpf.IdentityFQDNPeers)
	}
	v.DefaultVerdict[bpf.Egress] = uint8(p.DefaultEgress)
	v.DefaultVerdict[bpf.Ingress] = uint8(p.DefaultIngress)
	return v
}

// emptyValue is a value whose rule references hold no rule.
func emptyValue() bpf.PolicyValue {
	return bpf.PolicyValue{Enforce: bpf.NoRule(), Audit: bpf.NoRule()}
}

func compareEntries(a, b Entry) int {
	if c := bytes.Compare(a.Key.Data[:], b.Key.Data[:]); c != 0 {
		return c
	}
	return int(a.Key.Prefixlen) - int(b.Key.Prefixlen)
}

// compiler holds what Compile derives from the rules once and shares between port classes.
type compiler struct {
	p     *IdentityPolicy
	peers []rulePeers // by rule position
	sets  ruleSets
	walk  cidrWalk // scratch space of the CIDR walk, reused from class to class
}

// rulePeers is a rule's peers as the compiler uses them: masked cidr peers by family (an AllPeers rule has
// the whole of both families) and the identities of its namespace peers.
type rulePeers struct {
	cidrs      [2][]cidrPeer // [0] IPv4, [1] IPv6
	identities []uint32      // sorted, without duplicates
}

type cidrPeer struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

var wholeFamily = [2]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func newCompiler(p *IdentityPolicy) *compiler {
	c := &compiler{p: p, peers: make([]rulePeers, len(p.Rules))}
	c.sets.init()
	slots := p.Slots()
	for i := range p.Rules {
		r := &p.Rules[i]
		rp := &c.peers[i]
		if r.AllPeers {
			rp.cidrs[0] = []cidrPeer{{cidr: wholeFamily[0]}}
			rp.cidrs[1] = []cidrPeer{{cidr: wholeFamily[1]}}
			continue
		}
		for _, peer := range r.Peers {
			if peer.FQDN != "" {
				// a learned address is looked up as the peer of its pattern's slot
				rp.identities = append(rp.identities, bpf.IdentityFQDN(slots[peer.FQDN]))
				continue
			}
			if !peer.IsCIDR() {
				rp.identities = append(rp.identities, peer.Identities...)
				continue
			}
			cp := cidrPeer{cidr: peer.CIDR.Masked()}
			for _, e := range peer.Except {
				cp.except = append(cp.except, e.Masked())
			}
			f := familyIndex(cp.cidr.Addr())
			rp.cidrs[f] = append(rp.cidrs[f], cp)
		}
		slices.Sort(rp.identities)
		rp.identities = slices.Compact(rp.identities)
	}
	return c
}

// resolveClasses gives every rule set of the port space a class id: the CIDR and PEER entries it needs, with
// rule sets that need the same entries sharing one class, and class 0 for those that need none (no rule of
// the set can match any remote). It returns the class of each rule set and the entries of all classes.
func (c *compiler) resolveClasses() ([]uint16, []Entry, error) {
	classes := make([]uint16, len(c.sets.sets))
	bySignature := make(map[string]uint16)
	var out []Entry
	var sig []byte
	for id := 1; id < len(c.sets.sets); id++ {
		es := c.classEntries(c.sets.sets[id])
		if len(es) == 0 {
			continue
		}
		sig = signature(sig[:0], es)
		if class, ok := bySignature[string(sig)]; ok {
			classes[id] = class
			continue
		}
		if len(bySignature) >= maxClasses {
			return nil, nil, fmt.Errorf("more than %d port classes: too many distinct combinations of ports", maxClasses)
		}
		class := uint16(len(bySignature) + 1)
		bySignature[string(sig)] = class
		classes[id] = class
		for i := range es {
			es[i].Key = es[i].Key.WithClass(class)
		}
		out = append(out, es...)
	}
	return classes, out, nil
}

// signature identifies what a class's entries decide, whatever the class id in their keys.
func signature(b []byte, es []Entry) []byte {
	for _, e := range es {
		unclassed := e.Key.WithClass(0)
		b = append(b, byte(e.Key.Prefixlen))
		b = append(b, unclassed.Data[:]...)
		for _, ref := range []bpf.RuleRef{e.Value.Enforce, e.Value.Audit} {
			b = binary.LittleEndian.AppendUint32(b, ref.Order)
			b = binary.LittleEndian.AppendUint32(b, ref.RuleId)
			b = append(b, ref.Action)
		}
	}
	return b
}

// ruleRef names the rule at position pos of the policy in a CIDR or PEER value.
func (c *compiler) ruleRef(pos int) bpf.RuleRef {
	r := &c.p.Rules[pos]
	return bpf.RuleRef{Order: uint32(pos), RuleId: r.ID, Action: uint8(r.Action)}
}

// ruleSets interns sets of rules (ascending positions in the policy); id 0 is the empty set.
type ruleSets struct {
	ids  map[string]int
	sets [][]int
	buf  []byte
}

func (s *ruleSets) init() {
	s.ids = map[string]int{"": 0}
	s.sets = [][]int{nil}
}

func (s *ruleSets) intern(set []int) int {
	s.buf = s.buf[:0]
	for _, r := range set {
		s.buf = binary.LittleEndian.AppendUint32(s.buf, uint32(r))
	}
	if id, ok := s.ids[string(s.buf)]; ok {
		return id
	}
	id := len(s.sets)
	s.ids[string(s.buf)] = id
	s.sets = append(s.sets, slices.Clone(set))
	return id
}

// EntryStats counts the entries of a compiled policy by kind.
type EntryStats struct {
	Entries int // all of them, the header included
	Ports   int // PORT entries
	CIDRs   int // CIDR entries
	Peers   int // PEER entries
	Classes int // distinct non-zero port classes the PORT entries name
}

// Stats counts entries by kind, for memory reporting.
func Stats(entries []Entry) EntryStats {
	s := EntryStats{Entries: len(entries)}
	classes := make(map[uint32]struct{})
	for _, e := range entries {
		switch bpf.PolicyKind(e.Key.Data[0]) {
		case bpf.KindPort:
			s.Ports++
			if e.Value.PortClass != 0 {
				classes[e.Value.PortClass] = struct{}{}
			}
		case bpf.KindCIDR:
			s.CIDRs++
		case bpf.KindPeer:
			s.Peers++
		}
	}
	s.Classes = len(classes)
	return s
}

// Bytes is the size of the entries' keys and values. The kernel's LPM trie adds a node header of about
// 40 bytes to each, and up to one intermediate node per entry.
func (s EntryStats) Bytes() int {
	return s.Entries * int(unsafe.Sizeof(bpf.PolicyKey{})+unsafe.Sizeof(bpf.PolicyValue{}))
}
