package bpf_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// nxZone answers the names it holds, any type with the records it has, and NXDOMAIN for every other name.
type nxZone map[string][]string

func (z nxZone) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	records, ok := z[strings.ToLower(q.Question[0].Name)]
	if !ok {
		m.SetRcode(q, dns.RcodeNameError)
	}
	for _, s := range records {
		if r, err := dns.NewRR(s); err == nil && r.Header().Rrtype == q.Question[0].Qtype {
			m.Answer = append(m.Answer, r)
		}
	}
	_ = w.WriteMsg(m)
}

// On a real veth: every answer a pod gets from a trusted resolver is an event with its name, type, rcode,
// addresses and latency, and so is the NXDOMAIN the datapath gives for a dnsDeny name; answers no fqdn pattern
// matched are held to the node's budget (none when it is 0, counted as sampled), the others are not; the
// per-identity counters add up (queries, answers by type and rcode, latency, synthesized), and a type the
// datapath does not name is counted as "other", so a pod cannot make a counter of every type there is.
func TestDNSEventsOnARealVeth(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	pl := testutil.NewPodLink(t, []netip.Prefix{trafficPod4, trafficPod6},
		[]netip.Prefix{trafficHost4, trafficHost6, trafficNet4, trafficNet6})
	server := trafficNet4.Addr().String() + ":53"
	testutil.ServeDNS(t, pl.Host, server, nxZone{
		"api.example.com.": {"api.example.com. 60 IN A 203.0.113.1", "api.example.com. 60 IN AAAA 2001:db8::1"},
		"other.example.":   {"other.example. 60 IN A 203.0.113.2", "other.example. 60 IN A 203.0.113.3"},
	})
	if a, err := resolveType(pl.Pod, "udp", server, "other.example.", dns.TypeA); err != nil || len(a.Answer) != 2 {
		t.Fatalf("baseline, no firewall: other.example. = %v, %v", a, err)
	}

	h.policy(trafficPolicy()) // UDP 53 out is allowed
	var api bpf.FQDNValue
	api.Slots[bpf.DNSExact] = slotAPI
	for _, err := range []error{h.dp.SetFQDNSet(podID, 4), h.dp.PutFQDNName(4, "api.example.com", api),
		h.dp.SetDNSSet(podID, 3), h.dp.PutDNSName(3, "evil.example", deny(bpf.DNSExact, 80)),
		h.dp.PutResolver(trafficNet4.Addr())} {
		if err != nil {
			t.Fatal(err)
		}
	}
	h.guardPodLink(pl, bpf.ModeTCX)
	r, err := h.dp.NewDNSEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	next := func(what string) (bpf.DNSEvent, bool) {
		t.Helper()
		r.SetDeadline(time.Now().Add(2 * time.Second))
		ev, err := r.Read()
		if err != nil {
			t.Errorf("%s: no DNS event: %v", what, err)
			return ev, false
		}
		return ev, true
	}
	resolve := func(name string, qtype uint16, rcode int) {
		t.Helper()
		a, err := resolveType(pl.Pod, "udp", server, name, qtype)
		if err != nil || a.Rcode != rcode {
			t.Fatalf("%s: %v, %v; want %s", name, a, err, dns.RcodeToString[rcode])
		}
	}
	addrs := func(ev bpf.DNSEvent) []string {
		var out []string
		for _, a := range ev.Addresses {
			out = append(out, a.Addr.String())
		}
		return out
	}

	resolve("Other.Example.", dns.TypeA, dns.RcodeSuccess)
	if ev, ok := next("other.example."); ok {
		if ev.Name != "Other.Example" || ev.Type != dns.TypeA || ev.Rcode != dns.RcodeSuccess || ev.Identity != podID ||
			ev.Flags != 0 || ev.Pod != trafficPod4.Addr() || ev.Resolver != trafficNet4.Addr() || ev.AnswerCount != 2 ||
			strings.Join(addrs(ev), " ") != "203.0.113.2 203.0.113.3" || ev.Addresses[0].TTL != 60 ||
			ev.Latency <= 0 || ev.Latency > 2*time.Second || ev.Ifindex != uint32(pl.HostIfindex) {
			t.Errorf("other.example.'s event: %+v", ev)
		}
	}
	resolve("api.example.com.", dns.TypeAAAA, dns.RcodeSuccess)
	if ev, ok := next("api.example.com."); ok {
		if ev.Name != "api.example.com" || ev.Type != dns.TypeAAAA || ev.Flags != bpf.DNSMatchedFQDN ||
			ev.Slots != slotAPI || strings.Join(addrs(ev), " ") != "2001:db8::1" {
			t.Errorf("api.example.com.'s event: %+v", ev)
		}
	}
	resolve("missing.example.", dns.TypeA, dns.RcodeNameError)
	if ev, ok := next("missing.example."); ok && (ev.Rcode != dns.RcodeNameError || ev.Flags != 0 || len(ev.Addresses) != 0) {
		t.Errorf("missing.example.'s event: %+v", ev)
	}
	resolve("evil.example.", dns.TypeHTTPS, dns.RcodeNameError)
	if ev, ok := next("evil.example."); ok && (ev.Name != "evil.example" || ev.Type != dns.TypeHTTPS ||
		ev.Flags != bpf.DNSSynthesized || ev.RuleID != 80 || ev.Rcode != dns.RcodeNameError || ev.Pod != trafficPod4.Addr()) {
		t.Errorf("evil.example.'s event: %+v", ev)
	}
	resolve("other.example.", 4242, dns.RcodeSuccess) // a type of no name
	if ev, ok := next("type 4242"); ok && ev.Type != 4242 {
		t.Errorf("the event of type 4242: %+v", ev)
	}

	// no budget for answers without a pattern: those go uncounted as events, the fqdn name's still comes
	if err := h.dp.SetDNSAnswerEvents(0); err != nil {
		t.Fatal(err)
	}
	sampled, _ := h.dp.Stat(bpf.StatDNSEventsSampled)
	resolve("other.example.", dns.TypeA, dns.RcodeSuccess)
	resolve("api.example.com.", dns.TypeA, dns.RcodeSuccess)
	if ev, ok := next("api.example.com. with no budget"); ok && ev.Name != "api.example.com" {
		t.Errorf("with no budget, the first event is of %s, want api.example.com's only", ev.Name)
	}
	if n, _ := h.dp.Stat(bpf.StatDNSEventsSampled); n != sampled+1 {
		t.Errorf("answers without an event: %d, want %d", n, sampled+1)
	}

	stats, err := h.dp.DNSStats()
	if err != nil {
		t.Fatal(err)
	}
	count := func(kind bpf.DNSStatKind, value uint16, rcode uint8) uint64 {
		return stats[bpf.DNSStatKey{Identity: podID, Kind: uint8(kind), Value: value, Rcode: rcode}]
	}
	var latency uint64
	for b := range bpf.DNSLatencyBuckets {
		latency += count(bpf.DNSStatLatency, uint16(b), 0)
	}
	for _, c := range []struct {
		what      string
		got, want uint64
	}{
		{"queries sent", count(bpf.DNSStatQueries, 0, 0), 6}, // the denied one never leaves
		{"A answers, NOERROR", count(bpf.DNSStatAnswers, dns.TypeA, 0), 3},
		{"AAAA answers, NOERROR", count(bpf.DNSStatAnswers, dns.TypeAAAA, 0), 1},
		{"A answers, NXDOMAIN", count(bpf.DNSStatAnswers, dns.TypeA, dns.RcodeNameError), 1},
		{"answers of another type", count(bpf.DNSStatAnswers, 0, 0), 1},
		{"answers by latency", latency, 6},
		{"NXDOMAIN synthesized for HTTPS", count(bpf.DNSStatSynthesized, dns.TypeHTTPS, 0), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d (all: %v)", c.what, c.got, c.want, stats)
		}
	}
	for k := range stats {
		if k.Kind == uint8(bpf.DNSStatAnswers) && k.Value == 4242 {
			t.Errorf("a counter of type 4242: %+v", k)
		}
	}
	if err := h.dp.ForgetDNSStats(func(id uint32) bool { return id != podID }); err != nil {
		t.Fatal(err)
	}
	if stats, _ := h.dp.DNSStats(); len(stats) != 0 {
		t.Errorf("after forgetting the identity, its counters stay: %v", stats)
	}
}
