package bpf_test

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// resolver is a DNS server in a namespace of the test's own: it answers every A and AAAA question with one
// address and keeps the names it was asked.
type resolver struct {
	mu    sync.Mutex
	asked []string
}

func (r *resolver) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	r.mu.Lock()
	r.asked = append(r.asked, strings.ToLower(q.Question[0].Name))
	r.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(q)
	if q.Question[0].Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA,
			Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("203.0.113.9")})
	}
	_ = w.WriteMsg(m)
}

func (r *resolver) wasAsked(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.asked {
		if a == name {
			return true
		}
	}
	return false
}

// serveDNS runs a resolver on UDP and TCP addr inside n until the test ends.
func serveDNS(t *testing.T, n ns.NetNS, addr string) *resolver {
	t.Helper()
	r := &resolver{}
	testutil.ServeDNS(t, n, addr, r)
	return r
}

// lookup asks server for name from inside n over UDP, as a pod's stub resolver would (EDNS on request).
func lookup(t *testing.T, n ns.NetNS, server, name string, edns bool) (*dns.Msg, error) {
	t.Helper()
	return lookupOver(t, n, "udp", server, name, edns)
}

func lookupOver(t *testing.T, n ns.NetNS, network, server, name string, edns bool) (*dns.Msg, error) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	if edns {
		q.SetEdns0(1232, false)
	}
	return testutil.ExchangeDNS(n, network, server, q)
}

// On a real veth, in both attach modes: a pod of a namespace that may not resolve evil.example gets NXDOMAIN
// for it (IPv4 and IPv6 resolvers, with and without EDNS; over TCP its connection is reset) and the resolver never
// hears the question, while other names resolve; without Moat the same question reaches the resolver and is answered, so the firewall is what
// stops it.
func TestDNSDenyOnARealVeth(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.ModeTCX, bpf.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) { dnsOnARealVeth(t, mode) })
	}
}

func dnsOnARealVeth(t *testing.T, mode bpf.AttachMode) {
	h := newHarness(t, bpf.Options{})
	pl := testutil.NewPodLink(t, []netip.Prefix{trafficPod4, trafficPod6},
		[]netip.Prefix{trafficHost4, trafficHost6, trafficNet4, trafficNet6})
	server4 := trafficNet4.Addr().String() + ":53"
	server6 := "[" + trafficNet6.Addr().String() + "]:53"
	r4, r6 := serveDNS(t, pl.Host, server4), serveDNS(t, pl.Host, server6)

	a, err := lookup(t, pl.Pod, server4, "evil.example.", false)
	if err != nil || a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
		t.Fatalf("baseline, no firewall: evil.example. = %v, %v; want an answer", a, err)
	}
	// the baselines also fill the pod's neighbour cache, as TestRealTraffic's do: this harness's pods have an
	// on-link default route, so the pod solicits the Internet's address itself, which Moat refuses (a world
	// target: neighbor-denied), where a real pod asks for its gateway
	a, err = lookup(t, pl.Pod, server6, "evil.example.", false)
	if err != nil || a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
		t.Fatalf("baseline, no firewall, IPv6: evil.example. = %v, %v; want an answer", a, err)
	}
	if !r4.wasAsked("evil.example.") || !r6.wasAsked("evil.example.") {
		t.Fatal("baseline: the resolvers never heard the question")
	}
	r4.asked, r6.asked = nil, nil

	pol := trafficPolicy() // UDP 53 out is allowed, and TCP 53 too: only the name decides
	pol.Rules[0].Ports = append(pol.Rules[0].Ports, policy.PortRange{Protocol: policy.ProtoTCP, First: 53, Last: 53})
	h.policy(pol)
	if err := h.dp.SetDNSSet(podID, 3); err != nil {
		t.Fatal(err)
	}
	if err := h.dp.PutDNSName(3, "evil.example", deny(bpf.DNSExact, 80)); err != nil {
		t.Fatal(err)
	}
	h.guardPodLink(pl, mode)

	for _, c := range []struct {
		server string
		r      *resolver
		name   string
		edns   bool
		denied bool
	}{
		{server4, r4, "evil.example.", false, true},
		{server4, r4, "EVIL.example.", true, true},
		{server6, r6, "evil.example.", true, true},
		{server4, r4, "good.example.", false, false},
		{server6, r6, "good.example.", true, false},
	} {
		a, err := lookup(t, pl.Pod, c.server, c.name, c.edns)
		switch {
		case err != nil:
			t.Errorf("%s: %s via %s: %v", mode, c.name, c.server, err)
		case c.denied && (a.Rcode != dns.RcodeNameError || len(a.Answer) != 0):
			t.Errorf("%s: %s via %s: %s with %d answers, want NXDOMAIN", mode, c.name, c.server, dns.RcodeToString[a.Rcode], len(a.Answer))
		case !c.denied && (a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1):
			t.Errorf("%s: %s via %s: %s with %d answers, want the resolver's answer", mode, c.name, c.server, dns.RcodeToString[a.Rcode], len(a.Answer))
		}
		if asked := c.r.wasAsked(strings.ToLower(c.name)); asked == c.denied {
			t.Errorf("%s: %s via %s: the resolver heard it: %t", mode, c.name, c.server, asked)
		}
	}
	// over TCP: the denied name's connection is reset, the other name resolves
	r4.asked = nil
	if a, err := lookupOver(t, pl.Pod, "tcp", server4, "evil.example.", false); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("%s: evil.example. over TCP: %v, %v; want the connection reset", mode, a, err)
	}
	if a, err := lookupOver(t, pl.Pod, "tcp", server4, "good.example.", false); err != nil || len(a.Answer) != 1 {
		t.Errorf("%s: good.example. over TCP: %v, %v; want the resolver's answer", mode, a, err)
	}
	if r4.wasAsked("evil.example.") || !r4.wasAsked("good.example.") {
		t.Errorf("%s: over TCP the resolver heard %q, want good.example. only", mode, r4.asked)
	}
	if n := h.reasonCount(bpf.ReasonDNSDenied); n != 4 {
		t.Errorf("%s: %d queries counted as dns-name-denied, want 4", mode, n)
	}
}
