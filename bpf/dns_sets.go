package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// The name sets of the datapath: dns_sets and dns_names (dnsDeny), fqdn_sets and fqdn_names (fqdn peers). Each
// pair maps identities to sets and (set, base name) to a value; these read them back, for an enforcer that
// starts on maps an earlier one wrote.

// DNSSets is what dns_sets holds: identity -> its set of denied names, for the identities that have one.
func (dp *Datapath) DNSSets() (map[uint32]uint32, error) { return setsOf(dp.maps.DnsSets, "DNS name") }

// FQDNSets is what fqdn_sets holds: identity -> its set of fqdn patterns, for the identities that have one.
func (dp *Datapath) FQDNSets() (map[uint32]uint32, error) { return setsOf(dp.maps.FqdnSets, "fqdn") }

// DNSNameSets counts the names dns_names holds per set.
func (dp *Datapath) DNSNameSets() (map[uint32]int, error) {
	return namesPerSet[DNSValue](dp.maps.DnsNames, "DNS names")
}

// FQDNNameSets counts the names fqdn_names holds per set.
func (dp *Datapath) FQDNNameSets() (map[uint32]int, error) {
	return namesPerSet[FQDNValue](dp.maps.FqdnNames, "fqdn names")
}

// DeleteDNSNameSet removes every name of a set from dns_names.
func (dp *Datapath) DeleteDNSNameSet(set uint32) error {
	return deleteNameSet[DNSValue](dp.maps.DnsNames, set, "DNS name")
}

// DeleteFQDNNameSet removes every name of a set from fqdn_names.
func (dp *Datapath) DeleteFQDNNameSet(set uint32) error {
	return deleteNameSet[FQDNValue](dp.maps.FqdnNames, set, "fqdn name")
}

// DNSNames reads a set's names back from dns_names: base name (dotted, as NewDNSKey takes it) -> value.
func (dp *Datapath) DNSNames(set uint32) (map[string]DNSValue, error) {
	return namesOf[DNSValue](dp.maps.DnsNames, set)
}

// FQDNNames reads a set's names back from fqdn_names.
func (dp *Datapath) FQDNNames(set uint32) (map[string]FQDNValue, error) {
	return namesOf[FQDNValue](dp.maps.FqdnNames, set)
}

func setsOf(m *ebpf.Map, what string) (map[uint32]uint32, error) {
	out := map[uint32]uint32{}
	var id, set uint32
	it := m.Iterate()
	for it.Next(&id, &set) {
		if set != 0 {
			out[id] = set
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the %s sets of the identities: %w", what, err)
	}
	return out, nil
}

func namesPerSet[V any](m *ebpf.Map, what string) (map[uint32]int, error) {
	out := map[uint32]int{}
	var k DNSKey
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k.Set]++
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the %s: %w", what, err)
	}
	return out, nil
}

func deleteNameSet[V any](m *ebpf.Map, set uint32, what string) error {
	var keys []DNSKey
	var k DNSKey
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if k.Set == set {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read the %ss of set %d: %w", what, set, err)
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete a %s of set %d: %w", what, set, err)
		}
	}
	return nil
}

func namesOf[V any](m *ebpf.Map, set uint32) (map[string]V, error) {
	out := map[string]V{}
	var k DNSKey
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if k.Set == set {
			out[dnsKeyName(&k)] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the names of set %d: %w", set, err)
	}
	return out, nil
}

// dnsKeyName is a key's name as dotted labels: its reversed wire labels turned around.
func dnsKeyName(k *DNSKey) string {
	var labels []string
	for i := 0; i < len(k.Name) && k.Name[i] != 0; {
		n := int(k.Name[i])
		end := min(i+1+n, len(k.Name))
		labels = append([]string{string(k.Name[i+1 : end])}, labels...)
		i = end
	}
	return strings.Join(labels, ".")
}
