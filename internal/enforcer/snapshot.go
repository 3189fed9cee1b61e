package enforcer

import (
	"maps"
	"time"

	"github.com/moatfw/moat/internal/resolve"
)

// Snapshot is the enforcer at one moment: what the status, readiness, the policies, the report, trace and the
// flow log answer from. The enforcer publishes one at the end of every apply, so reading it never waits on an
// apply in progress. Nothing in it may be modified: its State, its findings, Stale and its rule maps are shared
// with the enforcer, which replaces them (the rule maps: copies them) rather than change them in place.
type Snapshot struct {
	Started    time.Time
	Applied    time.Time // when the generation in force was applied
	Generation uint64    // 0: nothing applied yet
	State      State     // the desired state in force
	Identities map[string]uint32
	// Stale holds the identities whose newest policy the datapath could not take, and why.
	Stale map[uint32]string
	// Problems and Warnings are what the last apply found about the objects (namespace labels, selectors).
	Problems, Warnings []resolve.Finding
	// Rules names every rule that has an id, and RuleIDs is the other way round.
	Rules   map[uint32]resolve.RuleKey
	RuleIDs map[resolve.RuleKey]uint32
	// IPCacheRefused counts the addresses the ipcache had no room for; IPCacheEntries the entries it holds (as
	// written: the status and metrics read it instead of walking the kernel's trie, 300,000 entries one system
	// call each at 150,000 dual-stack pods).
	IPCacheRefused int
	IPCacheEntries int
	// ContactLost is since when the source cannot be reached (zero: it can), and ContactWhy why. Read when the
	// snapshot is taken, not when it was published.
	ContactLost time.Time
	ContactWhy  string
	// SourceStale is what the source knows to be out of date ("": nothing), read when the snapshot is taken.
	SourceStale string
	// FQDNSlots are each identity's fqdn patterns' slots, as in force (the learned addresses hold them by slot).
	FQDNSlots map[uint32]map[string]int

	lingering map[uint32]lingerer
}

// Snapshot is the enforcer as of its last apply (or its start), with the source's contact as of now. It takes no
// lock an apply holds.
func (e *Enforcer) Snapshot() Snapshot {
	s := *e.published.Load()
	if c, ok := e.contact.Load().(contactSource); ok {
		s.ContactLost, s.ContactWhy = c.Contact()
		s.SourceStale = c.Stale()
	}
	return s
}

// publish makes what the enforcer holds now the snapshot readers get. Called with mu held, after every change.
func (e *Enforcer) publish() {
	e.rulesShared = true // the next new rule copies the maps first
	e.published.Store(&Snapshot{Started: e.started, Applied: e.appliedAt, Generation: e.generation, State: e.state,
		Identities: maps.Clone(e.identities), Stale: e.stale, Problems: e.findings.problems,
		Warnings: e.findings.warnings, Rules: e.ruleKeys, RuleIDs: e.rules, IPCacheRefused: len(e.ipcacheRefused),
		IPCacheEntries: e.prefixes.writtenCount(), FQDNSlots: maps.Clone(e.slots.of), lingering: maps.Clone(e.lingering)})
}

// Resolve is what the state in force resolves to, with the rule ids in force: the reference evaluator's input
// for the policy the datapath enforces.
func (s Snapshot) Resolve() resolve.Output {
	in := resolveInput(s.State, s.Identities, s.lingering)
	in.RuleID = func(k resolve.RuleKey) uint32 { return s.RuleIDs[k] }
	out := resolve.Resolve(in)
	for id, p := range out.Policies {
		if slots, ok := s.FQDNSlots[id]; ok {
			p.FQDNSlots = slots
		}
	}
	return out
}

// Identity is a namespace's identity: the one published, else the one a gone namespace's pods still hold.
func (s Snapshot) Identity(namespace string) (uint32, bool) {
	if id, ok := s.Identities[namespace]; ok {
		return id, true
	}
	for id, l := range s.lingering {
		if l.namespace != nil && l.namespace.Name == namespace {
			return id, true
		}
	}
	return 0, false
}

// Namespace is the name of the namespace an identity stands for ("" for none, or when not known).
func (s Snapshot) Namespace(id uint32) string {
	return namespaceOf(s.Identities, s.lingering, id)
}

// namespaceOf is the namespace an identity stands for: a namespace of identities, or a gone one whose pods
// still hold it.
func namespaceOf(identities map[string]uint32, lingering map[uint32]lingerer, id uint32) string {
	if id == 0 {
		return ""
	}
	if l, ok := lingering[id]; ok && l.namespace != nil {
		return l.namespace.Name
	}
	for name, nid := range identities {
		if nid == id {
			return name
		}
	}
	return ""
}
