package bpf_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// percentile is the nearest-rank q-quantile (0 < q <= 1) of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// drainDNSEvents reads the dns_events ring until the benchmark ends, as the agent would, so that the ring never
// fills and every report pays for its place in it.
func drainDNSEvents(b *testing.B, dp *bpf.Datapath) {
	b.Helper()
	r, err := dp.NewDNSEventReader()
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := r.Read(); errors.Is(err, os.ErrClosed) {
				return
			} // an event the reader could not decode still left the ring
		}
	}()
	b.Cleanup(func() { r.Close(); <-done })
}

// BenchmarkDNSAnswer measures what the datapath costs a DNS answer on its way to a pod: moat_to_pod (h.dp.ToPod)
// run by BPF_PROG_TEST_RUN one packet at a time, each run's own time as the kernel measures it, so p50 and p99 are
// of single packets. The same 49-byte message (an answer for api.example.com, one A record, compressed) arrives as:
//   - path=udp: from port 5353, the baseline: the normal pipeline only (a reply of an established flow);
//   - path=answer: from port 53 of a trusted resolver to a pod whose identity has no fqdn patterns: moat_dns_answer
//     reads the question and the records, counts the answer (dns_stats, with its latency from the query) and
//     reports it (dns_events; the budget of events of answers no pattern matched is set so that none is sampled
//     away, so every run reports, the worst case), then tail-calls moat_to_pod_answered, the pipeline;
//   - path=fqdn: the same to a pod whose identity has api.example.com as an fqdn pattern: also learned (its address
//     written into fqdn_learned) before the pipeline.
//
// The tail calls run inside the one test run, so they are in its time. Before every run the pod's query goes out
// through moat_from_pod (not timed), so the answer is a reply of an established flow whose query dns_queries holds,
// as on a real link; the policy path is the same in all three. A reader drains dns_events as the agent would.
// Metrics: p50-ns, p99-ns, and added-p50-ns, added-p99-ns, the path's minus path=udp's.
func BenchmarkDNSAnswer(b *testing.B) {
	parent := b // the datapaths live until the whole benchmark ends
	msg := answerMsg(b, "api.example.com.", true, "api.example.com. 60 IN A 198.51.100.7")
	q := new(dns.Msg)
	q.SetQuestion("api.example.com.", dns.TypeA)
	q.Id = 0x4d6f // answerMsg's
	qmsg, err := q.Pack()
	if err != nil {
		b.Fatal(err)
	}
	var plain, learning *harness
	var udpP50, udpP99 time.Duration
	for _, path := range []string{"udp", "answer", "fqdn"} {
		b.Run("path="+path, func(b *testing.B) {
			var h *harness
			switch path {
			case "udp", "answer":
				if plain == nil {
					plain = newHarness(parent, bpf.Options{})
					p := fqdnPolicy(podID)
					p.Rules = nil // no fqdn peers, no patterns: the answer is read, counted and reported only
					plain.policy(p)
					for _, err := range []error{plain.dp.PutResolver(resolverV4), plain.dp.SetDNSAnswerEvents(1 << 30)} {
						if err != nil {
							b.Fatal(err)
						}
					}
					drainDNSEvents(parent, plain.dp)
				}
				h = plain
			case "fqdn":
				if learning == nil {
					learning = fqdnHarness(parent)
					drainDNSEvents(parent, learning.dp)
				}
				h = learning
			}
			port := uint16(53)
			if path == "udp" {
				port = 5353
			}
			out := testutil.Packet{Src: podV4, Dst: resolverV4, Proto: testutil.ProtoUDP, SPort: 40000, DPort: port,
				Payload: qmsg}.Bytes()
			in := testutil.Packet{Src: resolverV4, Dst: podV4, Proto: testutil.ProtoUDP, SPort: port, DPort: 40000,
				Payload: msg}.Bytes()
			setUDPChecksum(out)
			setUDPChecksum(in)
			ctx := skbContext(h.ifindex)
			statsBefore := answersCounted(b, h.dp)
			runs := make([]time.Duration, b.N)
			b.ResetTimer()
			for i := range b.N {
				if ret, err := h.dp.FromPod.Run(&ebpf.RunOptions{Data: out, Context: ctx}); err != nil || ret != retNext {
					b.Fatalf("the query: %s (%v), want passed", verdictName(ret), err)
				}
				runs[i] = runRepeat(b, h.dp.ToPod, in, ctx, 1, retNext)
			}
			b.StopTimer()
			// the paths did what they say: counted every answer of port 53, learned the fqdn name's address
			counted := answersCounted(b, h.dp) - statsBefore
			if want := map[bool]uint64{true: 0, false: uint64(b.N)}[path == "udp"]; counted != want {
				b.Fatalf("%d answers counted in dns_stats, want %d", counted, want)
			}
			if learned := h.learned(podID); path == "fqdn" && learned[netip.MustParseAddr("198.51.100.7")] != slotAPI {
				b.Fatalf("learned %v, want 198.51.100.7 for api.example.com", learned)
			} else if path != "fqdn" && len(learned) != 0 {
				b.Fatalf("learned %v, want nothing", learned)
			}
			var sum time.Duration
			for _, d := range runs {
				sum += d
			}
			slices.Sort(runs)
			p50, p99 := percentile(runs, 0.5), percentile(runs, 0.99)
			if path == "udp" {
				udpP50, udpP99 = p50, p99
			}
			b.ReportMetric(float64(sum)/float64(b.N), "ns/op")
			b.ReportMetric(float64(p50), "p50-ns")
			b.ReportMetric(float64(p99), "p99-ns")
			b.ReportMetric(float64(p50-udpP50), "added-p50-ns")
			b.ReportMetric(float64(p99-udpP99), "added-p99-ns")
		})
	}
}

// answersCounted is how many answers dns_stats counted for podID, of every type and rcode.
func answersCounted(b *testing.B, dp *bpf.Datapath) uint64 {
	b.Helper()
	stats, err := dp.DNSStats()
	if err != nil {
		b.Fatal(err)
	}
	var n uint64
	for k, v := range stats {
		if k.Identity == podID && k.Kind == uint8(bpf.DNSStatAnswers) {
			n += v
		}
	}
	return n
}

// The resolve-then-connect loop's world: the resolver (trafficNet6's address, on the host side) and the prefix of
// the names' addresses, routed locally in the host's namespace so that one listener accepts every one of them.
var (
	rcResolver = trafficNet6.Addr()
	rcNet      = netip.MustParsePrefix("2001:db8:1::/64")
)

// rcAddr is the address of n<i>.cdn.example: 2001:db8:1::<i>.
func rcAddr(i int) netip.Addr {
	a := rcNet.Addr().As16()
	binary.BigEndian.PutUint64(a[8:], uint64(i))
	return netip.AddrFrom16(a)
}

// cdnZone answers an AAAA question for n<i>.cdn.example with rcAddr(i), TTL 60, compressed as resolvers do;
// every other question with no record.
type cdnZone struct{}

func (cdnZone) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Compress = true
	qq := q.Question[0]
	if label, ok := strings.CutSuffix(strings.ToLower(qq.Name), ".cdn.example."); ok && qq.Qtype == dns.TypeAAAA &&
		strings.HasPrefix(label, "n") {
		if i, err := strconv.Atoi(label[1:]); err == nil && i > 0 {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeAAAA,
				Class: dns.ClassINET, Ttl: 60}, AAAA: rcAddr(i).AsSlice()})
		}
	}
	_ = w.WriteMsg(m)
}

// retransSegs reads RetransSegs from the Tcp: lines of the calling thread's network namespace's SNMP counters.
func retransSegs() (uint64, error) {
	data, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return 0, err
	}
	var tcp [][]string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "Tcp:") {
			tcp = append(tcp, strings.Fields(l))
		}
	}
	if len(tcp) != 2 {
		return 0, fmt.Errorf("%d Tcp: lines in the SNMP counters, want 2", len(tcp))
	}
	if i := slices.Index(tcp[0], "RetransSegs"); i > 0 && i < len(tcp[1]) {
		return strconv.ParseUint(tcp[1][i], 10, 64)
	}
	return 0, fmt.Errorf("no RetransSegs in %v", tcp[0])
}

// BenchmarkResolveConnect is a pod's resolve-then-connect loop on a real veth: each loop asks a miekg/dns resolver
// in the host side for the AAAA of a name never asked before (n<i>.cdn.example, 2001:db8:1::<i>), then connects to
// that address on TCP 443 with a timeout of 900 ms, under the first SYN retransmission's 1 s, and closes; one
// listener on [::]:443 accepts every address (a local route of 2001:db8:1::/64 in the host's namespace). The pod
// reaches both through its gateway, the host side, as a pod does.
//   - filter=none: no program attached, no policy;
//   - filter=moat: the datapath in tcx on the host veth; the world is denied but for UDP 53 to the resolver and the
//     fqdn pattern *.cdn.example on TCP 443; the resolver is trusted; no agent runs: only the kernel learns, from
//     the answers on their way to the pod. The per-identity bound of learned addresses is the default's 4,096: a
//     loop of 10,000 goes past it, where the kernel learns all the same and asks an agent for room (none runs).
//
// A loop succeeds on the first try when the connection is established within the 900 ms: a first SYN the
// firewall dropped fails it. Metrics: loops, ok-pct (first-try successes), failed, syn-retrans (RetransSegs of the
// pod's namespace, before and after), dns-p50-us and dns-p99-us (the round trip the client sees, write to read),
// connect-p50-us and connect-p99-us. A loop that fails under Moat is a finding, reported; one without a filter
// fails the benchmark (the harness is at fault), and so does an address never resolved that connects under Moat
// (then the learning decided nothing).
func BenchmarkResolveConnect(b *testing.B) {
	for _, filter := range []string{"none", "moat"} {
		b.Run("filter="+filter, func(b *testing.B) { resolveConnect(b, filter == "moat") })
	}
}

func resolveConnect(b *testing.B, moat bool) {
	pl := testutil.NewPodLink(b, []netip.Prefix{trafficPod4, trafficPod6}, []netip.Prefix{trafficHost4, trafficHost6, trafficNet6})
	local := &netlink.Route{Dst: &net.IPNet{IP: rcNet.Addr().AsSlice(), Mask: net.CIDRMask(rcNet.Bits(), 128)},
		Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST}
	if err := pl.Host.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		local.LinkIndex = lo.Attrs().Index
		return netlink.RouteAdd(local)
	}); err != nil {
		b.Fatalf("local route of %s in the host side: %v", rcNet, err)
	}
	b.Cleanup(func() { _ = pl.Host.Do(func(ns.NetNS) error { return netlink.RouteDel(local) }) })
	// the pod's way to the Internet is its gateway (a pod solicits no world address itself)
	if err := pl.Pod.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index,
			Dst: &net.IPNet{IP: net.ParseIP("2001:db8::"), Mask: net.CIDRMask(32, 128)}, Gw: trafficHost6.Addr().AsSlice()})
	}); err != nil {
		b.Fatalf("the pod's route to 2001:db8::/32: %v", err)
	}
	server := netip.AddrPortFrom(rcResolver, 53).String()
	testutil.ServeDNS(b, pl.Host, server, cdnZone{})
	testutil.Listen(b, pl.Host, "[::]:443")

	// the baseline, no firewall: a name resolves and its address connects (names past the loop's)
	const warm = 1 << 24
	if a, err := resolveType(pl.Pod, "udp", server, fmt.Sprintf("n%d.cdn.example.", warm), dns.TypeAAAA); err != nil || len(a.Answer) != 1 {
		b.Fatalf("baseline, no firewall: %v, %v", a, err)
	}
	if err := testutil.Exchange(pl.Pod, netip.AddrPortFrom(rcAddr(warm), 443).String(), 2*time.Second); err != nil {
		b.Fatalf("baseline, no firewall: connect to %s: %v", rcAddr(warm), err)
	}

	if moat {
		h := newHarness(b, bpf.Options{})
		h.policy(&policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny,
			Rules: []policy.Rule{
				{ID: 71, Direction: bpf.Egress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr(rcResolver.String() + "/128")},
					Ports: ports(policy.ProtoUDP, 53, 53)},
				{ID: 72, Direction: bpf.Egress, Action: bpf.ActionAllow, Peers: []policy.Peer{{FQDN: "*.cdn.example"}},
					Ports: ports(policy.ProtoTCP, 443, 443)},
			}})
		var cdn bpf.FQDNValue
		cdn.Slots[bpf.DNSOne] = 1 << 0 // the policy's only pattern: slot 0
		for _, err := range []error{h.dp.SetFQDNSet(podID, 4), h.dp.PutFQDNName(4, "cdn.example", cdn),
			h.dp.PutResolver(rcResolver),
			h.dp.UpdateConfig(func(c *bpf.Config) { c.CtMaxPerEndpoint = 65536 })} { // the enforcer's default
			if err != nil {
				b.Fatal(err)
			}
		}
		h.guardPodLink(pl, bpf.ModeTCX)
	}

	var (
		ok               int
		failures         []string
		rtts, connects   []time.Duration
		before, after    uint64
		retransBeforeErr error
	)
	b.ResetTimer()
	err := pl.Pod.Do(func(ns.NetNS) error { // one locked thread in the pod's namespace for the whole loop
		before, retransBeforeErr = retransSegs()
		client := &dns.Client{Net: "udp", Timeout: time.Second}
		dialer := net.Dialer{Timeout: 900 * time.Millisecond}
		for i := 1; i <= b.N; i++ {
			q := new(dns.Msg)
			q.SetQuestion(fmt.Sprintf("n%d.cdn.example.", i), dns.TypeAAAA)
			a, rtt, err := client.Exchange(q, server)
			if err != nil || len(a.Answer) != 1 {
				failures = append(failures, fmt.Sprintf("loop %d: resolve %s: %v, %v", i, q.Question[0].Name, a, err))
				continue
			}
			rtts = append(rtts, rtt)
			aaaa, isAAAA := a.Answer[0].(*dns.AAAA)
			if !isAAAA {
				failures = append(failures, fmt.Sprintf("loop %d: the answer is %v", i, a.Answer[0]))
				continue
			}
			start := time.Now()
			c, err := dialer.Dial("tcp", net.JoinHostPort(aaaa.AAAA.String(), "443"))
			if err != nil {
				failures = append(failures, fmt.Sprintf("loop %d: connect to %s: %v", i, aaaa.AAAA, err))
				continue
			}
			connects = append(connects, time.Since(start))
			c.Close()
			ok++
		}
		var err error
		after, err = retransSegs()
		return err
	})
	b.StopTimer()
	if err != nil || retransBeforeErr != nil {
		b.Fatalf("the pod's TCP counters: %v, %v", retransBeforeErr, err)
	}
	slices.Sort(rtts)
	slices.Sort(connects)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(float64(b.N), "loops")
	b.ReportMetric(100*float64(ok)/float64(b.N), "ok-pct")
	b.ReportMetric(float64(len(failures)), "failed")
	b.ReportMetric(float64(after-before), "syn-retrans")
	b.ReportMetric(us(percentile(rtts, 0.5)), "dns-p50-us")
	b.ReportMetric(us(percentile(rtts, 0.99)), "dns-p99-us")
	b.ReportMetric(us(percentile(connects, 0.5)), "connect-p50-us")
	b.ReportMetric(us(percentile(connects, 0.99)), "connect-p99-us")
	for i, f := range failures {
		if i == 20 {
			b.Logf("... and %d more", len(failures)-i)
			break
		}
		b.Log(f)
	}
	// under Moat, what decided is the learning: an address no answer gave does not connect
	if moat {
		if err := testutil.Exchange(pl.Pod, netip.AddrPortFrom(rcAddr(warm+1), 443).String(), 300*time.Millisecond); err == nil {
			b.Errorf("%s, never resolved, connects under Moat", rcAddr(warm+1))
		}
	}
	if !moat && len(failures) > 0 {
		b.Errorf("without a filter %d of %d loops failed: the harness, not the firewall, is at fault", len(failures), b.N)
	}
}
