package bpf_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/fqdn"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// zone is a resolver's answers by name: every record of a name, whatever the type asked, A and AAAA filtered.
type zone map[string][]string

func (z zone) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	for _, s := range z[strings.ToLower(q.Question[0].Name)] {
		r, err := dns.NewRR(s)
		if err != nil {
			continue
		}
		if (r.Header().Rrtype == dns.TypeA && q.Question[0].Qtype == dns.TypeAAAA) ||
			(r.Header().Rrtype == dns.TypeAAAA && q.Question[0].Qtype == dns.TypeA) {
			continue
		}
		m.Answer = append(m.Answer, r)
	}
	m.Compress = true
	_ = w.WriteMsg(m)
}

func serveZone(t *testing.T, n ns.NetNS, addr string, z zone) {
	t.Helper()
	testutil.ServeDNS(t, n, addr, z)
}

func resolveType(n ns.NetNS, network, server, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	return testutil.ExchangeDNS(n, network, server, q)
}

// On a real veth with a miekg/dns resolver as the trusted resolver: a name of the pod's fqdn patterns connects
// right after its answer (the first SYN), an address answered for another name does not, an address learned by
// one identity is not another's, a CNAME chain and AAAA over IPv6 are learned, a TTL of 1 s ends after the
// grace, an answer of more records than the kernel reads goes through the agent (the Learner learns and
// re-injects the datagram, and learns from the TCP segment the kernel passes), and a resolver that is not trusted
// is not reachable; without Moat every address connects and every resolver answers, so the firewall is what
// decides.
func TestFQDNOnARealVeth(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	var hostAddrs []netip.Prefix
	hostAddrs = append(hostAddrs, trafficHost4, trafficHost6, trafficNet4, trafficNet6, netip.MustParsePrefix("203.0.113.1/24"))
	for i := 2; i <= 7; i++ {
		hostAddrs = append(hostAddrs, netip.MustParsePrefix(fmt.Sprintf("203.0.113.%d/32", i)))
	}
	pl := testutil.NewPodLink(t, []netip.Prefix{trafficPod4, trafficPod6}, hostAddrs)
	server4, server6 := "198.51.100.1:53", "[2001:db8::1]:53"
	big := []string{"big.cdn.example. 60 IN A 203.0.113.5"}
	bigTCP := []string{"bigtcp.cdn.example. 60 IN A 203.0.113.6"}
	for i := range 19 {
		big = append(big, fmt.Sprintf("big.cdn.example. 60 IN A 198.51.100.%d", 100+i))
		bigTCP = append(bigTCP, fmt.Sprintf("bigtcp.cdn.example. 60 IN A 198.51.100.%d", 100+i))
	}
	z := zone{
		"api.example.com.":    {"api.example.com. 60 IN A 203.0.113.1", "api.example.com. 60 IN AAAA 2001:db8::1"},
		"other.example.":      {"other.example. 60 IN A 203.0.113.2"},
		"x.cdn.example.":      {"x.cdn.example. 60 IN CNAME edge.net.example.", "edge.net.example. 60 IN A 203.0.113.3"},
		"short.cdn.example.":  {"short.cdn.example. 1 IN A 203.0.113.4"},
		"big.cdn.example.":    big,
		"bigtcp.cdn.example.": bigTCP,
	}
	serveZone(t, pl.Host, server4, z)
	serveZone(t, pl.Host, server6, z)
	serveZone(t, pl.Host, "203.0.113.7:53", z) // a resolver that is not trusted
	targets := []string{"203.0.113.1:443", "203.0.113.2:443", "203.0.113.3:443", "203.0.113.4:443", "203.0.113.5:443",
		"203.0.113.6:443", "[2001:db8::1]:443"}
	for _, a := range targets {
		testutil.Listen(t, pl.Host, a)
	}
	// without Moat: everything connects, every resolver answers
	for _, a := range targets {
		if err := testutil.Exchange(pl.Pod, a, 2*time.Second); err != nil {
			t.Fatalf("baseline, no firewall, %s: %v", a, err)
		}
	}
	for _, s := range []string{server4, server6, "203.0.113.7:53"} {
		if a, err := resolveType(pl.Pod, "udp", s, "api.example.com.", dns.TypeA); err != nil || len(a.Answer) != 1 {
			t.Fatalf("baseline, no firewall, api.example.com. via %s: %v, %v", s, a, err)
		}
	}

	pol := fqdnPolicy(podID)
	pol.Rules = append(pol.Rules, policy.Rule{ID: 32, Direction: bpf.Egress, Action: bpf.ActionAllow,
		Peers: []policy.Peer{cidr("198.51.100.1/32"), cidr("2001:db8::1/128"), cidr("203.0.113.7/32")},
		Ports: []policy.PortRange{{Protocol: policy.ProtoUDP, First: 53, Last: 53}, {Protocol: policy.ProtoTCP, First: 53, Last: 53}}})
	h.policy(pol)
	other := *pol
	other.Identity = peerID
	h.policy(&other)
	var cdn, api bpf.FQDNValue
	cdn.Slots[bpf.DNSOne] = slotCDN
	api.Slots[bpf.DNSExact] = slotAPI
	for _, err := range []error{h.dp.SetFQDNSet(podID, 4), h.dp.SetFQDNSet(peerID, 4), h.dp.PutFQDNName(4, "cdn.example", cdn),
		h.dp.PutFQDNName(4, "api.example.com", api), h.dp.PutResolver(netip.MustParseAddr("198.51.100.1")),
		h.dp.PutResolver(netip.MustParseAddr("2001:db8::1"))} {
		if err != nil {
			t.Fatal(err)
		}
	}
	h.guardPodLink(pl, bpf.ModeTCX)
	// the Learner's socket lives where the host veth is (the enforcer's: the host's namespace)
	var learner *fqdn.Learner
	if err := pl.Host.Do(func(ns.NetNS) error {
		var err error
		log := logrus.New()
		log.SetOutput(t.Output())
		learner, err = fqdn.NewLearner(h.dp, func(uint32) []string { return fqdnPatterns }, logrus.NewEntry(log))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- learner.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		learner.Close() // a Read that is waiting returns
		<-done
	})

	resolve := func(network, server, name string, qtype uint16, want int) {
		t.Helper()
		a, err := resolveType(pl.Pod, network, server, name, qtype)
		if err != nil || len(a.Answer) != want {
			t.Fatalf("%s via %s over %s: %v, %v; want %d records", name, server, network, a, err, want)
		}
	}
	connects := func(addr string, timeout time.Duration) bool {
		return testutil.Exchange(pl.Pod, addr, timeout) == nil
	}

	resolve("udp", server4, "other.example.", dns.TypeA, 1)
	if connects("203.0.113.2:443", time.Second) {
		t.Error("an address answered for a name of no pattern connects")
	}
	resolve("udp", server4, "api.example.com.", dns.TypeA, 1)
	if !connects("203.0.113.1:443", 500*time.Millisecond) { // no SYN retransmission in 500 ms: the first SYN passed
		t.Error("api.example.com.'s address does not connect right after its answer")
	}
	if connects("203.0.113.2:443", time.Second) {
		t.Error("another name's address connects")
	}
	resolve("udp", server6, "api.example.com.", dns.TypeAAAA, 1)
	if !connects("[2001:db8::1]:443", 500*time.Millisecond) {
		t.Error("api.example.com.'s IPv6 address does not connect after its AAAA answer")
	}
	resolve("udp", server4, "x.cdn.example.", dns.TypeA, 2)
	if !connects("203.0.113.3:443", 500*time.Millisecond) {
		t.Error("the end of x.cdn.example.'s CNAME chain does not connect")
	}
	// the same pod as another identity that asked nothing: what podID learned is not its
	ep, err := bpf.NewEndpoint(peerID, bpf.ModeEnforce, []netip.Addr{trafficPod4.Addr(), trafficPod6.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.dp.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
		t.Fatal(err)
	}
	if connects("203.0.113.1:443", time.Second) {
		t.Error("an address learned by another identity connects")
	}
	ep.Identity = podID
	if err := h.dp.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
		t.Fatal(err)
	}

	// more records than the kernel reads: the agent learns, and re-injects the datagram the kernel dropped
	before := h.reasonCount(bpf.ReasonDNSToAgent)
	resolve("udp", server4, "big.cdn.example.", dns.TypeA, 20)
	if h.reasonCount(bpf.ReasonDNSToAgent) != before+1 {
		t.Error("big.cdn.example.'s answer did not go through the agent")
	}
	if !connects("203.0.113.5:443", time.Second) {
		t.Error("big.cdn.example.'s address, learned by the agent, does not connect")
	}
	// over TCP the kernel passes the segment and the agent learns from its copy (a SYN before that is retried)
	resolve("tcp", server4, "bigtcp.cdn.example.", dns.TypeA, 20)
	if !connects("203.0.113.6:443", 3*time.Second) {
		t.Error("bigtcp.cdn.example.'s address, learned by the agent from TCP, does not connect")
	}

	// a resolver that is not trusted: refused
	before = h.reasonCount(bpf.ReasonDNSUntrusted)
	if a, err := resolveType(pl.Pod, "udp", "203.0.113.7:53", "api.example.com.", dns.TypeA); err == nil {
		t.Errorf("an untrusted resolver answered: %v", a)
	}
	if h.reasonCount(bpf.ReasonDNSUntrusted) == before {
		t.Error("the query to an untrusted resolver was not counted as dns-untrusted")
	}

	// a TTL of 1 s with no minimum and a grace of 1 s: connects at once, and is denied again within seconds
	if err := h.dp.SetDNSTiming(0, time.Second); err != nil {
		t.Fatal(err)
	}
	resolve("udp", server4, "short.cdn.example.", dns.TypeA, 1)
	if !connects("203.0.113.4:443", 500*time.Millisecond) {
		t.Error("short.cdn.example.'s address does not connect right after its answer")
	}
	deadline := time.Now().Add(15 * time.Second)
	for connects("203.0.113.4:443", 300*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a TTL of 1 s with a grace of 1 s still connects after 15 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
