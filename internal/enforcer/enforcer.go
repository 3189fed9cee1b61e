// Package enforcer is the host agent's core: it keeps the datapath's maps equal to the desired state (namespace
// identities, the ipcache entries of the configuration, each identity's compiled policy), changing only what
// changed, and swapping each identity's policy atomically.
package enforcer

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/resolve"
)

// State is the desired state from a source (a folder, or the Kubernetes API).
type State struct {
	Config     *v1alpha1.FirewallConfig
	Policies   []v1alpha1.FirewallPolicy
	Namespaces []v1alpha1.Namespace
	// What the source could not use (the last good version of an object stays in Policies), and where each
	// policy came from; both only for reporting.
	Problems []ObjectProblem
	Origins  map[string]string // policy name -> "file (document n)" or "kubernetes"
	// Addresses the cluster classifies: pods on other nodes and Services (by namespace), nodes, cluster ranges.
	// Pods on this node are the plugin's to write.
	Addresses []Address
	// AddressChanges is, when the source can tell, what changed of Addresses since the source last gave its state
	// or its address changes: each prefix whose entry may differ, with what it says of it now (nil: nothing). An
	// apply in which no namespace's identity and no configured range changed then writes only these, so a policy
	// change costs the same at 5,000 pods as at 150,000. nil: not known (the whole list decides).
	AddressChanges map[netip.Prefix]*Address
	// allAddresses, when the source keeps its addresses (the Kubernetes source's book), yields them instead of
	// Addresses, read only when every address is applied; it takes the source's changes too
	allAddresses iter.Seq[Address]
	// inForce: this is the state in force, applied again (releaseUnheld); its addresses are e.prefixes', with
	// every change since it was loaded
	inForce bool
	// ServiceRanges says where the source learns the Service ranges from, for the status ("" when it has no
	// such choice).
	ServiceRanges string
	// HostPorts are the pods' hostPorts on node addresses, so that a pod reaching another through one is decided
	// as pod to pod (the Kubernetes source; none in folder mode).
	HostPorts []HostPort
	// DNSResolvers are the trusted resolvers the source found (the Kubernetes source: the cluster DNS Service's
	// cluster IPs and endpoints), used unless FirewallConfig lists its own.
	DNSResolvers []netip.Addr
}

// HostPort is a pod's hostPort on a node address, with the pod's namespace for its identity.
type HostPort struct {
	Node      netip.Addr
	Protocol  uint8
	Port      uint16
	Pod       netip.Addr
	PodPort   uint16
	Namespace string
	Local     bool // the pod runs on this node
}

// addresses yields the addresses of s: from the source when it keeps them, or the list.
func (s State) addresses() iter.Seq[Address] {
	if s.allAddresses != nil {
		return s.allAddresses
	}
	return slices.Values(s.Addresses)
}

// Address is an ipcache entry a source wants: a prefix, what it is, and for pods and Services their namespace.
type Address struct {
	Prefix    netip.Prefix
	Class     bpf.Class
	Namespace string
}

// ObjectProblem is an object the source could not use (Kind is empty for a file that could not be read, or a
// document that is not an object).
type ObjectProblem struct {
	Kind, Name, Origin, Message string
}

// Enforcer writes desired state into a loaded datapath.
type Enforcer struct {
	dp  *bpf.Datapath
	log *logrus.Entry

	mu          sync.Mutex
	reconciling sync.Mutex
	identities  map[string]uint32          // namespace -> identity, as published in the identities map
	lingering   map[uint32]lingerer        // identities of gone namespaces that pods of this node still hold
	rules       map[resolve.RuleKey]uint32 // rule -> id, stable while the enforcer lives
	ruleKeys    map[uint32]resolve.RuleKey
	rulesShared bool                              // a snapshot holds rules and ruleKeys: copy them before adding to them
	inForce     map[uint32][sha256.Size]byte      // identity -> fingerprint of the policy it uses now
	tries       map[[sha256.Size]byte]*sharedTrie // fingerprint -> its compiled trie, shared by identities
	dnsDeny     *nameSets[bpf.DNSValue]           // the names each identity may not resolve, in dns_sets and dns_names
	fqdn        *nameSets[bpf.FQDNValue]          // each identity's fqdn patterns, in fqdn_sets and fqdn_names
	// each identity's fqdn patterns in slot order, as last applied (the user-space learner reads them)
	fqdnPatterns atomic.Pointer[map[uint32][]string]
	dns          resolve.DNS // how names are learned, as last applied
	slots        fqdnSlots   // each identity's fqdn patterns' slots
	// the ipcache entries the configuration makes (cluster ranges, nodes, the metadata API), as last applied
	configIPCache map[netip.Prefix]bpf.IPCacheValue
	// prefixes the ipcache had no room for (each retried when it changes again, or at the next whole apply)
	ipcacheRefused map[netip.Prefix]bpf.IPCacheValue // with the entry that did not fit
	// the namespace identities the ipcache's addresses were last written with, nil until an apply wrote them all
	// and after any address change that could not be applied (so the next apply writes them all again)
	addressIdentities map[string]uint32
	// what the source says of each address of the cluster now (its pods elsewhere, Services, nodes, ranges): the
	// last whole list with every change since, so that writing every address again needs no new list; and what
	// the datapath's ipcache holds (all but this node's pods, which are the plugin's)
	prefixes prefixTable
	// whether prefixes holds the source's addresses (a whole list, or changes since one)
	addressesKnown bool
	// this host's own addresses (SetHostAddresses): node class, so its bridge's gateway inside its pod range (the
	// source of the kubelet's probes and of portmap's hairpin) is never taken for a pod of no known namespace
	hostAddrs  []netip.Addr
	generation uint64
	metrics    atomic.Pointer[Metrics] // nil until NewMetrics
	// what Run enforces, when it can say whether it is in touch (a contactSource; nil before)
	contact atomic.Value
	// the snapshot of the last apply, for readers that must not wait on the next one
	published atomic.Pointer[Snapshot]

	// what the API socket reports
	started   time.Time
	appliedAt time.Time                                    // when the generation in force was applied
	state     State                                        // the last desired state applied (trace resolves it again when asked)
	stale     map[uint32]string                            // identities whose newest policy the datapath could not take, and why
	findings  findings                                     // what the last apply found about its objects (labels, selectors)
	errors    *errorLog                                    // the last errors logged
	flows     *hub[FlowRecord, agentapi.FlowFilter]        // recent flow events and their followers
	answers   *hub[agentapi.DNSAnswer, agentapi.DNSFilter] // recent DNS answers and their followers
}

// New adopts the identities the pinned datapath already publishes, so they survive enforcer restarts.
func New(dp *bpf.Datapath, log *logrus.Entry) (*Enforcer, error) {
	errs := newErrorLog(20)
	log.Logger.AddHook(errs)
	e := &Enforcer{dp: dp, log: log, identities: map[string]uint32{}, rules: map[resolve.RuleKey]uint32{},
		ruleKeys: map[uint32]resolve.RuleKey{}, inForce: map[uint32][sha256.Size]byte{},
		tries: map[[sha256.Size]byte]*sharedTrie{}, dnsDeny: newNameSets(dnsDenyStore(dp)), fqdn: newNameSets(fqdnStore(dp)),
		prefixes:       prefixTable{},
		ipcacheRefused: map[netip.Prefix]bpf.IPCacheValue{}, started: time.Now(), errors: errs, flows: newHub(10000, selects),
		answers: newHub(10000, selectsDNS)}
	published, err := dp.NamespaceIdentities()
	if err != nil {
		return nil, err
	}
	maps.Copy(e.identities, published)
	if len(published) > 0 {
		log.WithField("namespaces", len(published)).Info("adopted published namespace identities")
	}
	// ipcache entries a previous run wrote are this run's to keep or remove: all but the local pods' (the plugin's)
	entries, err := dp.IPCacheEntries()
	if err != nil {
		return nil, err
	}
	eps, err := dp.Endpoints()
	if err != nil {
		return nil, err
	}
	// a pod tagged with an identity no namespace publishes belongs to a namespace that went while a previous run
	// lived: the identity lingers with the policy the datapath holds for it (its labels are not known any more)
	e.lingering = map[uint32]lingerer{}
	publishedIDs := map[uint32]bool{}
	for _, id := range published {
		publishedIDs[id] = true
	}
	for _, ep := range eps {
		if ep.Identity != 0 && !publishedIDs[ep.Identity] {
			e.lingering[ep.Identity] = lingerer{}
		}
	}
	if len(e.lingering) > 0 {
		log.WithField("identities", len(e.lingering)).Info("adopted identities of gone namespaces that pods still hold")
	}
	local := map[netip.Addr]bool{}
	for _, ep := range eps {
		for _, a := range ep.Addrs() {
			local[a] = true
		}
	}
	for p, v := range entries {
		if p.IsSingleIP() && local[p.Addr()] && bpf.Class(v.Class) == bpf.ClassPod {
			continue
		}
		e.prefixes.setIPCache(p, v)
	}
	e.publish()
	return e, nil
}

// Identities is a copy of namespace -> identity.
func (e *Enforcer) Identities() map[string]uint32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.identities)
}

// RuleCount is the number of rules of the policies in force.
func (e *Enforcer) RuleCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, p := range e.state.Policies {
		n += len(p.Spec.Egress) + len(p.Spec.Ingress)
	}
	return n
}

// lingerer is an identity whose namespace is gone while pods of this node still hold it.
//
// Such pods keep their identity and go on being decided by the policy their namespace had, as the last labels
// seen select it (after an enforcer restart, the labels are not known: the policy compiled last stays as it is).
// The alternatives were worse: identity 0 would hand the pods to the cluster defaults, which are open unless
// FirewallConfig says otherwise (a namespace deletion would open its pods to the world while they drain), and
// isolating them would cut what they still serve during their graceful termination with no policy saying so.
// The identity is withdrawn from the identities map at once (the plugin tags no new pod with it) and released,
// policy slot included, when the last endpoint holding it is gone; until then no other namespace gets its number
// (invariant 2). A namespace of the same name that comes back gets it back.
type lingerer struct {
	namespace *v1alpha1.Namespace // as last seen; nil when adopted from the endpoints map after a restart
}

// Apply makes the datapath enforce s. Every identity whose compiled policy changed is swapped in one batch;
// then the generation is bumped so established flows are decided again. A new namespace's identity is published
// only once its policy is in place, so the plugin never tags a pod with an identity that has none. Identities of
// namespaces that are gone are withdrawn (the plugin cannot tag new pods with them) and linger while pods of this
// node hold them (see lingerer).
func (e *Enforcer) Apply(s State) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.publish()
	err := e.apply(s)
	if err != nil {
		e.addressIdentities = nil // the state's address changes may not all be written: the next apply writes all
	}
	return err
}

// apply is Apply with mu held.
func (e *Enforcer) apply(s State) error {
	start := time.Now()
	held, err := e.heldIdentities()
	if err != nil {
		return err
	}
	present := make(map[string]bool, len(s.Namespaces))
	for _, ns := range s.Namespaces {
		present[ns.Name] = true
	}
	e.holdByPods(held, s, present)
	ids := maps.Clone(e.identities) // namespace -> identity once this apply is done
	lingering := maps.Clone(e.lingering)
	var fresh []string       // namespaces whose identity is to be published
	var used map[uint32]bool // the identities taken, once a namespace needs a free one
	for _, ns := range s.Namespaces {
		if _, ok := ids[ns.Name]; ok {
			continue
		}
		id := uint32(0)
		for lid, l := range lingering {
			if l.namespace != nil && l.namespace.Name == ns.Name {
				id = lid // the namespace came back while its pods still run
				delete(lingering, lid)
			}
		}
		if id == 0 {
			if used == nil {
				used = usedIdentities(ids, lingering, held)
			}
			if id, err = freeIdentity(used); err != nil {
				return err
			}
		}
		if used != nil {
			used[id] = true
		}
		ids[ns.Name] = id
		fresh = append(fresh, ns.Name)
	}
	var gone []string
	for name, id := range ids {
		if present[name] {
			continue
		}
		gone = append(gone, name)
		delete(ids, name)
		if held[id] {
			l := lingerer{}
			for i := range e.state.Namespaces {
				if e.state.Namespaces[i].Name == name {
					l.namespace = e.state.Namespaces[i].DeepCopy()
				}
			}
			if l.namespace == nil { // adopted from the map and gone before any state named it: the name at least
				l.namespace = &v1alpha1.Namespace{}
				l.namespace.Name = name
			}
			lingering[id] = l
		}
	}
	var released []uint32 // policy slots no namespace and no endpoint needs any more
	for _, name := range gone {
		if id := e.identities[name]; !held[id] {
			released = append(released, id)
		}
	}
	for id := range lingering {
		if !held[id] {
			delete(lingering, id)
			released = append(released, id)
		}
	}

	in := resolveInput(s, ids, lingering)
	in.RuleID = e.ruleID
	out := resolve.Resolve(in)
	e.noteFindings(out)

	prevSlots, err := e.assignFQDNSlots(out.Policies)
	if err != nil {
		return err
	}
	changed, stale, err := e.swapPolicies(out.Policies)
	if err != nil {
		return err
	}
	e.keepStaleSlots(out.Policies, stale, prevSlots)
	if err := e.syncNames(out.Policies); err != nil {
		return err
	}
	if err := e.syncDNS(out.DNS, s); err != nil {
		return err
	}
	ipcacheChanged, err := e.syncIPCache(out, s, in.Identities)
	if err != nil {
		e.addressIdentities = nil
		return err
	}
	hostPortsChanged, err := e.syncHostPorts(s.HostPorts, in.Identities)
	if err != nil {
		return err
	}
	configChanged := false
	if err := e.dp.UpdateConfig(func(c *bpf.Config) {
		d := [2]uint8{uint8(out.Defaults.DefaultEgress), uint8(out.Defaults.DefaultIngress)}
		configChanged = c.DefaultVerdict != d
		c.DefaultVerdict = d
		c.CtMaxPerEndpoint = out.ConntrackPerEndpoint // a bound, not a verdict: no generation bump
		// checked for new flows only, so no generation bump either
		if out.NoSourceValidation {
			c.Flags |= uint32(bpf.ConfigNoSourceCheck)
		} else {
			c.Flags &^= uint32(bpf.ConfigNoSourceCheck)
		}
	}); err != nil {
		return err
	}
	for _, name := range fresh {
		id := ids[name]
		if err := e.dp.SetNamespaceIdentity(name, id); err != nil {
			return err
		}
		e.identities[name] = id
		if _, revived := e.lingering[id]; revived {
			delete(e.lingering, id)
			e.log.WithFields(logrus.Fields{"namespace": name, "identity": id}).Info("namespace back: its pods' identity published again")
		} else {
			e.log.WithFields(logrus.Fields{"namespace": name, "identity": id}).Info("namespace identity allocated")
		}
	}
	for _, name := range gone {
		id := e.identities[name]
		if err := e.dp.DeleteNamespaceIdentity(name); err != nil {
			return err
		}
		delete(e.identities, name)
		if l, ok := lingering[id]; ok {
			e.lingering[id] = l
			e.log.WithFields(logrus.Fields{"namespace": name, "identity": id}).
				Info("namespace gone: identity withdrawn; its pods on this node keep it and its policy until they end")
		} else {
			e.log.WithFields(logrus.Fields{"namespace": name, "identity": id}).Info("namespace gone: identity withdrawn")
		}
	}
	for _, id := range released {
		if err := e.dp.DeletePolicy(id); err != nil {
			return err
		}
		if err := e.forgetLearned(id); err != nil {
			return err
		}
		e.release(id)
		delete(e.lingering, id)
		e.log.WithField("identity", id).Info("identity released: no namespace and no pod holds it")
	}
	// the addresses live on in e.prefixes (with every change since): the state in force keeps none of its own
	s.Addresses, s.AddressChanges, s.allAddresses, s.inForce = nil, nil, nil, true
	e.state, e.stale = s, stale
	if len(changed) > 0 || ipcacheChanged || hostPortsChanged || configChanged || len(gone) > 0 || len(released) > 0 || e.generation == 0 {
		gen, err := e.bump(start)
		if err != nil {
			return err
		}
		e.log.WithFields(logrus.Fields{"generation": gen, "identitiesChanged": len(changed),
			"took": time.Since(start).Round(time.Microsecond)}).Info("policy applied")
	}
	return nil
}

// bump moves the generation after an apply that started at start changed something, so established flows are
// decided again, and records when and how long.
func (e *Enforcer) bump(start time.Time) (uint64, error) {
	gen, err := e.dp.BumpGeneration()
	if err != nil {
		return 0, err
	}
	e.generation, e.appliedAt = gen, time.Now()
	if m := e.metrics.Load(); m != nil {
		m.ApplySeconds.Observe(time.Since(start).Seconds())
	}
	return gen, nil
}

// resolveInput is what the resolver takes for state s: its namespaces with identities ids, and the lingering
// identities whose namespace is known, so that their pods and the rules naming them as peers are decided as
// before the namespace went. RuleID is the caller's to set.
func resolveInput(s State, ids map[string]uint32, lingering map[uint32]lingerer) resolve.Input {
	in := resolve.Input{Config: s.Config, Policies: s.Policies, Namespaces: s.Namespaces, Identities: ids}
	if len(lingering) == 0 {
		return in
	}
	in.Namespaces = slices.Clone(s.Namespaces)
	in.Identities = maps.Clone(ids)
	for id, l := range lingering {
		if l.namespace != nil {
			in.Namespaces = append(in.Namespaces, *l.namespace)
			in.Identities[l.namespace.Name] = id
		}
	}
	return in
}

// heldIdentities is the set of identities the endpoints of this node carry.
// holdByPods marks held the identities of the namespaces whose pods the source still lists, on other nodes too:
// while a deleted namespace's pods drain there, this node's rules by namespace go on matching them (their
// addresses keep the identity in the ipcache) instead of taking them for plain cluster traffic. Only a namespace
// this enforcer knew by name holds it: after a restart, a gone namespace with no pod on this node is not known.
// Only namespaces that are gone (not in present) or lingering are looked for: the others keep their identity
// anyway, so an apply in which no namespace went reads no address.
func (e *Enforcer) holdByPods(held map[uint32]bool, s State, present map[string]bool) {
	byName := map[string]uint32{}
	for id, l := range e.lingering {
		if l.namespace != nil {
			byName[l.namespace.Name] = id
		}
	}
	for name, id := range e.identities {
		if !present[name] {
			byName[name] = id
		}
	}
	if len(byName) == 0 {
		return
	}
	hold := func(a Address) {
		if a.Class != bpf.ClassPod || a.Namespace == "" {
			return
		}
		if id, ok := byName[a.Namespace]; ok {
			held[id] = true
		}
	}
	switch {
	case s.inForce: // the addresses as they are now
		for a := range e.prefixes.addresses() {
			hold(a)
		}
	case s.AddressChanges != nil && e.addressesKnown: // those in force, as the changes make them
		for a := range e.prefixes.addresses() {
			if _, ok := s.AddressChanges[a.Prefix]; !ok {
				hold(a)
			}
		}
		for _, a := range s.AddressChanges {
			if a != nil {
				hold(*a)
			}
		}
	default:
		for a := range s.addresses() {
			hold(a)
		}
	}
}

func (e *Enforcer) heldIdentities() (map[uint32]bool, error) {
	eps, err := e.dp.Endpoints()
	if err != nil {
		return nil, err
	}
	held := map[uint32]bool{}
	for _, ep := range eps {
		if ep.Identity != 0 {
			held[ep.Identity] = true
		}
	}
	return held, nil
}

// releaseUnheld applies the state in force again when a lingering identity lost its last endpoint, which
// releases it. The reconcile calls it after removing the endpoints of pods that are gone.
func (e *Enforcer) releaseUnheld() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.publish()
	if len(e.lingering) == 0 {
		return nil
	}
	held, err := e.heldIdentities()
	if err != nil {
		return err
	}
	for id := range e.lingering {
		if !held[id] {
			s := e.state
			s.AddressChanges = map[netip.Prefix]*Address{} // none since: the addresses are e.prefixes'
			return e.apply(s)
		}
	}
	return nil
}

// syncIPCache writes the configuration's classes (metadata API, cluster, nodes) and the source's addresses (their
// namespaces' identities from identities), and removes what it wrote before and no longer wants; entries of pods
// on this node belong to the plugin. Of two
// claims on one prefix, the metadata API wins, then pods and Services, then nodes, then the cluster.
// syncHostPorts makes the datapath's hostports what the source lists, each with its pod's namespace identity (a
// pod of a namespace without one is left out: its flows stay node traffic). It reports whether anything changed.
func (e *Enforcer) syncHostPorts(list []HostPort, identities map[string]uint32) (bool, error) {
	want := map[bpf.HostPortKey]bpf.HostPort{}
	for _, hp := range list {
		id := identities[hp.Namespace]
		if id == 0 || hp.Node.Unmap().Is4() != hp.Pod.Unmap().Is4() {
			continue
		}
		b := bpf.HostPort{Node: hp.Node.Unmap(), Protocol: hp.Protocol, Port: hp.Port, Pod: hp.Pod.Unmap(),
			PodPort: hp.PodPort, Identity: id, Local: hp.Local}
		want[b.Key()] = b
	}
	have, err := e.dp.HostPorts()
	if err != nil {
		return false, err
	}
	changed := false
	for k, b := range want {
		if old, ok := have[k]; ok && old == b.Value() {
			continue
		}
		if err := e.dp.SetHostPort(b); err != nil {
			return changed, err
		}
		changed = true
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			if err := e.dp.DeleteHostPort(k); err != nil {
				return changed, err
			}
			changed = true
		}
	}
	return changed, nil
}

// syncIPCache makes the ipcache what the configuration (cluster ranges, nodes, the metadata API) and the
// source's addresses say, writing only the entries that differ. When the configured ranges did not change since
// the addresses were last written and the source says which addresses changed, only those are looked at
// (applyAddressChanges), and the addresses of namespaces whose identity changed; otherwise every address is.
func (e *Enforcer) syncIPCache(out resolve.Output, s State, identities map[string]uint32) (bool, error) {
	config := map[netip.Prefix]bpf.IPCacheValue{}
	for _, p := range out.Cluster {
		config[p] = bpf.IPCacheValue{Class: uint8(bpf.ClassCluster)}
	}
	for _, p := range out.Nodes {
		config[p] = bpf.IPCacheValue{Class: uint8(bpf.ClassNode)}
	}
	for _, a := range e.hostAddrs {
		config[netip.PrefixFrom(a, a.BitLen())] = bpf.IPCacheValue{Class: uint8(bpf.ClassNode)}
	}
	for _, p := range out.Metadata {
		config[p] = bpf.IPCacheValue{Class: uint8(bpf.ClassMetadata)}
	}
	if s.AddressChanges != nil && e.addressIdentities != nil && maps.Equal(config, e.configIPCache) {
		changed, err := e.applyAddressChanges(s.AddressChanges, identities)
		if err != nil || maps.Equal(identities, e.addressIdentities) {
			return changed, err
		}
		// namespaces came, went or changed identity: their addresses, and only theirs, are written again
		moved := map[string]bool{}
		for name, id := range identities {
			if e.addressIdentities[name] != id {
				moved[name] = true
			}
		}
		for name := range e.addressIdentities {
			if _, ok := identities[name]; !ok {
				moved[name] = true
			}
		}
		for a := range e.prefixes.addresses() {
			if a.Namespace == "" || !moved[a.Namespace] {
				continue
			}
			v, present := e.ipcacheEntry(a.Prefix, &a, identities)
			c, err := e.setIPCache(a.Prefix, v, present)
			if err != nil {
				return changed, err
			}
			changed = changed || c
		}
		e.addressIdentities = maps.Clone(identities)
		return changed, nil
	}
	e.addressIdentities = nil // set again once every address is written
	clear(e.ipcacheRefused)   // each is tried again below
	e.configIPCache = config
	if !s.inForce {
		e.prefixes.clearAddresses()
		for a := range s.addresses() {
			e.prefixes.setAddress(a)
		}
		e.addressesKnown = true
	}
	// what the ipcache is to hold for p (no map of it all: 300,000 entries at 150,000 dual-stack pods)
	want := func(p netip.Prefix) (bpf.IPCacheValue, bool) {
		if a, ok := e.prefixes.address(p); ok {
			return e.ipcacheEntry(p, &a, identities)
		}
		return e.ipcacheEntry(p, nil, identities)
	}
	changed := false
	set := func(p netip.Prefix, v bpf.IPCacheValue, present bool) error {
		c, err := e.setIPCache(p, v, present)
		changed = changed || c
		return err
	}
	for p, v := range e.prefixes.written() { // first what goes, so that what comes finds room
		if _, ok := want(p); !ok {
			if err := set(p, v, false); err != nil {
				return changed, err
			}
		}
	}
	for p := range e.configIPCache {
		if v, ok := want(p); ok {
			if err := set(p, v, true); err != nil {
				return changed, err
			}
		}
	}
	for p, en := range e.prefixes.m.all() {
		if !en.isAddress {
			continue
		}
		if _, ok := e.configIPCache[p]; ok {
			continue // written above
		}
		a := en.address(p)
		if v, ok := e.ipcacheEntry(p, &a, identities); ok {
			if err := set(p, v, true); err != nil {
				return changed, err
			}
		}
	}
	e.addressIdentities = maps.Clone(identities)
	return changed, nil
}

// applyAddressChanges writes the ipcache entries of the prefixes that changed, with the namespaces' identities
// identities: what goes first, so that what comes finds room.
func (e *Enforcer) applyAddressChanges(changes map[netip.Prefix]*Address, identities map[string]uint32) (bool, error) {
	e.addressesKnown = true
	for p, a := range changes {
		if a == nil {
			e.prefixes.dropAddress(p)
		} else {
			e.prefixes.setAddress(*a)
		}
	}
	changed := false
	for _, gone := range []bool{true, false} {
		if !gone {
			// what did not fit before is tried again once entries went (each is still wanted: a change of its
			// prefix, below, replaces it, and a change of identities writes every address)
			for p, v := range maps.Clone(e.ipcacheRefused) {
				if _, ok := changes[p]; ok {
					continue
				}
				c, err := e.setIPCache(p, v, true)
				if err != nil {
					return changed, err
				}
				changed = changed || c
			}
		}
		for p, a := range changes {
			v, present := e.ipcacheEntry(p, a, identities)
			if present == gone {
				continue
			}
			c, err := e.setIPCache(p, v, present)
			if err != nil {
				return changed, err
			}
			changed = changed || c
		}
	}
	return changed, nil
}

// ipcacheEntry is the ipcache entry of a prefix, from the configuration's claim on it and the source's address
// (nil: none): the metadata API over everything, then the stronger class (a pod or Service over a node over the
// cluster's ranges), the source's address on a tie.
func (e *Enforcer) ipcacheEntry(p netip.Prefix, a *Address, identities map[string]uint32) (bpf.IPCacheValue, bool) {
	cfg, hasCfg := e.configIPCache[p]
	if a == nil || (hasCfg && bpf.Class(cfg.Class) == bpf.ClassMetadata) {
		return cfg, hasCfg
	}
	v := bpf.IPCacheValue{Class: uint8(a.Class)}
	switch {
	case a.Namespace != "":
		v.Identity = identities[a.Namespace]
	case a.Class == bpf.ClassPod:
		v.Identity = bpf.IdentityUnknownPod // a pod range: its addresses that no known pod holds
	}
	if hasCfg && strength(bpf.Class(cfg.Class)) > strength(a.Class) {
		return cfg, true
	}
	return v, true
}

// setIPCache writes one ipcache entry (or deletes it when !present) unless the datapath holds it so already.
func (e *Enforcer) setIPCache(p netip.Prefix, v bpf.IPCacheValue, present bool) (bool, error) {
	old, had := e.prefixes.ipcache(p)
	switch {
	case present && had && old == v:
		return false, nil
	case present:
		if err := e.dp.SetIPCache(p, bpf.Class(v.Class), v.Identity); err != nil {
			if !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.E2BIG) {
				return false, err
			}
			// full: the address stays decided by what holds it (its node's pod range, a cluster range), and
			// the status says so; nothing else waits on it
			e.ipcacheRefused[p] = v
			return false, nil
		}
		delete(e.ipcacheRefused, p)
		e.prefixes.setIPCache(p, v)
	default:
		delete(e.ipcacheRefused, p)
		if !had {
			return false, nil
		}
		if err := e.dp.DeleteIPCache(p); err != nil {
			return false, err
		}
		e.prefixes.dropIPCache(p)
	}
	return true, nil
}

// SetHostAddresses makes addrs this host's own addresses, decided as the node's (a bridge's gateway address
// inside the node's pod range included), and applies the state in force again when they changed.
func (e *Enforcer) SetHostAddresses(addrs []netip.Addr) error {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	e.mu.Lock()
	defer e.mu.Unlock()
	if slices.Equal(addrs, e.hostAddrs) {
		return nil
	}
	e.hostAddrs = addrs
	if e.generation == 0 {
		return nil // the first apply writes them
	}
	defer e.publish()
	s := e.state
	s.AddressChanges = map[netip.Prefix]*Address{}
	return e.apply(s)
}

// AddressUpdate is what changed of the cluster's addresses since the state was last loaded.
type AddressUpdate struct {
	Changed   map[netip.Prefix]*Address // what the source says of each prefix now; nil: nothing any more
	HostPorts *[]HostPort               // the whole list, when it changed
}

// errNeedsState: an address update the enforcer cannot apply on its own (the first apply has not been made, or a
// namespace it names has no published identity: new, or gone with pods lingering); the whole state decides.
var errNeedsState = errors.New("the whole state is needed")

// ApplyAddresses applies a burst of address changes on their own: the ipcache entries of the prefixes that
// changed and the hostPorts, at the cost of what changed, with no policy compiled. The generation moves when
// an entry did, so established flows to and from those addresses are decided again.
func (e *Enforcer) ApplyAddresses(u AddressUpdate) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	defer e.publish()
	start := time.Now()
	if e.generation == 0 {
		e.addressIdentities = nil
		return errNeedsState
	}
	known := func(ns string) bool {
		_, ok := e.identities[ns]
		return ns == "" || ok
	}
	for _, a := range u.Changed {
		if a != nil && !known(a.Namespace) {
			e.addressIdentities = nil // these changes are taken: the whole state's apply writes every address
			return errNeedsState
		}
	}
	if u.HostPorts != nil {
		for _, hp := range *u.HostPorts {
			if !known(hp.Namespace) {
				e.addressIdentities = nil
				return errNeedsState
			}
		}
	}
	changed, err := e.applyAddressChanges(u.Changed, e.identities)
	if err != nil {
		e.addressIdentities = nil // the next apply writes every address
		return err
	}
	if u.HostPorts != nil {
		c, err := e.syncHostPorts(*u.HostPorts, e.identities)
		if err != nil {
			return err
		}
		changed = changed || c
		s := e.state // a snapshot may hold the state: replaced, not changed in place
		s.HostPorts = *u.HostPorts
		e.state = s
	}
	if !changed {
		return nil
	}
	gen, err := e.bump(start)
	if err != nil {
		return err
	}
	e.log.WithFields(logrus.Fields{"generation": gen, "prefixes": len(u.Changed),
		"took": time.Since(start).Round(time.Microsecond)}).Debug("addresses applied")
	return nil
}

// sharedTrie is a compiled policy in the kernel and how many identities use it.
type sharedTrie struct {
	trie  *bpf.PolicyTrie
	users int
}

// swapPolicies puts the identities' resolved policies in force, compiling only those whose rules changed: an
// identity whose policy has the fingerprint it has now is left alone, and one whose new policy another identity
// already uses takes that trie (identities whose rules are the same share one). Returns the identities that
// changed, and those whose policy the datapath cannot hold (their last good one stays) with why.
func (e *Enforcer) swapPolicies(policies map[uint32]*policy.IdentityPolicy) (map[uint32][sha256.Size]byte, map[uint32]string, error) {
	changed := map[uint32][sha256.Size]byte{}
	stale := map[uint32]string{}
	tries := map[uint32]*bpf.PolicyTrie{}
	made := map[[sha256.Size]byte]*sharedTrie{} // compiled in this call, not yet in e.tries
	fingerprints := policy.NewFingerprinter()
	for id, p := range policies {
		fp := fingerprints.Of(p)
		if old, ok := e.inForce[id]; ok && old == fp {
			continue
		}
		st := e.tries[fp]
		if st == nil {
			st = made[fp]
		}
		if st == nil {
			entries, err := policy.Compile(p)
			if err != nil {
				// a policy the datapath cannot hold: keep the identity's last good one
				e.log.WithError(err).WithField("identity", id).Error("policy not applied; the last good one stays")
				stale[id] = err.Error()
				continue
			}
			t, err := e.dp.NewPolicyTrie(entries)
			if err != nil {
				closeTries(made)
				return nil, nil, fmt.Errorf("policy of identity %d: %w", id, err)
			}
			st = &sharedTrie{trie: t}
			made[fp] = st
		}
		tries[id], changed[id] = st.trie, fp
	}
	if len(tries) > 0 {
		if err := e.dp.SetPolicies(tries); err != nil {
			closeTries(made)
			return nil, nil, err
		}
	}
	maps.Copy(e.tries, made)
	// every new use is counted before any old one is dropped: an identity may take the trie another identity of
	// this apply leaves, which would otherwise reach no users and be closed first
	for _, fp := range changed {
		e.tries[fp].users++
	}
	for id, fp := range changed {
		e.release(id)
		e.inForce[id] = fp
	}
	return changed, stale, nil
}

// release drops an identity's use of its trie, closing the trie when no identity uses it any more (the policy
// map no longer refers to it either: the identity was pointed elsewhere, or deleted).
func (e *Enforcer) release(id uint32) {
	fp, ok := e.inForce[id]
	if !ok {
		return
	}
	delete(e.inForce, id)
	if st := e.tries[fp]; st != nil {
		if st.users--; st.users <= 0 {
			st.trie.Close()
			delete(e.tries, fp)
		}
	}
}

func closeTries(tries map[[sha256.Size]byte]*sharedTrie) {
	for _, st := range tries {
		st.trie.Close()
	}
}

func (e *Enforcer) ruleID(k resolve.RuleKey) uint32 {
	if id, ok := e.rules[k]; ok {
		return id
	}
	if e.rulesShared {
		e.rules, e.ruleKeys, e.rulesShared = maps.Clone(e.rules), maps.Clone(e.ruleKeys), false
	}
	id := uint32(len(e.rules) + 1)
	for e.ruleKeys[id] != (resolve.RuleKey{}) || id == 0 || id >= bpf.MaxRules {
		id = (id + 1) % bpf.MaxRules // ids are never 0; past the counters' size they wrap to free ones
	}
	e.rules[k], e.ruleKeys[id] = id, k
	return id
}

// usedIdentities are the identities a namespace (ids), a lingering identity or an endpoint (held) holds: an
// identity is released only once its namespace is gone and its last pod with it. Made once per apply, not per
// new namespace (at a start with 2,000 namespaces that was 53 MB of maps).
func usedIdentities(ids map[string]uint32, lingering map[uint32]lingerer, held map[uint32]bool) map[uint32]bool {
	used := make(map[uint32]bool, len(ids)+len(lingering)+len(held))
	for _, id := range ids {
		used[id] = true
	}
	for id := range lingering {
		used[id] = true
	}
	for id, h := range held {
		used[id] = used[id] || h
	}
	return used
}

// freeIdentity is the lowest identity not used (identity 0 is "not known yet").
func freeIdentity(used map[uint32]bool) (uint32, error) {
	for id := uint32(1); id < bpf.MaxIdentities; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free namespace identity: all %d are in use", bpf.MaxIdentities-1)
}
