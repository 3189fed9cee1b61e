package policy_test

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
)

// This file models the datapath's decide() (bpf/moat.c) literally, over Go models of its LPM tries, so
// that Compile's entries can be checked against Evaluate without a kernel.

// lpmTrie models a BPF_MAP_TYPE_LPM_TRIE with 20 bytes of data: a lookup finds the entry with the longest
// prefixlen, not above the lookup key's, whose first prefixlen bits of data equal the key's.
type lpmTrie[V any] struct {
	entries map[lpmKey]V
	lens    []uint32 // distinct prefixlens of the entries, longest first
}

type lpmKey struct {
	prefixlen uint32
	data      [20]byte
}

func newLPMTrie[V any]() *lpmTrie[V] {
	return &lpmTrie[V]{entries: make(map[lpmKey]V)}
}

// maskData keeps the first n bits of data.
func maskData(data [20]byte, n uint32) [20]byte {
	var out [20]byte
	for i := range out {
		switch bit := uint32(i) * 8; {
		case bit+8 <= n:
			out[i] = data[i]
		case bit < n:
			out[i] = data[i] & (0xff << (8 - (n - bit)))
		}
	}
	return out
}

// insert adds an entry; an entry for the same prefix already there is an error (the kernel would replace
// it, hiding that two entries were meant for one prefix).
func (t *lpmTrie[V]) insert(prefixlen uint32, data [20]byte, v V) error {
	if prefixlen > 160 {
		return fmt.Errorf("prefixlen %d: beyond the 160 bits of data", prefixlen)
	}
	k := lpmKey{prefixlen, maskData(data, prefixlen)}
	if _, dup := t.entries[k]; dup {
		return fmt.Errorf("two entries for prefixlen %d data %x", prefixlen, k.data)
	}
	t.entries[k] = v
	if at, found := slices.BinarySearchFunc(t.lens, prefixlen, func(a, b uint32) int { return int(b) - int(a) }); !found {
		t.lens = slices.Insert(t.lens, at, prefixlen)
	}
	return nil
}

func (t *lpmTrie[V]) lookup(prefixlen uint32, data [20]byte) (V, bool) {
	for _, n := range t.lens {
		if n > prefixlen {
			continue
		}
		if v, ok := t.entries[lpmKey{n, maskData(data, n)}]; ok {
			return v, true
		}
	}
	var zero V
	return zero, false
}

// datapathModel is the state decide() reads for one endpoint: the ipcache, the identity's policy map (nil
// when the identity has none) and the cluster defaults of the config map.
type datapathModel struct {
	ipcache  *lpmTrie[bpf.IPCacheValue]
	policy   *lpmTrie[bpf.PolicyValue]
	defaults [2]uint8
}

func newDatapathModel(entries []policy.Entry, d policy.Defaults, ipc *policy.IPCache, identityHasPolicy bool) (*datapathModel, error) {
	m := &datapathModel{ipcache: newLPMTrie[bpf.IPCacheValue]()}
	m.defaults[bpf.Egress] = uint8(d.DefaultEgress)
	m.defaults[bpf.Ingress] = uint8(d.DefaultIngress)
	for _, e := range ipc.Entries() {
		k := bpf.NewIPCacheKey(e.Prefix)
		var data [20]byte
		data[0] = k.Family
		copy(data[1:], k.Addr[:])
		if err := m.ipcache.insert(k.Prefixlen, data, bpf.IPCacheValue{Identity: e.Identity, Class: uint8(e.Class)}); err != nil {
			return nil, fmt.Errorf("ipcache: %w", err)
		}
	}
	if identityHasPolicy {
		m.policy = newLPMTrie[bpf.PolicyValue]()
		for _, e := range entries {
			if err := m.policy.insert(e.Key.Prefixlen, e.Key.Data, e.Value); err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
		}
	}
	return m, nil
}

// simulate decides pkt as the datapath would with entries in the identity's policy map.
func simulate(entries []policy.Entry, d policy.Defaults, ipc *policy.IPCache, identityHasPolicy bool, pkt policy.Packet) policy.Result {
	m, err := newDatapathModel(entries, d, ipc, identityHasPolicy)
	if err != nil {
		panic(err)
	}
	return m.decide(pkt)
}

// decide is decide() of moat.c, statement by statement, followed by the verdict process() gives an
// endpoint in enforce mode.
func (m *datapathModel) decide(pkt policy.Packet) policy.Result {
	var d policy.Result
	family := bpf.Family(pkt.Remote)
	remote := bpf.Addr16(pkt.Remote)
	dir := uint8(pkt.Direction)
	enforce, audit := bpf.NoRule(), bpf.NoRule()
	var flags uint32
	var worldDefault uint8

	// nat64_embeds_ipv4(): 64:ff9b::/96, and 64:ff9b:1::/48 with the IPv4 address in the last 32 bits
	if family == 6 && remote[0] == 0 && remote[1] == 0x64 && remote[2] == 0xff && remote[3] == 0x9b &&
		([8]byte(remote[4:12]) == [8]byte{} || (remote[4] == 0 && remote[5] == 1)) {
		remote = [16]byte{remote[12], remote[13], remote[14], remote[15]}
		family = 4
	}
	class := m.classify(family, remote, &d.RemoteIdentity)
	d.RemoteClass = class
	d.RuleID = 0

	action := func() bpf.Action {
		var k lpmKey
		var pclass uint32
		if m.policy != nil {
			k = lpmKeyOf(bpf.PortKey(bpf.Direction(dir), pkt.Protocol, pkt.Port, 32))
			v, ok := m.policy.lookup(k.prefixlen, k.data)
			if !ok {
				d.Reason = bpf.ReasonNoPolicy
				return bpf.ActionDeny
			}
			flags = v.Flags
			worldDefault = v.DefaultVerdict[dir&1]
			pclass = v.PortClass
		} else {
			worldDefault = m.defaults[dir&1]
		}

		if class == bpf.ClassMetadata {
			if flags&uint32(bpf.IdentityAllowMeta) == 0 {
				d.Reason = bpf.ReasonMetadata
				return bpf.ActionDeny
			}
			class = bpf.ClassWorld
		}

		if pclass != 0 {
			a := bpf.AddrFrom16(family, remote)
			k = lpmKeyOf(bpf.CIDRKey(uint16(pclass), netip.PrefixFrom(a, a.BitLen())))
			if v, ok := m.policy.lookup(k.prefixlen, k.data); ok {
				better(&enforce, v.Enforce)
				better(&audit, v.Audit)
			}
			if d.RemoteIdentity != 0 {
				k = lpmKeyOf(bpf.PeerKey(uint16(pclass), d.RemoteIdentity))
				if v, ok := m.policy.lookup(k.prefixlen, k.data); ok {
					better(&enforce, v.Enforce)
					better(&audit, v.Audit)
				}
			}
			// fqdn_peers(): a world remote of an identity with fqdn peers, by the slots learned for it
			if dir == uint8(bpf.Egress) && flags&uint32(bpf.IdentityFQDNPeers) != 0 && d.RemoteClass == bpf.ClassWorld {
				for slot := 0; slot < bpf.MaxFQDNSlots && pkt.FQDN>>slot != 0; slot++ {
					if pkt.FQDN>>slot&1 == 0 {
						continue
					}
					k = lpmKeyOf(bpf.PeerKey(uint16(pclass), bpf.IdentityFQDN(slot)))
					if v, ok := m.policy.lookup(k.prefixlen, k.data); ok {
						better(&enforce, v.Enforce)
						better(&audit, v.Audit)
					}
				}
			}
		}

		if audit.Order < enforce.Order {
			d.AuditRuleID = audit.RuleId
			d.AuditAction = bpf.Action(audit.Action)
		}

		if enforce.Order != bpf.OrderNone {
			d.RuleID = enforce.RuleId
			if bpf.Action(enforce.Action) == bpf.ActionAllow {
				d.Reason = bpf.ReasonAllowRule
				return bpf.ActionAllow
			}
			d.Reason = bpf.ReasonDenyRule
			if d.RemoteIdentity == bpf.IdentityUnknownPod {
				d.Reason = bpf.ReasonUnknownPod
			}
			return bpf.ActionDeny
		}
		if dir == uint8(bpf.Egress) && (class == bpf.ClassNode || class == bpf.ClassCluster) &&
			policy.IsEncapsulation(pkt.Protocol, pkt.Port) {
			d.Reason = bpf.ReasonEncapsulation
			return bpf.ActionDeny
		}
		if class == bpf.ClassWorld && bpf.Action(worldDefault) == bpf.ActionDeny {
			d.Reason = bpf.ReasonDenyDefault
			return bpf.ActionDeny
		}
		d.Reason = bpf.ReasonAllowDefault
		return bpf.ActionAllow
	}()

	d.Action = action
	switch {
	case action == bpf.ActionAllow:
		d.Verdict = bpf.VerdictAllowed
	case flags&uint32(bpf.IdentityAudit) != 0: // audit_mode(): the flags decide() read
		d.Verdict = bpf.VerdictAudit
	default:
		d.Verdict = bpf.VerdictDenied
	}
	return d
}

// classify is classify() of moat.c: an exact-address lookup in the ipcache.
func (m *datapathModel) classify(family uint8, addr [16]byte, identity *uint32) bpf.Class {
	var data [20]byte
	data[0] = family
	copy(data[1:], addr[:])
	prefixlen := uint32(8 + 128)
	if family == 4 {
		prefixlen = 8 + 32
	}
	if v, ok := m.ipcache.lookup(prefixlen, data); ok {
		*identity = v.Identity
		return bpf.Class(v.Class)
	}
	*identity = 0
	return bpf.ClassWorld
}

// lpmKeyOf is a policy map key as the trie model holds it.
func lpmKeyOf(k bpf.PolicyKey) lpmKey { return lpmKey{k.Prefixlen, k.Data} }

func better(best *bpf.RuleRef, r bpf.RuleRef) {
	if r.Order < best.Order {
		*best = r
	}
}
