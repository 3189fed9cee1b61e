package bpf_test

import (
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/fqdn"
	"github.com/moatfw/moat/internal/testutil"
)

// The patterns of fqdnPolicy in slot order, and the fqdn_names entries that say so.
var fqdnPatterns = []string{"*.cdn.example", "api.example.com"}

// fqdnHarness is a harness whose pod's identity has fqdnPolicy's patterns as fqdn set 4, and trusts the resolver.
func fqdnHarness(t testing.TB) *harness {
	t.Helper()
	h := newHarness(t, bpf.Options{})
	h.policy(fqdnPolicy(podID))
	var cdn, api bpf.FQDNValue
	cdn.Slots[bpf.DNSOne] = slotCDN
	api.Slots[bpf.DNSExact] = slotAPI
	for _, err := range []error{h.dp.SetFQDNSet(podID, 4), h.dp.PutFQDNName(4, "cdn.example", cdn),
		h.dp.PutFQDNName(4, "api.example.com", api), h.dp.PutResolver(resolverV4), h.dp.PutResolver(resolverV6),
		h.dp.SetIPCache(netip.PrefixFrom(resolverV6, 128), bpf.ClassService, 0)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// answerMsg packs an answer to a question for name (type A) holding records, compressed or not.
func answerMsg(t testing.TB, name string, compress bool, records ...string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = 0x4d6f
	m.Response = true
	m.Compress = compress
	for _, r := range records {
		m.Answer = append(m.Answer, rr(t, r))
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// answerFrame is a resolver's UDP answer to the pod (port 53 to 40000), its checksum right.
func answerFrame(from, to netip.Addr, payload []byte) []byte {
	frame := testutil.Packet{Src: from, Dst: to, Proto: testutil.ProtoUDP, SPort: 53, DPort: 40000, Payload: payload}.Bytes()
	setUDPChecksum(frame)
	return frame
}

// learned is what an identity learned: address -> slots.
func (h *harness) learned(identity uint32) map[netip.Addr]uint64 {
	h.t.Helper()
	all, err := h.dp.LearnedFQDN()
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[netip.Addr]uint64{}
	for _, l := range all {
		if l.Identity == identity {
			out[l.Addr] = l.Slots
		}
	}
	return out
}

func (h *harness) forgetAll() {
	h.t.Helper()
	all, err := h.dp.LearnedFQDN()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, l := range all {
		if err := h.dp.ForgetFQDN(l.Identity, l.Addr); err != nil {
			h.t.Fatal(err)
		}
	}
}

// reference is what fqdn.ReadAnswer (miekg/dns reading the names) says an answer teaches the identity of
// fqdnPatterns.
func reference(msg []byte) map[netip.Addr]uint64 {
	out := map[netip.Addr]uint64{}
	a, ok := fqdn.ReadAnswer(msg)
	if !ok {
		return out
	}
	slots := fqdn.Match(fqdnPatterns, a.Question)
	if slots == 0 {
		return out
	}
	for _, l := range a.Addrs {
		out[bpf.FQDNAddr(l.Addr)] |= slots
	}
	return out
}

// edit returns msg with its bytes from off replaced.
func edit(msg []byte, off int, b ...byte) []byte {
	out := append([]byte(nil), msg...)
	copy(out[off:], b)
	return out
}

// An answer from a trusted resolver for a name of the pod's patterns teaches exactly what the reference reading
// says (A, AAAA, a CNAME chain, case), nothing for names not asked, other classes, a question of no pattern; what
// the kernel cannot read in place goes to the agent (dropped, counted, on the ring) and teaches nothing there;
// hostile answers (a compression loop, pointers out of bounds or forward, records cut, counts that lie, rdlength
// lies) never teach anything the reference does not.
func TestFQDNAnswers(t *testing.T) {
	h := fqdnHarness(t)
	fallback, err := h.dp.NewDNSFallbackReader()
	if err != nil {
		t.Fatal(err)
	}
	defer fallback.Close()
	api := "api.example.com."
	full := answerMsg(t, api, true, "api.example.com. 60 IN A 198.51.100.7")
	// the record's owner is a pointer at offset 12+17+4 = 33 (c0 0c)
	twoCounted := answerMsg(t, api, true, "api.example.com. 60 IN A 198.51.100.7", "api.example.com. 60 IN A 198.51.100.8")
	for _, c := range []struct {
		name  string
		msg   []byte
		from  netip.Addr
		to    netip.Addr
		agent bool // handed to the agent (and dropped)
	}{
		{"A", full, resolverV4, podV4, false},
		{"A, uncompressed", answerMsg(t, api, false, "api.example.com. 60 IN A 198.51.100.7"), resolverV4, podV4, false},
		{"AAAA over IPv6", answerMsg(t, api, true, "api.example.com. 60 IN AAAA 2001:db8::7"), resolverV6, podV6, false},
		{"case", answerMsg(t, "API.Example.COM.", true, "api.example.com. 60 IN A 198.51.100.7"), resolverV4, podV4, false},
		{"CNAME chain", answerMsg(t, "x.cdn.example.", true, "x.cdn.example. 60 IN CNAME edge.net.example.",
			"edge.net.example. 60 IN CNAME edge2.net.example.", "edge2.net.example. 30 IN A 203.0.113.9",
			"edge2.net.example. 30 IN AAAA 2001:db8::9"), resolverV4, podV4, false},
		{"CNAME chain, uncompressed: to the agent", answerMsg(t, "x.cdn.example.", false, "x.cdn.example. 60 IN CNAME edge.net.example.",
			"edge.net.example. 30 IN A 203.0.113.9"), resolverV4, podV4, true},
		{"a name not asked", answerMsg(t, api, true, "other.example. 60 IN A 198.51.100.66", "api.example.com. 60 IN A 198.51.100.7"), resolverV4, podV4, false},
		// the second owner is a pointer into the first record's data: a name the kernel does not compare
		{"a CNAME of a name not asked", answerMsg(t, api, true, "other.example. 60 IN CNAME x.example.", "x.example. 60 IN A 198.51.100.66"), resolverV4, podV4, true},
		{"class CH", answerMsg(t, api, true, "api.example.com. 60 CH A 198.51.100.7"), resolverV4, podV4, false},
		{"a question of no pattern", answerMsg(t, "www.evil.example.", true, "www.evil.example. 60 IN A 198.51.100.7"), resolverV4, podV4, false},
		{"y.x.cdn.example: two labels more than *.", answerMsg(t, "y.x.cdn.example.", true, "y.x.cdn.example. 60 IN A 198.51.100.7"), resolverV4, podV4, false},
		{"an untrusted source", full, netip.MustParseAddr("10.96.0.11"), podV4, false},
		{"TC set", edit(full, 2, full[2]|0x02), resolverV4, podV4, false},
		{"TTL 0 (min TTL applies)", answerMsg(t, api, true, "api.example.com. 0 IN A 198.51.100.7"), resolverV4, podV4, false},
		{"owner pointer to itself", edit(full, 33, 0xc0, 33), resolverV4, podV4, true},
		{"owner pointer out of bounds", edit(full, 33, 0xff, 0xff), resolverV4, podV4, true},
		{"owner label of another type", edit(full, 33, 0x80, 0x0c), resolverV4, podV4, false},
		{"a CNAME pointing at itself", edit(answerMsg(t, "x.cdn.example.", true, "x.cdn.example. 60 IN CNAME edge.net.example.",
			"edge.net.example. 30 IN A 203.0.113.9"), 12+15+4+12, 0xc0, 12+15+4+12), resolverV4, podV4, true},
		{"a record cut", full[:len(full)-2], resolverV4, podV4, false},
		{"ANCOUNT 2, one record", edit(full, 6, 0, 2), resolverV4, podV4, false},
		{"ANCOUNT 65535", edit(full, 6, 0xff, 0xff), resolverV4, podV4, true},
		{"ANCOUNT 17", edit(full, 6, 0, 17), resolverV4, podV4, true},
		{"rdlength 5 (data past it)", append(edit(full, 33+10, 0, 5), 0), resolverV4, podV4, false},
		{"rdlength past the end", edit(full, 33+10, 0, 200), resolverV4, podV4, false},
		{"rdlength 3 then a record", edit(twoCounted, 33+10, 0, 3), resolverV4, podV4, false},
		{"QDCOUNT 2", edit(full, 4, 0, 2), resolverV4, podV4, false},
		{"a query", edit(full, 2, full[2]&^0x80), resolverV4, podV4, false},
	} {
		h.forgetAll()
		before := h.reasonCount(bpf.ReasonDNSToAgent)
		ret := h.run(h.dp.ToPod, answerFrame(c.from, c.to, c.msg))
		got := h.learned(podID)
		want := reference(c.msg)
		if c.from != resolverV4 && c.from != resolverV6 || c.agent {
			want = map[netip.Addr]uint64{}
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: learned %v, want %v", c.name, got, want)
		}
		agent := h.reasonCount(bpf.ReasonDNSToAgent) == before+1
		if agent != c.agent || (c.agent && ret != retDrop) || (!c.agent && ret != retNext) {
			t.Errorf("%s: %s, to the agent: %t; want to the agent: %t", c.name, verdictName(ret), agent, c.agent)
		}
		if c.agent {
			fallback.SetDeadline(time.Now().Add(time.Second))
			rec, err := fallback.Read()
			if err != nil {
				t.Errorf("%s: nothing on the fallback ring: %v", c.name, err)
			} else if rec.Ifindex != h.ifindex || rec.Identity != podID || string(rec.Frame[42:]) != string(c.msg) {
				t.Errorf("%s: the fallback record is ifindex %d identity %d, %d bytes", c.name, rec.Ifindex, rec.Identity, len(rec.Frame))
			}
		}
	}
	// the expiry of a TTL of 0 is the minimum TTL plus the grace
	h.forgetAll()
	h.run(h.dp.ToPod, answerFrame(resolverV4, podV4, answerMsg(t, api, true, "api.example.com. 0 IN A 198.51.100.7")))
	all, err := h.dp.LearnedFQDN()
	if err != nil || len(all) != 1 {
		t.Fatalf("learned %v (%v)", all, err)
	}
	if d := time.Until(all[0].Expires); d < bpf.DefaultDNSMinTTL+bpf.DefaultDNSGrace-5*time.Second || d > bpf.DefaultDNSMinTTL+bpf.DefaultDNSGrace+time.Second {
		t.Errorf("a TTL of 0 expires in %v, want about %v", d, bpf.DefaultDNSMinTTL+bpf.DefaultDNSGrace)
	}
	// a learned address opens the connection the rule allows, right after the answer
	if got := h.from(syn(podV4, worldV4, 44000)); got != retNext {
		t.Errorf("a SYN to the answer's address: %s, want passed", verdictName(got))
	}
}

// Past the identity's bound, an answer is learned all the same (so it works with no agent) and the agent is asked
// for room: a fallback record without a frame, on which the Learner removes the identity's addresses that expire
// first until it is back under its bound.
func TestFQDNAnswerBound(t *testing.T) {
	h := fqdnHarness(t)
	if err := h.dp.SetFQDNBound(2); err != nil {
		t.Fatal(err)
	}
	rd, err := h.dp.NewDNSFallbackReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	h.learn(podID, worldV6, slotCDN, time.Second) // expires first
	msg := answerMsg(t, "api.example.com.", true, "api.example.com. 60 IN A 198.51.100.7", "api.example.com. 60 IN A 198.51.100.8")
	before := h.reasonCount(bpf.ReasonDNSToAgent)
	if ret := h.run(h.dp.ToPod, answerFrame(resolverV4, podV4, msg)); ret != retNext || h.reasonCount(bpf.ReasonDNSToAgent) != before {
		t.Errorf("past the bound: %s, want passed, not handed over", verdictName(ret))
	}
	if got := h.learned(podID); len(got) != 3 {
		t.Errorf("learned %v past the bound, want the answer's two addresses besides the one before", got)
	}
	rd.SetDeadline(time.Now().Add(2 * time.Second))
	rec, err := rd.Read()
	if err != nil || len(rec.Frame) != 0 || rec.Identity != podID {
		t.Fatalf("the request for room: %+v, %v; want a record of identity %d without a frame", rec, err, podID)
	}
	log := logrus.New()
	log.SetOutput(t.Output())
	learner, err := fqdn.NewLearner(h.dp, func(uint32) []string { return fqdnPatterns }, logrus.NewEntry(log))
	if err != nil {
		t.Fatal(err)
	}
	defer learner.Close()
	if _, err := learner.Handle(rec); err != nil {
		t.Fatal(err)
	}
	got := h.learned(podID)
	if _, ok := got[worldV6]; len(got) != 2 || ok {
		t.Errorf("after the room was made: %v, want the answer's two addresses (the one that expires first gone)", got)
	}
	if n, err := h.dp.FQDNCount(podID); err != nil || n != 2 {
		t.Errorf("count %d (%v), want 2", n, err)
	}
}

// A pod of an identity with fqdn peers may open DNS (53, 853; UDP and TCP) to trusted resolvers only; another
// identity's pods, and other ports, are not concerned; an established flow is not cut.
func TestFQDNUntrustedResolver(t *testing.T) {
	h := fqdnHarness(t)
	untrusted := netip.MustParseAddr("203.0.113.53")
	for _, c := range []struct {
		name   string
		pkt    testutil.Packet
		want   uint32
		reason bpf.Reason
	}{
		{"trusted, UDP 53", udp(podV4, resolverV4, 45000, 53), retNext, bpf.ReasonAllowDefault},
		{"trusted v6, TCP 53", tcp(podV6, resolverV6, 45001, 53, testutil.TCPSyn), retNext, bpf.ReasonAllowDefault},
		{"untrusted, UDP 53", udp(podV4, untrusted, 45002, 53), retDrop, bpf.ReasonDNSUntrusted},
		{"untrusted, TCP 853", tcp(podV4, untrusted, 45003, 853, testutil.TCPSyn), retDrop, bpf.ReasonDNSUntrusted},
		{"a cluster address, UDP 53", udp(podV4, netip.MustParseAddr("10.1.0.9"), 45004, 53), retDrop, bpf.ReasonDNSUntrusted},
		{"untrusted, other port", tcp(podV4, untrusted, 45005, 443, testutil.TCPSyn), retDrop, bpf.ReasonDenyDefault},
	} {
		before := h.reasonCount(c.reason)
		if got := h.from(c.pkt); got != c.want || h.reasonCount(c.reason) != before+1 {
			t.Errorf("%s: %s, want %s by %s", c.name, verdictName(got), verdictName(c.want), bpf.ReasonName(c.reason))
		}
	}
	// without fqdn peers the same is allowed: the check is what denies it
	p := fqdnPolicy(podID)
	p.Rules = nil
	h.policy(p)
	if got := h.from(udp(podV4, netip.MustParseAddr("10.1.0.9"), 45006, 53)); got != retNext {
		t.Errorf("without fqdn peers, DNS to a cluster address: %s, want passed", verdictName(got))
	}
}

// A DNS flow to a resolver that is not trusted, opened while its namespace had no fqdn peers, goes at the pod's
// next packet once the namespace has them (a reply that comes first still passes, and decides nothing); a flow to
// a trusted resolver opened the same way goes on.
func TestFQDNUntrustedResolverEstablishedBefore(t *testing.T) {
	h := fqdnHarness(t)
	plain := fqdnPolicy(podID)
	plain.Rules = nil
	h.policy(plain)
	other := netip.MustParseAddr("10.1.0.9") // a cluster address: allowed without fqdn peers
	if got := h.from(udp(podV4, other, 45100, 53)); got != retNext {
		t.Fatalf("without fqdn peers, DNS to %s: %s, want passed", other, verdictName(got))
	}
	if got := h.from(udp(podV4, resolverV4, 45101, 53)); got != retNext {
		t.Fatalf("without fqdn peers, DNS to the trusted resolver: %s, want passed", verdictName(got))
	}
	h.policy(fqdnPolicy(podID))
	if got := h.to(udp(other, podV4, 53, 45100)); got != retNext {
		t.Errorf("the untrusted resolver's reply right after the change: %s, want passed", verdictName(got))
	}
	before := h.reasonCount(bpf.ReasonRevoked)
	if got := h.from(udp(podV4, other, 45100, 53)); got != retDrop || h.reasonCount(bpf.ReasonRevoked) != before+1 {
		t.Errorf("the pod's next packet to the untrusted resolver: %s, want revoked", verdictName(got))
	}
	if got := h.from(udp(podV4, resolverV4, 45101, 53)); got != retNext {
		t.Errorf("the pod's next packet to the trusted resolver: %s, want passed", verdictName(got))
	}
}
