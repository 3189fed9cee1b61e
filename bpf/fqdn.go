package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// Egress by name (fqdn peers): what the datapath learns from DNS answers, and the maps that steer it.

// FQDNValue is what fqdn_names holds for a base name in a set: per form (DNSForm), the slots (bits) of the fqdn
// patterns that form of the name is.
type FQDNValue = moatMoatFqdnValue

// DNSTiming is what the datapath applies to learned addresses: a TTL is at least MinTTL seconds, an address lives
// Grace seconds past it, and one identity holds at most MaxPerIdentity of them (0: no bound).
type DNSTiming = moatMoatDnsTiming

// Defaults of the learning: fqdn_learned's size, and DNSTiming's.
const (
	DefaultFQDNLearnedEntries = int(moatMoatLimitsMOAT_FQDN_LEARNED_ENTRIES)
	DefaultFQDNPerIdentity    = uint32(moatMoatLimitsMOAT_FQDN_PER_IDENTITY)
	DefaultDNSMinTTL          = time.Duration(moatMoatLimitsMOAT_DNS_MIN_TTL) * time.Second
	DefaultDNSGrace           = time.Duration(moatMoatLimitsMOAT_DNS_GRACE) * time.Second
	// DNSAnswerRecords is how many answer records the datapath reads; an answer with more goes to the agent.
	DNSAnswerRecords = int(moatMoatLimitsMOAT_DNS_ANSWER_RECORDS)
	// DNSFallbackFrame is how many bytes of a frame the datapath copies to the agent.
	DNSFallbackFrame = int(moatMoatLimitsMOAT_DNS_FALLBACK_FRAME)
	// MarkDNSReinject is the mark (SO_MARK) of an answer the agent re-injects into a pod: the datapath passes it
	// on without reading it again. Only host-side sockets set a mark (a veth clears it on what a pod sends).
	MarkDNSReinject = uint32(moatMoatMarksMOAT_MARK_DNS_REINJECT)
)

// IdentityFQDNPeers is the identity flag of an identity with fqdn peers.
const IdentityFQDNPeers = moatMoatIdentityFlagsMOAT_ID_FQDN

// DefaultDNSTiming is the timing a datapath starts with.
func DefaultDNSTiming() DNSTiming {
	return DNSTiming{MinTtl: uint32(DefaultDNSMinTTL / time.Second), Grace: uint32(DefaultDNSGrace / time.Second),
		MaxPerIdentity: DefaultFQDNPerIdentity, AnswerEvents: perCPUShare(DefaultDNSAnswerEvents)}
}

// SetFQDNSet points an identity at its set of fqdn patterns (0: none, its DNS answers are not read).
func (dp *Datapath) SetFQDNSet(identity, set uint32) error {
	if err := dp.maps.FqdnSets.Put(identity, set); err != nil {
		return fmt.Errorf("set the fqdn set of identity %d: %w", identity, err)
	}
	return nil
}

// PutFQDNName writes the slots each form of a base name is, in a set.
func (dp *Datapath) PutFQDNName(set uint32, name string, v FQDNValue) error {
	k, err := NewDNSKey(set, name)
	if err != nil {
		return err
	}
	if err := dp.maps.FqdnNames.Put(&k, &v); err != nil {
		return fmt.Errorf("write fqdn name %q of set %d: %w", name, set, err)
	}
	return nil
}

// DeleteFQDNName removes a base name from a set; one that is not there is no error.
func (dp *Datapath) DeleteFQDNName(set uint32, name string) error {
	k, err := NewDNSKey(set, name)
	if err != nil {
		return err
	}
	if err := dp.maps.FqdnNames.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete fqdn name %q of set %d: %w", name, set, err)
	}
	return nil
}

type resolverKey = moatMoatResolverKey

func newResolverKey(a netip.Addr) resolverKey {
	a = a.Unmap()
	return resolverKey{Family: Family(a), Addr: Addr16(a)}
}

// PutResolver trusts a resolver address: answers from it are learned from, and pods of identities with fqdn peers
// may ask it (and no other) on ports 53 and 853.
func (dp *Datapath) PutResolver(a netip.Addr) error {
	if err := dp.maps.DnsResolvers.Put(newResolverKey(a), uint8(1)); err != nil {
		return fmt.Errorf("trust resolver %s: %w", a, err)
	}
	return nil
}

// DeleteResolver stops trusting a resolver address; one that is not trusted is no error.
func (dp *Datapath) DeleteResolver(a netip.Addr) error {
	if err := dp.maps.DnsResolvers.Delete(newResolverKey(a)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untrust resolver %s: %w", a, err)
	}
	return nil
}

// Resolvers lists the trusted resolver addresses, sorted.
func (dp *Datapath) Resolvers() ([]netip.Addr, error) {
	all, err := readAll[resolverKey, uint8](dp.maps.DnsResolvers, "trusted resolvers")
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(all))
	for k := range all {
		out = append(out, AddrFrom16(k.Family, k.Addr))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// SetDNSTiming sets the least TTL of a learned address and the grace it lives past its TTL (whole seconds).
func (dp *Datapath) SetDNSTiming(minTTL, grace time.Duration) error {
	return dp.updateDNSTiming(func(t *DNSTiming) {
		t.MinTtl = uint32(minTTL / time.Second)
		t.Grace = uint32(grace / time.Second)
	})
}

// SetFQDNBound sets how many learned addresses one identity may hold (0: no bound). Past it, answers go to the
// agent, which makes room (the identity's entries that expire first go).
func (dp *Datapath) SetFQDNBound(perIdentity uint32) error {
	return dp.updateDNSTiming(func(t *DNSTiming) { t.MaxPerIdentity = perIdentity })
}

// DNSTiming reads the timing of the learning.
func (dp *Datapath) DNSTiming() (DNSTiming, error) {
	var t DNSTiming
	if err := dp.maps.DnsTiming.Lookup(uint32(0), &t); err != nil {
		return t, fmt.Errorf("read the DNS timing: %w", err)
	}
	return t, nil
}

func (dp *Datapath) updateDNSTiming(change func(*DNSTiming)) error {
	t, err := dp.DNSTiming()
	if err != nil {
		return err
	}
	change(&t)
	if err := dp.maps.DnsTiming.Put(uint32(0), &t); err != nil {
		return fmt.Errorf("write the DNS timing: %w", err)
	}
	return nil
}

// initDNSTiming writes the default timing into a dns_timing that holds none (a new map, also beside reused maps of
// a build that had none).
func (dp *Datapath) initDNSTiming() error {
	t, err := dp.DNSTiming()
	if err != nil {
		return err
	}
	if t != (DNSTiming{}) {
		return nil
	}
	def := DefaultDNSTiming()
	if err := dp.maps.DnsTiming.Put(uint32(0), &def); err != nil {
		return fmt.Errorf("write the DNS timing: %w", err)
	}
	return nil
}

type fqdnKey = moatMoatFqdnKey
type fqdnLearnedValue = moatMoatFqdnLearned

// FQDNAddr is the address a learned address is kept as: an address of a NAT64 prefix as the IPv4 address it
// embeds (the datapath decides a NAT64 address by it); any other as it is (an IPv4-mapped IPv6 address stays
// IPv6, as the datapath decides it).
func FQDNAddr(a netip.Addr) netip.Addr {
	if a.Is6() {
		b := a.As16()
		wk := b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b
		if wk && (binary.BigEndian.Uint64(b[4:12]) == 0 || b[4] == 0 && b[5] == 1) {
			return netip.AddrFrom4([4]byte(b[12:16]))
		}
	}
	return a
}

func newFQDNKey(identity uint32, a netip.Addr) fqdnKey {
	a = FQDNAddr(a)
	return fqdnKey{Identity: identity, Family: Family(a), Addr: Addr16(a)}
}

// clock is the kernel's jiffies and tick rate, for deadlines in fqdn_learned.
type clock struct {
	now uint64 // jiffies
	hz  uint64
	at  time.Time
}

func (dp *Datapath) clock() (clock, error) {
	if dp.jiffies == nil {
		return clock{}, errors.New("read the kernel's jiffies: the datapath was opened, not loaded")
	}
	cfg, err := dp.Config()
	if err != nil {
		return clock{}, err
	}
	if cfg.Hz == 0 {
		return clock{}, errors.New("the kernel's tick rate is not known yet")
	}
	out := make([]byte, 64)
	if _, err := dp.jiffies.Run(&ebpf.RunOptions{Data: make([]byte, 64), DataOut: out}); err != nil {
		return clock{}, fmt.Errorf("read the kernel's jiffies: %w", err)
	}
	return clock{now: binary.LittleEndian.Uint64(out[8:]), hz: uint64(cfg.Hz), at: time.Now()}, nil
}

// deadline is the jiffies at which an address learned now with this TTL expires, as the datapath computes it.
func (c clock) deadline(ttl time.Duration, t DNSTiming) uint64 {
	secs := max(uint64(ttl/time.Second), uint64(t.MinTtl)) + uint64(t.Grace)
	return c.now + secs*c.hz
}

func (c clock) time(jiffies uint64) time.Time {
	return c.at.Add(time.Duration((int64(jiffies) - int64(c.now)) * int64(time.Second) / int64(c.hz)))
}

// LearnFQDN learns, as an answer would have it learned, that addr is a name of the slots for identity, with this
// TTL: an entry that has not expired keeps its slots and gets these too, and keeps the later deadline. The agent
// learns so what the datapath handed it. A new entry counts against the identity's bound (which the caller keeps).
func (dp *Datapath) LearnFQDN(identity uint32, addr netip.Addr, slots uint64, ttl time.Duration) error {
	t, err := dp.DNSTiming()
	if err != nil {
		return err
	}
	c, err := dp.clock()
	if err != nil {
		return err
	}
	k := newFQDNKey(identity, addr)
	v := fqdnLearnedValue{Slots: slots, Expires: c.deadline(ttl, t)}
	var old fqdnLearnedValue
	err = dp.maps.FqdnLearned.Lookup(&k, &old)
	switch {
	case err == nil && old.Expires >= c.now:
		v.Slots |= old.Slots
		v.Expires = max(v.Expires, old.Expires)
	case errors.Is(err, ebpf.ErrKeyNotExist):
		if err := dp.addFQDNCount(identity, 1); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("read learned address %s of identity %d: %w", addr, identity, err)
	}
	if err := dp.maps.FqdnLearned.Put(&k, &v); err != nil {
		return fmt.Errorf("learn address %s of identity %d: %w", addr, identity, err)
	}
	return nil
}

// ForgetFQDN removes a learned address of an identity; one that is not there is no error.
func (dp *Datapath) ForgetFQDN(identity uint32, addr netip.Addr) error {
	k := newFQDNKey(identity, addr)
	err := dp.maps.FqdnLearned.Delete(&k)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("forget address %s of identity %d: %w", addr, identity, err)
	}
	return dp.addFQDNCount(identity, -1)
}

func (dp *Datapath) addFQDNCount(identity uint32, delta int64) error {
	n, err := dp.FQDNCount(identity)
	if err != nil {
		return err
	}
	if delta < 0 && n < uint64(-delta) {
		n = 0
	} else {
		n = uint64(int64(n) + delta)
	}
	if err := dp.maps.FqdnCounts.Put(identity, n); err != nil {
		return fmt.Errorf("write the learned count of identity %d: %w", identity, err)
	}
	return nil
}

// FQDNCount is how many learned addresses an identity holds as the datapath counted them (RecountFQDN sets it to
// the truth).
func (dp *Datapath) FQDNCount(identity uint32) (uint64, error) {
	var n uint64
	if err := dp.maps.FqdnCounts.Lookup(identity, &n); err != nil {
		return 0, fmt.Errorf("read the learned count of identity %d: %w", identity, err)
	}
	return n, nil
}

// LearnedAddr is one learned address of an identity.
type LearnedAddr struct {
	Identity uint32
	Addr     netip.Addr
	Slots    uint64
	Expires  time.Time
}

// LearnedFQDN lists every learned address, expired ones included (until the table's LRU drops them), sorted by
// identity and address.
func (dp *Datapath) LearnedFQDN() ([]LearnedAddr, error) {
	c, err := dp.clock()
	if err != nil {
		return nil, err
	}
	var out []LearnedAddr
	err = walkBatch(dp.maps.FqdnLearned, func(k *fqdnKey, v *fqdnLearnedValue) {
		out = append(out, LearnedAddr{Identity: k.Identity, Addr: AddrFrom16(k.Family, k.Addr), Slots: v.Slots,
			Expires: c.time(v.Expires)})
	})
	if err != nil {
		return nil, fmt.Errorf("walk the learned addresses: %w", err)
	}
	slices.SortFunc(out, func(a, b LearnedAddr) int {
		if a.Identity != b.Identity {
			return int(a.Identity) - int(b.Identity)
		}
		return a.Addr.Compare(b.Addr)
	})
	return out, nil
}

// RecountFQDN sets each identity's count of learned addresses to the entries it holds (the datapath counts what
// it adds, never what the table's LRU drops) and returns the counts.
func (dp *Datapath) RecountFQDN() (map[uint32]uint64, error) {
	counts, _, err := dp.SweepFQDN(time.Time{})
	return counts, err
}

// SweepFQDN removes the learned addresses whose deadline (TTL and grace) passed before now (none for a zero
// now), and sets each identity's count to what it holds then, in one walk of the table. It returns the counts and
// how many addresses went.
func (dp *Datapath) SweepFQDN(now time.Time) (map[uint32]uint64, int, error) {
	all, err := dp.LearnedFQDN()
	if err != nil {
		return nil, 0, err
	}
	counts, gone := map[uint32]uint64{}, 0
	for _, l := range all {
		if !now.IsZero() && l.Expires.Before(now) {
			if err := dp.ForgetFQDN(l.Identity, l.Addr); err != nil {
				return nil, gone, err
			}
			gone++
			continue
		}
		counts[l.Identity]++
	}
	old, err := readAll[uint32, uint64](dp.maps.FqdnCounts, "learned counts")
	if err != nil {
		return nil, gone, err
	}
	for id, n := range old {
		if n != counts[id] {
			if err := dp.maps.FqdnCounts.Put(id, counts[id]); err != nil {
				return nil, gone, fmt.Errorf("write the learned count of identity %d: %w", id, err)
			}
		}
	}
	return counts, gone, nil
}

// MakeFQDNRoom removes an identity's learned addresses that expire first until it holds fewer than its bound (room
// for one more), expired ones first, and sets its count. It returns how many went.
func (dp *Datapath) MakeFQDNRoom(identity uint32) (int, error) { return dp.trimFQDN(identity, 1) }

// TrimFQDN is MakeFQDNRoom down to the bound itself: what the datapath asks for once it learned past it.
func (dp *Datapath) TrimFQDN(identity uint32) (int, error) { return dp.trimFQDN(identity, 0) }

// trimFQDN leaves an identity at most its bound less room learned addresses.
func (dp *Datapath) trimFQDN(identity uint32, room int) (int, error) {
	t, err := dp.DNSTiming()
	if err != nil || t.MaxPerIdentity == 0 {
		return 0, err
	}
	all, err := dp.LearnedFQDN()
	if err != nil {
		return 0, err
	}
	var own []LearnedAddr
	for _, l := range all {
		if l.Identity == identity {
			own = append(own, l)
		}
	}
	slices.SortFunc(own, func(a, b LearnedAddr) int { return a.Expires.Compare(b.Expires) })
	removed := 0
	for removed < len(own) && len(own)-removed > int(t.MaxPerIdentity)-room {
		k := newFQDNKey(identity, own[removed].Addr)
		if err := dp.maps.FqdnLearned.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return removed, fmt.Errorf("forget address %s of identity %d: %w", own[removed].Addr, identity, err)
		}
		removed++
	}
	if err := dp.maps.FqdnCounts.Put(identity, uint64(len(own)-removed)); err != nil {
		return removed, fmt.Errorf("write the learned count of identity %d: %w", identity, err)
	}
	return removed, nil
}
