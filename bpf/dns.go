package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// DNSValue is what dns_names holds for a base name in a set: per form, the rule that denies it (0 = none), of an
// Enforce policy in Rule and of an Audit policy in AuditRule.
type DNSValue = moatMoatDnsValue

// DNSKey is a dns_names key: a set and a base name as the datapath builds it from a query.
type DNSKey = moatMoatDnsKey

// DNSForm is a form of a name pattern: its base name itself, one label more (*.base), or one label or more
// (**.base). It indexes DNSValue's arrays.
type DNSForm int

// The forms, as moat.h's enum moat_dns_form numbers them.
const (
	DNSExact DNSForm = 0
	DNSOne   DNSForm = 1
	DNSAny   DNSForm = 2
)

// Limits of the names the datapath matches.
const (
	DNSNameLen   = int(moatMoatLimitsMOAT_DNS_NAME_LEN)   // bytes of a key's name: a wire-format name is at most 255
	DNSMaxLabels = int(moatMoatLimitsMOAT_DNS_MAX_LABELS) // labels of a name matched whole; a wildcard's base has one fewer
	dnsLabelMax  = 63
)

// ErrDNSName means a base name cannot be matched by the datapath: an empty or too long label, more labels than
// it reads, a name longer than DNS allows.
var ErrDNSName = errors.New("not a DNS name the datapath can match")

// NewDNSKey encodes a set's base name (dot-separated labels, a final dot allowed) as the datapath looks it up:
// its labels in reverse order, each after its length byte, lower-case (ASCII, as DNS compares names), the rest
// zero. "www.Example.com" is "\x03com\x07example\x03www".
func NewDNSKey(set uint32, name string) (DNSKey, error) {
	k := DNSKey{Set: set}
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return k, fmt.Errorf("%w: the empty name", ErrDNSName)
	}
	labels := strings.Split(name, ".")
	if len(labels) > DNSMaxLabels {
		return k, fmt.Errorf("%w: %q has %d labels, at most %d", ErrDNSName, name, len(labels), DNSMaxLabels)
	}
	// the wire form: a length byte per label, the labels, the root's zero
	if wire := len(name) + 2; wire > DNSNameLen-1 {
		return k, fmt.Errorf("%w: %q is %d bytes on the wire, at most %d", ErrDNSName, name, wire, DNSNameLen-1)
	}
	w := 0
	for i := len(labels) - 1; i >= 0; i-- {
		l := labels[i]
		if l == "" || len(l) > dnsLabelMax {
			return k, fmt.Errorf("%w: %q has a label of %d bytes (1 to %d)", ErrDNSName, name, len(l), dnsLabelMax)
		}
		k.Name[w] = uint8(len(l))
		for j := 0; j < len(l); j++ {
			c := l[j]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			k.Name[w+1+j] = c
		}
		w += len(l) + 1
	}
	return k, nil
}

// SetDNSSet points an identity at its set of names it may not resolve (0: none, its queries go on unread).
func (dp *Datapath) SetDNSSet(identity, set uint32) error {
	if err := dp.maps.DnsSets.Put(identity, set); err != nil {
		return fmt.Errorf("set the DNS name set of identity %d: %w", identity, err)
	}
	return nil
}

// PutDNSName writes what denies the forms of a base name in a set.
func (dp *Datapath) PutDNSName(set uint32, name string, v DNSValue) error {
	k, err := NewDNSKey(set, name)
	if err != nil {
		return err
	}
	if err := dp.maps.DnsNames.Put(&k, &v); err != nil {
		return fmt.Errorf("write DNS name %q of set %d: %w", name, set, err)
	}
	return nil
}

// DeleteDNSName removes a base name from a set; one that is not there is no error.
func (dp *Datapath) DeleteDNSName(set uint32, name string) error {
	k, err := NewDNSKey(set, name)
	if err != nil {
		return err
	}
	if err := dp.maps.DnsNames.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete DNS name %q of set %d: %w", name, set, err)
	}
	return nil
}
