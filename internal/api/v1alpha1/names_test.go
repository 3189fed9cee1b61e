package v1alpha1

import (
	"strings"
	"testing"
)

func TestParseNamePattern(t *testing.T) {
	for _, c := range []struct {
		in, want string // want: the normalized pattern, or the error's words
		form     NameForm
		ok       bool
	}{
		{"API.Example.com.", "api.example.com", NameExact, true},
		{"*.Example.COM", "*.example.com", NameOneLabel, true},
		{"**.cdn.example.net", "**.cdn.example.net", NameAnyLabels, true},
		{"**.ru", "**.ru", NameAnyLabels, true}, // broad, but valid: fqdn peers refuse it on their own
		{"xn--bcher-kva.example", "xn--bcher-kva.example", NameExact, true},
		{"", "empty", 0, false},
		{"*.", "only the first label", 0, false},
		{"a..example.com", "want 1 to 63", 0, false},
		{"*.*.example.com", "only the first label", 0, false},
		{"a*.example.com", "only the first label", 0, false},
		{"-a.example.com", "hyphen", 0, false},
		{"a b.example.com", "not a letter", 0, false},
		{strings.Repeat("a", 64) + ".com", "want 1 to 63", 0, false},
		{strings.Repeat("a.", 32) + "com", "33 labels, at most 32", 0, false},
		{"*." + strings.Repeat("a.", 31) + "com", "32 labels, at most 31", 0, false},
		{strings.Repeat(strings.Repeat("a", 60)+".", 5) + "com", "bytes, at most 253", 0, false},
	} {
		p, err := ParseNamePattern(c.in)
		switch {
		case c.ok && err != nil:
			t.Errorf("%q: %v", c.in, err)
		case c.ok && (p.String() != c.want || p.Form != c.form):
			t.Errorf("%q: got %q form %d, want %q form %d", c.in, p.String(), p.Form, c.want, c.form)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: got %v, want an error saying %q", c.in, err, c.want)
		}
	}
}

func TestNamePatternMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"api.example.com", "API.example.com.", true},
		{"api.example.com", "x.api.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", "aexample.com", false},
		{"**.example.com", "a.b.example.com", true},
		{"**.example.com", "a.example.com", true},
		{"**.example.com", "example.com", false},
		{"**.example.com", "badexample.com", false},
		// an escaped dot is part of its label, as on the wire and in the datapath
		{"**.b.example.com", `a\.b.example.com`, false},
		{"*.example.com", `a\.b.example.com`, true},
		{"**.b.example.com", "a.b.example.com", true},
	} {
		p, err := ParseNamePattern(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Matches(c.name); got != c.want {
			t.Errorf("%s matches %s: %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}
