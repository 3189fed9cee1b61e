package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// DNSSets is what dns_sets holds: identity -> its set of denied names, for the identities that have one.
func (dp *Datapath) DNSSets() (map[uint32]uint32, error) {
	out := map[uint32]uint32{}
	var id, set uint32
	it := dp.maps.DnsSets.Iterate()
	for it.Next(&id, &set) {
		if set != 0 {
			out[id] = set
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the DNS name sets of the identities: %w", err)
	}
	return out, nil
}

// DNSNameSets counts the names dns_names holds per set.
func (dp *Datapath) DNSNameSets() (map[uint32]int, error) {
	keys, err := dp.dnsNameKeys(func(DNSKey) bool { return true })
	if err != nil {
		return nil, err
	}
	out := map[uint32]int{}
	for _, k := range keys {
		out[k.Set]++
	}
	return out, nil
}

// DeleteDNSNameSet removes every name of a set.
func (dp *Datapath) DeleteDNSNameSet(set uint32) error {
	keys, err := dp.dnsNameKeys(func(k DNSKey) bool { return k.Set == set })
	if err != nil {
		return err
	}
	for i := range keys {
		if err := dp.maps.DnsNames.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete a DNS name of set %d: %w", set, err)
		}
	}
	return nil
}

func (dp *Datapath) dnsNameKeys(keep func(DNSKey) bool) ([]DNSKey, error) {
	var keys []DNSKey
	var k DNSKey
	var v DNSValue
	it := dp.maps.DnsNames.Iterate()
	for it.Next(&k, &v) {
		if keep(k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the DNS names: %w", err)
	}
	return keys, nil
}

// DNSNames reads a set's names back: base name (dotted, as NewDNSKey takes it) -> value.
func (dp *Datapath) DNSNames(set uint32) (map[string]DNSValue, error) {
	out := map[string]DNSValue{}
	var k DNSKey
	var v DNSValue
	it := dp.maps.DnsNames.Iterate()
	for it.Next(&k, &v) {
		if k.Set == set {
			out[dnsKeyName(&k)] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read the DNS names of set %d: %w", set, err)
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
