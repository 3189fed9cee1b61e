package fqdn_test

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/moatfw/moat/internal/fqdn"
)

// Match gives the slots of the patterns that cover a name: the name itself, one label more, one or more.
func TestMatch(t *testing.T) {
	patterns := []string{"**.c.example", "*.b.example", "a.example"}
	for name, want := range map[string]uint64{
		"a.example.": 0b100, "A.Example": 0b100, "x.a.example.": 0, "x.b.example.": 0b010, "y.x.b.example.": 0,
		"b.example.": 0, "x.c.example.": 0b001, "y.x.c.example.": 0b001, "c.example.": 0, "example.": 0,
	} {
		if got := fqdn.Match(patterns, name); got != want {
			t.Errorf("%s: %03b, want %03b", name, got, want)
		}
	}
}

// ReadAnswer follows the chain from the question, counts class IN only, and reads nothing from an answer with
// a record it cannot read.
func TestReadAnswer(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("X.cdn.example.", dns.TypeA)
	m.Response = true
	for _, s := range []string{"x.cdn.example. 60 IN CNAME e.net.example.", "e.net.example. 30 IN A 203.0.113.9",
		"e.net.example. 30 CH A 203.0.113.10", "other.example. 30 IN A 203.0.113.11", "e.net.example. 5 IN AAAA 2001:db8::9"} {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		m.Answer = append(m.Answer, r)
	}
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	a, ok := fqdn.ReadAnswer(b)
	want := []fqdn.Learned{{netip.MustParseAddr("203.0.113.9"), 30}, {netip.MustParseAddr("2001:db8::9"), 5}}
	if !ok || a.Question != "x.cdn.example." || len(a.Addrs) != 2 || a.Addrs[0] != want[0] || a.Addrs[1] != want[1] {
		t.Errorf("read %+v, %t; want %v for x.cdn.example.", a, ok, want)
	}
	if _, ok := fqdn.ReadAnswer(b[:len(b)-3]); ok {
		t.Error("an answer with its last record cut was read")
	}
}
