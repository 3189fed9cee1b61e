package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetEndpoint writes the endpoint of a host veth.
func (dp *Datapath) SetEndpoint(ifindex uint32, ep *Endpoint) error {
	if err := dp.maps.LocalEndpoints.Put(ifindex, ep); err != nil {
		return fmt.Errorf("write endpoint of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// DeleteEndpoint removes the endpoint of a host veth, and its count of conntrack entries (a device that takes its
// ifindex later starts from zero); a missing one is not an error.
func (dp *Datapath) DeleteEndpoint(ifindex uint32) error {
	if err := dp.maps.LocalEndpoints.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint of ifindex %d: %w", ifindex, err)
	}
	if err := dp.maps.CtCounts.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete conntrack count of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// LookupEndpoint reads the endpoint of a host veth; ok is false when there is none.
func (dp *Datapath) LookupEndpoint(ifindex uint32) (ep Endpoint, ok bool, err error) {
	err = dp.maps.LocalEndpoints.Lookup(ifindex, &ep)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return ep, false, nil
	}
	if err != nil {
		return ep, false, fmt.Errorf("read endpoint of ifindex %d: %w", ifindex, err)
	}
	return ep, true, nil
}

// Endpoints lists every endpoint by host ifindex.
func (dp *Datapath) Endpoints() (map[uint32]Endpoint, error) {
	return readAll[uint32, Endpoint](dp.maps.LocalEndpoints, "endpoints")
}

// readAll reads a hash map whole, key by key; for maps of a few thousand entries.
func readAll[K comparable, V any](m *ebpf.Map, what string) (map[K]V, error) {
	out := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return out, nil
}

// ErrTooManyAddresses means a pod has more addresses than an endpoint entry holds.
var ErrTooManyAddresses = errors.New("endpoint has too many addresses")

// NewEndpoint builds an endpoint entry from the pod's addresses.
func NewEndpoint(identity uint32, mode EndpointMode, addrs []netip.Addr) (Endpoint, error) {
	ep := Endpoint{Identity: identity, Mode: uint8(mode)}
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case a.Is4() && int(ep.N_ipv4) < len(ep.Ipv4):
			ep.Ipv4[ep.N_ipv4] = a.As4()
			ep.N_ipv4++
		case a.Is6() && int(ep.N_ipv6) < len(ep.Ipv6):
			ep.Ipv6[ep.N_ipv6] = a.As16()
			ep.N_ipv6++
		default:
			return ep, fmt.Errorf("%w: at most %d IPv4 and %d IPv6", ErrTooManyAddresses, len(ep.Ipv4), len(ep.Ipv6))
		}
	}
	return ep, nil
}

// SetLink records the pod interface's MAC and IPv6 link-local address, which ARP and neighbour discovery from
// the pod must carry. An invalid link-local address is derived from the MAC as the kernel does by default
// (modified EUI-64); a MAC that is not 6 bytes leaves both unknown, and the datapath then checks addresses only.
func (ep *Endpoint) SetLink(mac net.HardwareAddr, linkLocal netip.Addr) {
	ep.Mac, ep.LinkLocal6 = [6]uint8{}, [16]uint8{}
	if len(mac) != 6 {
		return
	}
	copy(ep.Mac[:], mac)
	if !linkLocal.Is6() || !linkLocal.IsLinkLocalUnicast() {
		linkLocal = LinkLocalFromMAC(mac)
	}
	ep.LinkLocal6 = linkLocal.As16()
}

// LinkLocalFromMAC is the IPv6 link-local address the kernel gives an interface with this 6-byte MAC by
// default: fe80:: and the modified EUI-64 interface identifier (RFC 4291 appendix A).
func LinkLocalFromMAC(mac net.HardwareAddr) netip.Addr {
	var a [16]byte
	a[0], a[1] = 0xfe, 0x80
	a[8], a[9], a[10] = mac[0]^0x02, mac[1], mac[2]
	a[11], a[12] = 0xff, 0xfe
	a[13], a[14], a[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(a)
}

// Addrs lists the endpoint's own addresses.
func (ep *Endpoint) Addrs() []netip.Addr {
	var out []netip.Addr
	for i := 0; i < int(ep.N_ipv4) && i < len(ep.Ipv4); i++ {
		out = append(out, netip.AddrFrom4(ep.Ipv4[i]))
	}
	for i := 0; i < int(ep.N_ipv6) && i < len(ep.Ipv6); i++ {
		out = append(out, netip.AddrFrom16(ep.Ipv6[i]))
	}
	return out
}

// SetNamespaceIdentity publishes the identity of a namespace for the plugin.
func (dp *Datapath) SetNamespaceIdentity(namespace string, identity uint32) error {
	k, err := NewNamespaceKey(namespace)
	if err != nil {
		return err
	}
	if err := dp.maps.Identities.Put(&k, identity); err != nil {
		return fmt.Errorf("publish identity of namespace %s: %w", namespace, err)
	}
	return nil
}

// DeleteNamespaceIdentity withdraws a namespace's identity; a missing one is not an error.
func (dp *Datapath) DeleteNamespaceIdentity(namespace string) error {
	k, err := NewNamespaceKey(namespace)
	if err != nil {
		return err
	}
	if err := dp.maps.Identities.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("withdraw identity of namespace %s: %w", namespace, err)
	}
	return nil
}

// NamespaceIdentity reads the published identity of a namespace; ok is false when there is none.
func (dp *Datapath) NamespaceIdentity(namespace string) (identity uint32, ok bool, err error) {
	k, err := NewNamespaceKey(namespace)
	if err != nil {
		return 0, false, err
	}
	err = dp.maps.Identities.Lookup(&k, &identity)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read identity of namespace %s: %w", namespace, err)
	}
	return identity, true, nil
}

// NamespaceIdentities lists every published namespace identity.
func (dp *Datapath) NamespaceIdentities() (map[string]uint32, error) {
	out := map[string]uint32{}
	var k NamespaceKey
	var id uint32
	it := dp.maps.Identities.Iterate()
	for it.Next(&k, &id) {
		name := make([]byte, 0, len(k.Name))
		for _, c := range k.Name {
			if c == 0 {
				break
			}
			name = append(name, byte(c))
		}
		out[string(name)] = id
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list namespace identities: %w", err)
	}
	return out, nil
}

// SetIPCache classifies every address in prefix as class (with the identity of a pod or Service).
func (dp *Datapath) SetIPCache(prefix netip.Prefix, class Class, identity uint32) error {
	k := NewIPCacheKey(prefix)
	v := IPCacheValue{Identity: identity, Class: uint8(class)}
	if err := dp.maps.Ipcache.Put(&k, &v); err != nil {
		return fmt.Errorf("write ipcache %s: %w", prefix, err)
	}
	return nil
}

// DeleteIPCache removes the entry of exactly prefix; a missing one is not an error.
func (dp *Datapath) DeleteIPCache(prefix netip.Prefix) error {
	k := NewIPCacheKey(prefix)
	if err := dp.maps.Ipcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ipcache %s: %w", prefix, err)
	}
	return nil
}

// PolicyEntry is one element of an identity's policy trie, as the compiler makes it.
type PolicyEntry struct {
	Key   PolicyKey
	Value PolicyValue
}

// ReplacePolicy builds a new policy trie for identity beside the one in use and swaps the reference, so a
// packet sees the old policy or the new one whole. The cost is in proportion to this identity's entries, plus
// one RCU grace period the kernel waits for so that no packet still uses the old trie when this returns.
// Call BumpGeneration afterwards so established flows are decided again under the new policy.
func (dp *Datapath) ReplacePolicy(identity uint32, entries []PolicyEntry) error {
	return dp.ReplacePolicies(map[uint32][]PolicyEntry{identity: entries})
}

// ReplacePolicies swaps in the policies of several identities, each in a trie of its own (SetPolicies).
func (dp *Datapath) ReplacePolicies(policies map[uint32][]PolicyEntry) error {
	tries := make(map[uint32]*PolicyTrie, len(policies))
	defer func() {
		for _, t := range tries {
			t.Close() // the policy map holds its own reference once swapped in
		}
	}()
	for identity, entries := range policies {
		t, err := dp.NewPolicyTrie(entries)
		if err != nil {
			return fmt.Errorf("policy of identity %d: %w", identity, err)
		}
		tries[identity] = t
	}
	return dp.SetPolicies(tries)
}

// PolicyTrie is one compiled policy in the kernel. Any number of identities may use it: identities whose rules
// compile alike share one, so the kernel's policy memory grows with distinct rule sets, not with namespaces.
// The policy map holds its own reference to a trie an identity uses; Close drops the caller's.
type PolicyTrie struct {
	m       *ebpf.Map
	entries int
}

// NewPolicyTrie creates a trie holding entries.
func (dp *Datapath) NewPolicyTrie(entries []PolicyEntry) (*PolicyTrie, error) {
	if dp.inner == nil {
		return nil, fmt.Errorf("only the enforcer that loaded the datapath writes policy")
	}
	spec := dp.inner.Copy()
	spec.Name = "moat_policy"
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create a policy trie: %w", err)
	}
	t := &PolicyTrie{m: inner, entries: len(entries)}
	if len(entries) == 0 {
		return t, nil
	}
	// one system call for all entries where the kernel batches updates of tries, one per entry where not
	keys := make([]PolicyKey, len(entries))
	values := make([]PolicyValue, len(entries))
	for i := range entries {
		keys[i], values[i] = entries[i].Key, entries[i].Value
	}
	n, err := inner.BatchUpdate(keys, values, nil)
	if err == nil && n == len(entries) {
		return t, nil
	}
	for i := range entries {
		if err := inner.Put(&entries[i].Key, &entries[i].Value); err != nil {
			inner.Close()
			return nil, fmt.Errorf("fill a policy trie (entry %d of %d): %w", i+1, len(entries), err)
		}
	}
	return t, nil
}

// Entries is how many entries the trie holds.
func (t *PolicyTrie) Entries() int { return t.entries }

// Bytes is the kernel's accounting of the trie (its memlock), for memory reports.
func (t *PolicyTrie) Bytes() (uint64, error) {
	info, err := t.m.Info()
	if err != nil {
		return 0, fmt.Errorf("policy trie info: %w", err)
	}
	bytes, ok := info.Memlock()
	if !ok {
		return 0, fmt.Errorf("policy trie: the kernel does not report its memory")
	}
	return bytes, nil
}

// Close drops the caller's reference; identities that use the trie keep it.
func (t *PolicyTrie) Close() error { return t.m.Close() }

// SetPolicies points each identity at its trie, with one grace period for all of them (a batch update of the
// policy map where the kernel has it). Each identity changes atomically on its own: a packet sees its old policy
// or its new one, never a mix.
func (dp *Datapath) SetPolicies(tries map[uint32]*PolicyTrie) error {
	if dp.inner == nil {
		return fmt.Errorf("only the enforcer that loaded the datapath writes policy")
	}
	ids := make([]uint32, 0, len(tries))
	for identity := range tries {
		if identity == 0 || identity >= MaxIdentities {
			return fmt.Errorf("policy of identity %d: identities run from 1 to %d", identity, MaxIdentities-1)
		}
		ids = append(ids, identity)
	}
	if len(ids) > 1 {
		fds := make([]uint32, len(ids))
		for i, identity := range ids {
			fds[i] = uint32(tries[identity].m.FD())
		}
		_, err := dp.maps.Policy.BatchUpdate(ids, fds, nil)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("swap in the policies of %d identities: %w", len(ids), err)
		}
	}
	for _, identity := range ids {
		if err := dp.maps.Policy.Put(identity, tries[identity].m); err != nil {
			return fmt.Errorf("swap in policy of identity %d: %w", identity, err)
		}
	}
	return nil
}

// DeletePolicy removes an identity's policy; its endpoints fall back to the cluster defaults.
func (dp *Datapath) DeletePolicy(identity uint32) error {
	if err := dp.maps.Policy.Delete(identity); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete policy of identity %d: %w", identity, err)
	}
	return nil
}

// PolicyMapID is the kernel id of the policy trie an identity uses now: it changes with every swap.
func (dp *Datapath) PolicyMapID(identity uint32) (ebpf.MapID, error) {
	var id uint32
	if err := dp.maps.Policy.Lookup(identity, &id); err != nil {
		return 0, fmt.Errorf("look up policy of identity %d: %w", identity, err)
	}
	return ebpf.MapID(id), nil
}

// Config reads the datapath's configuration.
func (dp *Datapath) Config() (Config, error) {
	var c Config
	if err := dp.maps.Config.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read datapath config: %w", err)
	}
	return c, nil
}

// UpdateConfig changes the configuration; only the enforcer writes it, so read-modify-write is safe.
func (dp *Datapath) UpdateConfig(change func(*Config)) error {
	c, err := dp.Config()
	if err != nil {
		return err
	}
	change(&c)
	c.LayoutVersion = LayoutVersion
	if err := dp.maps.Config.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("write datapath config: %w", err)
	}
	return nil
}

// BumpGeneration marks every established flow for a fresh decision at its next packet, and returns the new
// generation. Call it after any change that can alter a verdict (policy, ipcache, endpoint identity).
func (dp *Datapath) BumpGeneration() (uint64, error) {
	var gen uint64
	err := dp.UpdateConfig(func(c *Config) { c.Generation++; gen = c.Generation })
	return gen, err
}

// ReasonCounters sums the per-CPU packet and byte counts of every reason.
func (dp *Datapath) ReasonCounters() (map[Reason]Counter, error) {
	out := map[Reason]Counter{}
	for _, r := range Reasons() {
		var perCPU []Counter
		if err := dp.maps.ReasonCounts.Lookup(uint32(r), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter of reason %s: %w", ReasonName(r), err)
		}
		out[r] = sumCounters(perCPU)
	}
	return out, nil
}

// RuleCounter sums the per-CPU counts of one rule.
func (dp *Datapath) RuleCounter(ruleID uint32) (Counter, error) {
	var perCPU []Counter
	if err := dp.maps.RuleCounts.Lookup(ruleID, &perCPU); err != nil {
		return Counter{}, fmt.Errorf("read counter of rule %d: %w", ruleID, err)
	}
	return sumCounters(perCPU), nil
}

// Stat sums a per-CPU statistic such as StatEventsLost.
func (dp *Datapath) Stat(s Stat) (uint64, error) {
	var perCPU []uint64
	if err := dp.maps.Stats.Lookup(uint32(s), &perCPU); err != nil {
		return 0, fmt.Errorf("read stat %d: %w", s, err)
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum, nil
}

func sumCounters(perCPU []Counter) Counter {
	var c Counter
	for _, p := range perCPU {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
	}
	return c
}

// HostPort is a pod's hostPort on a node address: the datapath decides a flow to Node:Port as one to Pod:PodPort.
type HostPort struct {
	Node     netip.Addr
	Protocol uint8
	Port     uint16
	Pod      netip.Addr
	PodPort  uint16
	Identity uint32 // the pod's namespace identity
	Local    bool   // the pod runs on this node: its ingress is decided at the sender
}

// Key is the map key of the hostPort.
func (h HostPort) Key() HostPortKey {
	k := HostPortKey{Family: Family(h.Node), Protocol: h.Protocol, Addr: Addr16(h.Node.Unmap())}
	k.Port = htons(h.Port)
	return k
}

// Value is the map value of the hostPort.
func (h HostPort) Value() HostPortValue {
	v := HostPortValue{Identity: h.Identity, Addr: Addr16(h.Pod.Unmap()), Port: h.PodPort}
	if h.Local {
		v.Local = 1
	}
	return v
}

// SetHostPort writes a hostPort.
func (dp *Datapath) SetHostPort(h HostPort) error {
	if h.Node.Unmap().Is4() != h.Pod.Unmap().Is4() {
		return fmt.Errorf("hostPort %s %d/%d to %s: node and pod addresses of different families", h.Node, h.Port, h.Protocol, h.Pod)
	}
	k, v := h.Key(), h.Value()
	if err := dp.maps.Hostports.Put(&k, &v); err != nil {
		return fmt.Errorf("write hostPort %s:%d/%d: %w", h.Node, h.Port, h.Protocol, err)
	}
	return nil
}

// DeleteHostPort removes a hostPort; a missing one is not an error.
func (dp *Datapath) DeleteHostPort(k HostPortKey) error {
	if err := dp.maps.Hostports.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete hostPort: %w", err)
	}
	return nil
}

// HostPorts lists the hostPorts the datapath knows.
func (dp *Datapath) HostPorts() (map[HostPortKey]HostPortValue, error) {
	return readAll[HostPortKey, HostPortValue](dp.maps.Hostports, "hostPorts")
}

// Jiffies is the low 32 bits of the kernel's jiffies counter, the clock of conntrack deadlines. It needs the
// datapath from Load (the enforcer's), not from OpenPinned.
func (dp *Datapath) Jiffies() (uint32, error) {
	if dp.jiffies == nil {
		return 0, errors.New("read the kernel's jiffies: the datapath was opened, not loaded")
	}
	j, err := dp.jiffies.Run(&ebpf.RunOptions{Data: make([]byte, 64)})
	if err != nil {
		return 0, fmt.Errorf("read the kernel's jiffies: %w", err)
	}
	return j, nil
}

// ConntrackCounts reads each endpoint's count of conntrack entries, by host ifindex.
func (dp *Datapath) ConntrackCounts() (map[uint32]CTCount, error) {
	return readAll[uint32, CTCount](dp.maps.CtCounts, "conntrack counts")
}

// RecountConntrack sets each endpoint's count of conntrack entries to the entries of the table that have not
// expired. The datapath counts its own inserts and deletes; LRU evictions and entries that expire unseen it
// cannot, so without a recount a count only grows, and a pod would meet its bound early. Entries inserted while
// the walk ran are added on top, so a count comes out a little high rather than low. It drops the counts of devices
// that are no endpoint any more, and returns the new counts by ifindex. Writing a count replaces the hash element,
// so an insert the datapath counts on the old element in that instant is lost: a count may come out low by the
// flows of that instant, until the next recount.
func (dp *Datapath) RecountConntrack() (map[uint32]uint64, error) {
	before, err := dp.ConntrackCounts()
	if err != nil {
		return nil, err
	}
	now, err := dp.Jiffies()
	if err != nil {
		return nil, err
	}
	live := map[uint32]uint64{}
	err = walkBatch(dp.maps.Conntrack, func(k *CTKey, v *CTValue) {
		if int32(uint32(v.Expires)-now) >= 0 { // deadlines lie within 2^31 ticks of now
			live[k.Ifindex]++
		}
	})
	if err != nil {
		return nil, fmt.Errorf("walk conntrack: %w", err)
	}
	after, err := dp.ConntrackCounts()
	if err != nil {
		return nil, err
	}
	endpoints, err := dp.Endpoints()
	if err != nil {
		return nil, err
	}
	out := map[uint32]uint64{}
	for ifindex, c := range after {
		if _, ok := endpoints[ifindex]; !ok {
			if err := dp.maps.CtCounts.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil, fmt.Errorf("delete conntrack count of ifindex %d: %w", ifindex, err)
			}
			continue
		}
		n := live[ifindex] + c.Created - before[ifindex].Created
		if err := dp.maps.CtCounts.Update(ifindex, CTCount{Live: n, Created: c.Created}, ebpf.UpdateExist); err != nil &&
			!errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("write conntrack count of ifindex %d: %w", ifindex, err)
		}
		out[ifindex] = n
	}
	return out, nil
}

// IPCacheMap is the ipcache (for moatctl and tests).
func (dp *Datapath) IPCacheMap() *ebpf.Map { return dp.maps.Ipcache }

// MapCapacities is the max entries of the maps whose fill level matters, by pin name.
func (dp *Datapath) MapCapacities() map[string]uint32 {
	out := map[string]uint32{}
	for name, m := range dp.allMapsByName() {
		if m != nil {
			out[name] = m.MaxEntries()
		}
	}
	return out
}

// IPCacheEntries is the whole ipcache: what every prefix is classified as.
func (dp *Datapath) IPCacheEntries() (map[netip.Prefix]IPCacheValue, error) {
	out := map[netip.Prefix]IPCacheValue{}
	var k IPCacheKey
	var v IPCacheValue
	it := dp.maps.Ipcache.Iterate()
	for it.Next(&k, &v) {
		bits := int(k.Prefixlen) - 8
		a := AddrFrom16(k.Family, k.Addr)
		if p, err := a.Prefix(bits); err == nil {
			out[p] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipcache: %w", err)
	}
	return out, nil
}

// MapFill is how full a map is.
type MapFill struct {
	Entries  int    `json:"entries"`
	Capacity uint32 `json:"capacity"`
}

// MapFills counts the entries of the maps whose fill level matters, by pin name. The conntrack and fragment
// tables are read in batches of 4096, so a full table of a million flows costs some 250 system calls.
func (dp *Datapath) MapFills() (map[string]MapFill, error) { return dp.MapFillsCounted(nil) }

// MapFillsCounted is MapFills with the entries of the maps in counted taken as given (a writer that counts what
// it wrote spares its readers a walk of the map) rather than counted in the kernel.
func (dp *Datapath) MapFillsCounted(counted map[string]int) (map[string]MapFill, error) {
	out := map[string]MapFill{}
	byName := dp.allMapsByName()
	for name, capacity := range dp.MapCapacities() {
		var n int
		var err error
		if c, ok := counted[name]; ok {
			out[name] = MapFill{Entries: c, Capacity: capacity}
			continue
		}
		switch name {
		case "conntrack":
			n, err = countBatch[CTKey, CTValue](dp.maps.Conntrack, countKeys)
		case "fragments":
			n, err = countBatch[FragKey, FragValue](dp.maps.Fragments, countKeys)
		case "policy":
			// an array with a slot for every identity: a batch lookup returns only the filled ones
			n, err = countBatch[uint32, uint32](dp.maps.Policy, countFilledSlots)
		default:
			n, err = countKeys(byName[name])
		}
		if err != nil {
			return nil, fmt.Errorf("count %s entries: %w", name, err)
		}
		out[name] = MapFill{Entries: n, Capacity: capacity}
	}
	return out, nil
}

func (dp *Datapath) allMapsByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{"local_endpoints": dp.maps.LocalEndpoints, "identities": dp.maps.Identities,
		"ipcache": dp.maps.Ipcache, "policy": dp.maps.Policy, "conntrack": dp.maps.Conntrack, "fragments": dp.maps.Fragments,
		"ct_counts": dp.maps.CtCounts}
}

// countFilledSlots counts the filled slots of a map-in-map array, one lookup per slot.
func countFilledSlots(m *ebpf.Map) (int, error) {
	n := 0
	var id uint32
	for k := uint32(0); k < m.MaxEntries(); k++ {
		if err := m.Lookup(k, &id); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
	}
	return n, nil
}

// countKeys walks a map's keys; for maps of a few thousand entries.
func countKeys(m *ebpf.Map) (int, error) {
	if m == nil {
		return 0, nil
	}
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	n := 0
	var prev any // nil: the first key
	for {
		if err := m.NextKey(prev, next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return n, err
		}
		n++
		copy(key, next)
		prev = key
	}
}

// countBatch counts a map's entries in batches of 4096, or with fallback where the kernel cannot batch.
func countBatch[K, V any](m *ebpf.Map, fallback func(*ebpf.Map) (int, error)) (int, error) {
	if m == nil {
		return 0, nil
	}
	total := 0
	err := walkBatch(m, func(*K, *V) { total++ })
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fallback(m)
	}
	return total, err
}

// walkBatch hands every entry of a map to fn, read in batches of 4096; ebpf.ErrNotSupported where the kernel
// cannot batch the map's type.
func walkBatch[K, V any](m *ebpf.Map, fn func(*K, *V)) error {
	keys := make([]K, 4096)
	values := make([]V, 4096)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, values, nil)
		for i := 0; i < n; i++ {
			fn(&keys[i], &values[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
