package v1alpha1

import (
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// NameForm is what a name pattern matches of its base name.
type NameForm int

// The forms of a name pattern.
const (
	NameExact     NameForm = iota // api.example.com: the name itself
	NameOneLabel                  // *.example.com: one label more than the base, any label
	NameAnyLabels                 // **.example.com: one label or more
)

// Bounds of a name pattern: the labels of the names the datapath matches, and the bytes of a name in DNS.
const (
	MaxNameLabels = 32
	maxNameBytes  = 253 // dotted, without the final dot (255 on the wire)
	maxLabelBytes = 63
)

// NamePattern is a validated, normalized name pattern: its form and its base name, lower-case, without a final
// dot.
type NamePattern struct {
	Form NameForm
	Base string
}

// String is the pattern as written normalized: "api.example.com", "*.example.com", "**.example.com".
func (p NamePattern) String() string {
	switch p.Form {
	case NameOneLabel:
		return "*." + p.Base
	case NameAnyLabels:
		return "**." + p.Base
	}
	return p.Base
}

// ParseNamePattern checks a name pattern (RFC 1123 host names: letters, digits and hyphens, no label starting or
// ending with a hyphen; one leading "*." or "**." at most; at most MaxNameLabels labels and 253 bytes) and
// normalizes it.
func ParseNamePattern(s string) (NamePattern, error) {
	var p NamePattern
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	switch {
	case strings.HasPrefix(name, "**."):
		p.Form, name = NameAnyLabels, name[3:]
	case strings.HasPrefix(name, "*."):
		p.Form, name = NameOneLabel, name[2:]
	}
	if name == "" {
		return p, fmt.Errorf("name %q: empty", s)
	}
	if len(name) > maxNameBytes {
		return p, fmt.Errorf("name %q: %d bytes, at most %d", s, len(name), maxNameBytes)
	}
	labels := strings.Split(name, ".")
	limit := MaxNameLabels
	if p.Form != NameExact {
		limit-- // the wildcard's label
	}
	if len(labels) > limit {
		return p, fmt.Errorf("name %q: %d labels, at most %d", s, len(labels), limit)
	}
	for _, l := range labels {
		if err := hostLabel(l); err != nil {
			return p, fmt.Errorf("name %q: %v", s, err)
		}
	}
	p.Base = name
	return p, nil
}

// hostLabel checks one label of an RFC 1123 host name.
func hostLabel(l string) error {
	if l == "" || len(l) > maxLabelBytes {
		return fmt.Errorf("label %q: want 1 to %d characters", l, maxLabelBytes)
	}
	if strings.Contains(l, "*") {
		return fmt.Errorf("label %q: a wildcard is only the first label, alone (*. or **.)", l)
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q: starts or ends with a hyphen", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("label %q: %q is not a letter, digit or hyphen", l, c)
		}
	}
	return nil
}

// Labels is how many labels the base name has.
func (p NamePattern) Labels() int { return strings.Count(p.Base, ".") + 1 }

// Matches reports whether a name (dotted, any case, a final dot allowed) is one the pattern covers: the base name
// itself (exact), one label more (*.), or one label or more (**.). It compares labels, as the datapath does: an
// escaped dot ("a\\.b") is part of its label, not a separator.
func (p NamePattern) Matches(name string) bool {
	labels := dns.SplitDomainName(strings.ToLower(name))
	base := strings.Split(p.Base, ".")
	switch p.Form {
	case NameExact:
		return slices.Equal(labels, base)
	case NameOneLabel:
		return len(labels) == len(base)+1 && slices.Equal(labels[1:], base)
	}
	return len(labels) > len(base) && slices.Equal(labels[len(labels)-len(base):], base)
}
