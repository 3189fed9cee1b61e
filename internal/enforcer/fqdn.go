package enforcer

import (
	"context"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/fqdn"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/resolve"
)

// nodeLocalDNS is NodeLocal DNSCache's address: a trusted resolver on a node that has it.
var nodeLocalDNS = netip.MustParseAddr(v1alpha1.DefaultNodeLocalDNS)

// fqdnNames is what fqdn_names holds for an identity's fqdn patterns: per base name and form, the slots of the
// patterns it is.
func fqdnNames(p *policy.IdentityPolicy) map[string]bpf.FQDNValue {
	slots := p.Slots()
	if len(slots) == 0 {
		return nil
	}
	out := map[string]bpf.FQDNValue{}
	for pattern, slot := range slots {
		n, err := v1alpha1.ParseNamePattern(pattern)
		if err != nil || slot >= bpf.MaxFQDNSlots {
			continue // resolve normalized it; Validate bounds the slots
		}
		v := out[n.Base]
		v.Slots[n.Form] |= 1 << slot
		out[n.Base] = v
	}
	return out
}

// fqdnStore is the datapath's fqdn_sets and fqdn_names.
func fqdnStore(dp *bpf.Datapath) nameStore[bpf.FQDNValue] {
	return nameStore[bpf.FQDNValue]{
		point:   dp.SetFQDNSet,
		put:     dp.PutFQDNName,
		del:     dp.DeleteFQDNName,
		pointed: dp.FQDNSets,
		inUse:   dp.FQDNNameSets,
		delSet:  dp.DeleteFQDNNameSet,
	}
}

// trustedResolvers are the resolvers whose answers are learned: FirewallConfig's list, or the source's (the
// cluster DNS Service) and NodeLocal DNSCache's address when this node has it.
func (e *Enforcer) trustedResolvers(dns resolve.DNS, s State) []netip.Addr {
	if dns.TrustedResolvers != nil {
		return dns.TrustedResolvers
	}
	out := slices.Clone(s.DNSResolvers)
	if slices.Contains(e.hostAddrs, nodeLocalDNS) {
		out = append(out, nodeLocalDNS)
	}
	return out
}

// syncDNS writes how names are learned: the trusted resolvers (new ones before old ones go), the timing and the
// bound.
func (e *Enforcer) syncDNS(dns resolve.DNS, s State) error {
	e.dns = dns
	want := e.trustedResolvers(dns, s)
	have, err := e.dp.Resolvers()
	if err != nil {
		return err
	}
	for _, a := range want {
		if !slices.Contains(have, a) {
			if err := e.dp.PutResolver(a); err != nil {
				return err
			}
		}
	}
	for _, a := range have {
		if !slices.Contains(want, a) {
			if err := e.dp.DeleteResolver(a); err != nil {
				return err
			}
		}
	}
	if err := e.dp.SetDNSTiming(dns.MinTTL, dns.Grace); err != nil {
		return fmt.Errorf("set the DNS timing: %w", err)
	}
	if err := e.dp.SetFQDNBound(uint32(dns.MaxLearned)); err != nil {
		return fmt.Errorf("set the bound of learned addresses: %w", err)
	}
	if err := e.dp.SetDNSAnswerEvents(dns.AnswerEvents); err != nil {
		return fmt.Errorf("set the rate of DNS answer events: %w", err)
	}
	return nil
}

// fqdnSlots keeps each identity's fqdn patterns in the slots they were given, for as long as the patterns stay:
// the addresses learned for a pattern hold its slot's bit, so a slot that moved to another pattern would open
// that pattern's rules to the first's addresses. A slot whose pattern went is dirty until the bits learned for it
// are cleared, which happens when another pattern takes it.
type fqdnSlots struct {
	of    map[uint32]map[string]int // identity -> pattern -> slot
	dirty map[uint32]uint64         // identity -> slots not in use that learned addresses may still hold
	known bool                      // of and dirty hold what the maps say (read at the first assignment)
}

// assignFQDNSlots gives every policy's fqdn patterns their slots (FQDNSlots), clearing a dirty slot's learned
// bits before it goes to a new pattern. It returns the slots each identity had before, for keepStaleSlots.
func (e *Enforcer) assignFQDNSlots(policies map[uint32]*policy.IdentityPolicy) (map[uint32]map[string]int, error) {
	b := &e.slots
	if !b.known {
		if err := e.adoptFQDNSlots(); err != nil {
			return nil, err
		}
	}
	prev := make(map[uint32]map[string]int, len(b.of))
	maps.Copy(prev, b.of)
	for id, p := range policies {
		patterns := p.FQDNPatterns()
		old := b.of[id]
		if len(patterns) > bpf.MaxFQDNSlots {
			// more than fit, which the compiler refuses: the policy in force stays, and so do the slots and
			// names it was compiled with (keepStaleSlots puts them back for any policy the datapath refuses)
			p.FQDNSlots = old
			if old == nil {
				p.FQDNSlots = map[string]int{}
			}
			continue
		}
		now := make(map[string]int, len(patterns))
		var used uint64
		for _, name := range patterns {
			if slot, ok := old[name]; ok {
				now[name] = slot
				used |= 1 << slot
			}
		}
		for name, slot := range old {
			if _, ok := now[name]; !ok {
				b.dirty[id] |= 1 << slot // its pattern went; what was learned for it stays until cleared
			}
		}
		var scrub uint64
		for _, name := range patterns {
			if _, ok := now[name]; ok {
				continue
			}
			slot := freeSlot(used, b.dirty[id])
			scrub |= b.dirty[id] & (1 << slot)
			now[name] = slot
			used |= 1 << slot
		}
		if scrub != 0 {
			n, err := e.dp.ClearFQDNSlots(id, scrub)
			if err != nil {
				return nil, err
			}
			b.dirty[id] &^= scrub
			e.log.WithFields(logrus.Fields{"identity": id, "addresses": n}).
				Info("fqdn slots given to new patterns: what was learned for the old ones is forgotten")
		}
		if b.dirty[id] == 0 {
			delete(b.dirty, id)
		}
		if len(now) == 0 {
			delete(b.of, id)
			continue
		}
		b.of[id] = now
		p.FQDNSlots = now
	}
	return prev, nil
}

// keepStaleSlots puts back the slots of the identities whose new policy the datapath could not take: the policy
// in force was compiled with them, so its names must stay written with them too.
func (e *Enforcer) keepStaleSlots(policies map[uint32]*policy.IdentityPolicy, stale map[uint32]string, prev map[uint32]map[string]int) {
	b := &e.slots
	for id := range stale {
		p := policies[id]
		if p == nil {
			continue
		}
		old := prev[id]
		var used uint64
		for _, slot := range old {
			used |= 1 << slot
		}
		if d := b.dirty[id] &^ used; d != 0 {
			b.dirty[id] = d
		} else {
			delete(b.dirty, id)
		}
		for _, slot := range b.of[id] {
			if used&(1<<slot) == 0 {
				b.dirty[id] |= 1 << slot // the new patterns' slots learn nothing now, but may have
			}
		}
		if old == nil {
			delete(b.of, id)
			p.FQDNSlots = map[string]int{}
			continue
		}
		b.of[id] = old
		p.FQDNSlots = old
	}
}

// freeSlot is the lowest slot neither used nor dirty, else the lowest not used.
func freeSlot(used, dirty uint64) int {
	if free := ^(used | dirty); free != 0 {
		return bits.TrailingZeros64(free)
	}
	return bits.TrailingZeros64(^used)
}

// adoptFQDNSlots reads the slots an earlier enforcer gave from fqdn_sets and fqdn_names, and which slots the
// learned addresses hold beyond those.
func (e *Enforcer) adoptFQDNSlots() error {
	b := &e.slots
	b.of, b.dirty = map[uint32]map[string]int{}, map[uint32]uint64{}
	sets, err := e.dp.FQDNSets()
	if err != nil {
		return err
	}
	bySet := map[uint32]map[string]int{}
	for id, set := range sets {
		if _, ok := bySet[set]; !ok {
			names, err := e.dp.FQDNNames(set)
			if err != nil {
				return err
			}
			slots := map[string]int{}
			for base, v := range names {
				for form, mask := range v.Slots {
					if mask != 0 {
						slots[v1alpha1.NamePattern{Form: v1alpha1.NameForm(form), Base: base}.String()] = bits.TrailingZeros64(mask)
					}
				}
			}
			bySet[set] = slots
		}
		b.of[id] = maps.Clone(bySet[set])
	}
	learned, err := e.dp.LearnedFQDN()
	if err != nil {
		return err
	}
	for _, l := range learned {
		var used uint64
		for _, slot := range b.of[l.Identity] {
			used |= 1 << slot
		}
		if d := l.Slots &^ used; d != 0 {
			b.dirty[l.Identity] |= d
		}
	}
	b.known = true
	return nil
}

// forgetLearned clears what a released identity learned, before its number can serve another namespace.
func (e *Enforcer) forgetLearned(id uint32) error {
	if _, err := e.dp.ClearFQDNSlots(id, 0); err != nil {
		return err
	}
	delete(e.slots.of, id)
	delete(e.slots.dirty, id)
	return nil
}

// LearnedSweepInterval is how often addresses past their expiry and grace are removed from the learned table
// and the per-namespace counts are set to what it holds (the datapath counts what it adds; the table's LRU drops
// entries without counting).
const LearnedSweepInterval = 30 * time.Second

// RunLearner learns from the DNS answers the datapath hands over (what it cannot read in place) and gives them
// back to their pods, and sweeps the learned table, until ctx ends. With no learner running such answers are
// lost, and a pod's lookup is retried by its resolver.
func (e *Enforcer) RunLearner(ctx context.Context) error {
	l, err := fqdn.NewLearner(e.dp, e.FQDNPatterns, e.log.WithField("component", "dns-learner"))
	if err != nil {
		return err
	}
	defer l.Close()
	go Every(ctx, LearnedSweepInterval, e.sweepLearned)
	return l.Run(ctx)
}

// sweepLearned removes the learned addresses past their expiry and grace, and recounts, in one walk.
func (e *Enforcer) sweepLearned() {
	counts, gone, err := e.dp.SweepFQDN(time.Now())
	if err != nil {
		e.log.WithError(err).Warn("sweeping the learned addresses")
		return
	}
	if gone > 0 {
		left := 0
		for _, n := range counts {
			left += int(n)
		}
		e.log.WithFields(logrus.Fields{"expired": gone, "left": left}).Debug("learned addresses swept")
	}
	// the DNS counters of namespaces that went, once a policy is in force (before, every identity is unknown)
	if snap := e.Snapshot(); snap.Generation > 0 {
		if err := e.dp.ForgetDNSStats(func(id uint32) bool { return snap.Namespace(id) != "" }); err != nil {
			e.log.WithError(err).Warn("removing the DNS counters of namespaces that went")
		}
	}
}
