package main

import (
	"bytes"
	"encoding/json"
	"net"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// startDNS serves one zone on loopback over UDP and TCP: ok.test. has an A record and a CNAME chain, every other
// name is NXDOMAIN. It returns the address.
func startDNS(t *testing.T) string {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		switch q.Question[0].Name {
		case "ok.test.":
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: "ok.test.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: "edge.test."},
				&dns.A{Hdr: dns.RR_Header{Name: "edge.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("198.51.100.7")})
		default:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		go func() { _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return pc.LocalAddr().String()
}

func TestResolve(t *testing.T) {
	server := startDNS(t)
	for _, c := range []struct {
		args    []string
		code    int
		rcode   string
		answers []string
	}{
		{[]string{"--server", server, "ok.test"}, 0, "NOERROR", []string{"edge.test.", "198.51.100.7"}},
		{[]string{"--server", server, "--proto", "tcp", "ok.test"}, 0, "NOERROR", []string{"edge.test.", "198.51.100.7"}},
		{[]string{"--server", server, "--type", "AAAA", "nope.test"}, 0, "NXDOMAIN", []string{}},
	} {
		var out, errOut bytes.Buffer
		if code := run(append([]string{"resolve"}, c.args...), &out, &errOut); code != c.code {
			t.Errorf("%v: exit %d, want %d (%s)", c.args, code, c.code, errOut.String())
		}
		var r resolveResult
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("%v: %q: %v", c.args, out.String(), err)
		}
		if r.Rcode != c.rcode || !slices.Equal(r.Answers, c.answers) {
			t.Errorf("%v: %+v, want rcode %s answers %v", c.args, r, c.rcode, c.answers)
		}
	}
	// nobody answers: exit 1 and the error's kind
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var out bytes.Buffer
	if code := run([]string{"resolve", "--server", pc.LocalAddr().String(), "--timeout", "200ms", "x.test"}, &out, &bytes.Buffer{}); code != 1 {
		t.Errorf("no answer: exit %d, want 1: %s", code, out.String())
	}
	var r resolveResult
	if json.Unmarshal(out.Bytes(), &r) != nil || r.Rcode != "" || len(r.Error) < 7 || r.Error[:7] != "timeout" {
		t.Errorf("no answer: %s", out.String())
	}
	// bad usage
	if code := run([]string{"resolve", "--type", "NOPE", "x.test"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Errorf("a bad type: exit %d, want 2", code)
	}
}
