package bpf_test

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// egressOnly443 allows TCP 443 and UDP 53 to the world and denies every other world connection both ways.
func egressOnly443() *policy.IdentityPolicy {
	return &policy.IdentityPolicy{
		Identity: podID, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny,
		Rules: []policy.Rule{
			{ID: 31, Direction: bpf.Egress, Action: bpf.ActionAllow, AllPeers: true,
				Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: 443, Last: 443},
					{Protocol: policy.ProtoUDP, First: 53, Last: 53}, {Protocol: policy.ProtoICMP, First: 8, Last: 8},
					{Protocol: policy.ProtoICMPv6, First: 128, Last: 128}}},
		},
	}
}

func TestConntrackReplies(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	cases := []struct {
		name       string
		out, reply testutil.Packet
	}{
		{"tcp v4", tcp(podV4, worldV4, 41000, 443, testutil.TCPSyn), tcp(worldV4, podV4, 443, 41000, testutil.TCPSyn|testutil.TCPAck)},
		{"tcp v6", tcp(podV6, worldV6, 41001, 443, testutil.TCPSyn), tcp(worldV6, podV6, 443, 41001, testutil.TCPSyn|testutil.TCPAck)},
		{"udp v4", udp(podV4, worldV4, 41002, 53), udp(worldV4, podV4, 53, 41002)},
		{"udp v6", udp(podV6, worldV6, 41003, 53), udp(worldV6, podV6, 53, 41003)},
		{"icmp echo", icmp(podV4, worldV4, 8), icmp(worldV4, podV4, 0)},
		{"icmpv6 echo", icmp(podV6, worldV6, 128), icmp(worldV6, podV6, 129)},
	}
	for _, c := range cases {
		if got := h.to(c.reply); got != retDrop {
			t.Errorf("%s: reply before the flow exists: %s, want drop", c.name, verdictName(got))
		}
		if got := h.from(c.out); got != retNext {
			t.Fatalf("%s: first packet: %s, want pass", c.name, verdictName(got))
		}
		before := h.reasonCount(bpf.ReasonCTReply)
		if got := h.to(c.reply); got != retNext {
			t.Errorf("%s: reply: %s, want pass", c.name, verdictName(got))
		}
		if h.reasonCount(bpf.ReasonCTReply) != before+1 {
			t.Errorf("%s: reply not counted as a conntrack reply", c.name)
		}
		if got := h.from(c.out); got != retNext {
			t.Errorf("%s: next packet: %s, want pass", c.name, verdictName(got))
		}
	}
	// Another remote port of the same pair is a new, denied, connection.
	if got := h.to(tcp(worldV4, podV4, 444, 41000, testutil.TCPSyn|testutil.TCPAck)); got != retDrop {
		t.Errorf("unrelated inbound: %s, want drop", verdictName(got))
	}
	// A denied first packet leaves no entry, so its "reply" is denied too.
	if got := h.from(tcp(podV4, worldV4, 41004, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("denied egress: %s, want drop", verdictName(got))
	}
	if got := h.to(tcp(worldV4, podV4, 80, 41004, testutil.TCPSyn|testutil.TCPAck)); got != retDrop {
		t.Errorf("reply to denied egress: %s, want drop", verdictName(got))
	}
}

func ctKey(h *harness, proto uint8, local, remote netip.Addr, lport, rport uint16) bpf.CTKey {
	return bpf.NewCTKey(h.ifindex, proto, local, lport, remote, rport)
}

func (h *harness) ctEntry(k bpf.CTKey) (bpf.CTValue, bool) {
	h.t.Helper()
	var v bpf.CTValue
	err := h.dp.ConntrackMap().Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return v, true
}

func TestConntrackTCPClose(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())

	// A RST the endpoint would take ends the entry at once: the reply after it is a new (denied) inbound
	// connection.
	syn := tcp(podV4, worldV4, 42000, 443, testutil.TCPSyn)
	syn.Seq = 1000
	synAck := tcp(worldV4, podV4, 443, 42000, testutil.TCPSyn|testutil.TCPAck)
	synAck.Seq, synAck.Ack = 7000, 1001
	rst := tcp(worldV4, podV4, 443, 42000, testutil.TCPRst)
	rst.Seq = 7001
	h.from(syn)
	h.to(synAck)
	if got := h.to(rst); got != retNext {
		t.Errorf("RST of a tracked flow: %s, want pass", verdictName(got))
	}
	if _, ok := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, 42000, 443)); ok {
		t.Errorf("entry still there after RST")
	}
	if got := h.to(tcp(worldV4, podV4, 443, 42000, testutil.TCPAck)); got != retDrop {
		t.Errorf("packet after RST: %s, want drop", verdictName(got))
	}

	// FIN both ways shortens the entry's life to the close timeout.
	h.from(tcp(podV4, worldV4, 42001, 443, testutil.TCPSyn))
	h.to(tcp(worldV4, podV4, 443, 42001, testutil.TCPSyn|testutil.TCPAck))
	open, _ := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, 42001, 443))
	h.from(tcp(podV4, worldV4, 42001, 443, testutil.TCPFin|testutil.TCPAck))
	h.to(tcp(worldV4, podV4, 443, 42001, testutil.TCPFin|testutil.TCPAck))
	closing, ok := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, 42001, 443))
	if !ok {
		t.Fatal("entry gone after FIN")
	}
	wantFlags := uint8(bpf.ConntrackFlags(1<<1 | 1<<2))
	if closing.Flags&wantFlags != wantFlags {
		t.Errorf("flags after FIN both ways = %#x, want FIN_LOCAL|FIN_REMOTE", closing.Flags)
	}
	if closing.Expires >= open.Expires {
		t.Errorf("closing entry expires at %d, not before the open one (%d)", closing.Expires, open.Expires)
	}
}

// An ICMP error about a tracked flow passes (related); one about an unknown flow is judged as plain ICMP.
func TestRelatedICMP(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	router4 := netip.MustParseAddr("203.0.113.1")
	router6 := netip.MustParseAddr("2001:db8:ff::1")

	out4 := udp(podV4, worldV4, 43000, 53)
	out6 := tcp(podV6, worldV6, 43001, 443, testutil.TCPSyn)
	if h.from(out4) != retNext || h.from(out6) != retNext {
		t.Fatal("allowed flows did not pass")
	}
	unreach := testutil.Packet{Src: router4, Dst: podV4, Proto: testutil.ProtoICMP, ICMPType: 3, ICMPCode: 3, Quote: out4.L3()}
	tooBig := testutil.Packet{Src: router6, Dst: podV6, Proto: testutil.ProtoICMPv6, ICMPType: 2, Quote: out6.L3()}
	for name, p := range map[string]testutil.Packet{"v4 unreachable": unreach, "v6 packet too big": tooBig} {
		before := h.reasonCount(bpf.ReasonCTRelated)
		if got := h.to(p); got != retNext {
			t.Errorf("%s about a tracked flow: %s, want pass", name, verdictName(got))
		}
		if h.reasonCount(bpf.ReasonCTRelated) != before+1 {
			t.Errorf("%s not counted as related", name)
		}
	}
	// quoting a flow that was never allowed: plain ICMP, denied by the ingress default
	stray := unreach
	stray.Quote = udp(podV4, worldV4, 43002, 53).L3()
	if got := h.to(stray); got != retDrop {
		t.Errorf("error about an unknown flow: %s, want drop", verdictName(got))
	}
	// truncated quote: never related
	short := unreach
	short.Quote = out4.L3()[:10]
	if got := h.to(short); got != retDrop {
		t.Errorf("error with a truncated quote: %s, want drop", verdictName(got))
	}
	// the pod answering an inbound flow with an error (egress direction)
	in := udp(worldV4, podV4, 5353, 9999)
	p := egressOnly443()
	p.DefaultIngress = bpf.ActionAllow
	h.policy(p)
	if h.to(in) != retNext {
		t.Fatal("inbound udp not allowed")
	}
	portUnreach := testutil.Packet{Src: podV4, Dst: worldV4, Proto: testutil.ProtoICMP, ICMPType: 3, ICMPCode: 3, Quote: in.L3()}
	if got := h.from(portUnreach); got != retNext {
		t.Errorf("pod's port unreachable about an inbound flow: %s, want pass", verdictName(got))
	}
}

// A full table never opens anything: an evicted flow's next packet is decided as new in its own direction.
func TestConntrackFull(t *testing.T) {
	h := newHarness(t, bpf.Options{ConntrackEntries: 64})
	h.policy(egressOnly443())
	first := tcp(podV4, worldV4, 44000, 443, testutil.TCPSyn)
	if h.from(first) != retNext {
		t.Fatal("first flow denied")
	}
	for i := 0; i < 2000; i++ {
		h.from(tcp(podV4, worldV4, uint16(44001+i), 443, testutil.TCPSyn))
	}
	if _, ok := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, 44000, 443)); ok {
		t.Fatal("2,000 new flows did not evict the first one from a 64-entry table")
	}
	n := 0
	var k bpf.CTKey
	var v bpf.CTValue
	for it := h.dp.ConntrackMap().Iterate(); it.Next(&k, &v); {
		n++
	}
	if n > 64 {
		t.Errorf("table holds %d entries, more than its 64", n)
	}
	// The evicted flow's reply is a new inbound connection, which policy denies.
	if got := h.to(tcp(worldV4, podV4, 443, 44000, testutil.TCPAck)); got != retDrop {
		t.Errorf("reply of an evicted flow: %s, want drop", verdictName(got))
	}
	// Its next outbound packet is decided as new egress, which policy allows again.
	if got := h.from(tcp(podV4, worldV4, 44000, 443, testutil.TCPAck)); got != retNext {
		t.Errorf("next egress packet of an evicted flow: %s, want pass", verdictName(got))
	}
	if got := h.to(tcp(worldV4, podV4, 443, 44000, testutil.TCPAck)); got != retNext {
		t.Errorf("reply after the flow was picked up again: %s, want pass", verdictName(got))
	}
}

// A policy change reaches established flows: a flow the new policy denies is cut at its next packet, both ways.
func TestPolicyChangeCutsFlow(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := egressOnly443()
	p.Rules[0].Ports = append(p.Rules[0].Ports, policy.PortRange{Protocol: policy.ProtoTCP, First: 8443, Last: 8443})
	h.policy(p)
	cut := tcp(podV4, worldV4, 45000, 8443, testutil.TCPAck)
	kept := tcp(podV4, worldV4, 45001, 443, testutil.TCPAck)
	for _, f := range []testutil.Packet{cut, kept} {
		syn := f
		syn.TCPFlags = testutil.TCPSyn
		if h.from(syn) != retNext {
			t.Fatal("flow not allowed before the change")
		}
	}
	h.policy(egressOnly443()) // 8443 no longer allowed
	h.openEvents()
	if got := h.to(tcp(worldV4, podV4, 8443, 45000, testutil.TCPAck)); got != retDrop {
		t.Errorf("reply of a revoked flow: %s, want drop", verdictName(got))
	}
	ev := h.nextEvent()
	if bpf.Reason(ev.Reason) != bpf.ReasonRevoked || bpf.Verdict(ev.Verdict) != bpf.VerdictDenied {
		t.Errorf("revoked event: reason %s verdict %s", bpf.ReasonName(bpf.Reason(ev.Reason)), bpf.Verdict(ev.Verdict))
	}
	if got := h.from(cut); got != retDrop {
		t.Errorf("revoked flow's next packet: %s, want drop", verdictName(got))
	}
	if got := h.from(kept); got != retNext {
		t.Errorf("flow the new policy still allows: %s, want pass", verdictName(got))
	}
	if got := h.to(tcp(worldV4, podV4, 443, 45001, testutil.TCPAck)); got != retNext {
		t.Errorf("reply of a kept flow: %s, want pass", verdictName(got))
	}
	v, ok := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, 45001, 443))
	cfg, _ := h.dp.Config()
	if !ok || v.Generation != cfg.Generation {
		t.Errorf("kept flow's entry generation = %d (present %v), want %d", v.Generation, ok, cfg.Generation)
	}
}

func TestAuditNamespace(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := egressOnly443()
	p.Audit = true
	h.policy(p)
	h.openEvents()
	if got := h.from(tcp(podV4, worldV4, 46000, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("audit namespace, denied flow: %s, want pass", verdictName(got))
	}
	ev := h.nextEvent()
	if bpf.Verdict(ev.Verdict) != bpf.VerdictAudit || bpf.Reason(ev.Reason) != bpf.ReasonDenyDefault {
		t.Errorf("audit event: verdict %s reason %s, want audit / denied-by-default", bpf.Verdict(ev.Verdict), bpf.ReasonName(bpf.Reason(ev.Reason)))
	}
	if got := h.to(tcp(worldV4, podV4, 80, 46000, testutil.TCPSyn|testutil.TCPAck)); got != retNext {
		t.Errorf("reply of an audited flow: %s, want pass", verdictName(got))
	}
	if got := h.from(tcp(podV4, metaV4, 46001, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("audit namespace, metadata: %s, want pass", verdictName(got))
	}
	// anti-spoofing is not a policy verdict: audit never lets a spoofed packet through
	if got := h.from(tcp(netip.MustParseAddr("10.9.9.9"), worldV4, 46002, 443, testutil.TCPSyn)); got != retDrop {
		t.Errorf("audit namespace, spoofed: %s, want drop", verdictName(got))
	}

	// the endpoint's own audit mode works the same for an enforcing identity
	p.Audit = false
	h.policy(p)
	h.endpoint(podID, bpf.ModeAudit, podV4, podV6)
	if got := h.from(tcp(podV4, worldV4, 46003, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("audit endpoint, denied flow: %s, want pass", verdictName(got))
	}
	h.endpoint(podID, bpf.ModeEnforce, podV4, podV6)
	if got := h.from(tcp(podV4, worldV4, 46004, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("enforce endpoint, denied flow: %s, want drop", verdictName(got))
	}
}

// A policy in Audit mode reports its first matching rule and changes nothing.
func TestAuditPolicy(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := egressOnly443()
	audit := policy.Rule{ID: 40, Direction: bpf.Egress, Action: bpf.ActionDeny, Audit: true, AllPeers: true,
		Ports: ports(policy.ProtoTCP, 443, 443)}
	p.Rules = append([]policy.Rule{audit}, p.Rules...)
	h.policy(p)
	h.openEvents()
	if got := h.from(tcp(podV4, worldV4, 47000, 443, testutil.TCPSyn)); got != retNext {
		t.Fatalf("audit policy changed the verdict: %s, want pass", verdictName(got))
	}
	ev := h.nextEvent()
	if bpf.Verdict(ev.Verdict) != bpf.VerdictAudit || ev.RuleId != 40 || bpf.Reason(ev.Reason) != bpf.ReasonAuditPolicy {
		t.Errorf("report: verdict %s rule %d reason %s, want audit rule 40 audit-policy", bpf.Verdict(ev.Verdict), ev.RuleId, bpf.ReasonName(bpf.Reason(ev.Reason)))
	}
	for id, want := range map[uint32]uint64{40: 1, 31: 1} {
		if c, _ := h.dp.RuleCounter(id); c.Packets != want {
			t.Errorf("rule %d counted %d packets, want %d", id, c.Packets, want)
		}
	}
	// An audit rule after the deciding rule is never reached, so it is not reported.
	p.Rules = append(egressOnly443().Rules, audit)
	h.policy(p)
	if got := h.from(tcp(podV4, worldV4, 47001, 443, testutil.TCPSyn)); got != retNext {
		t.Fatalf("verdict: %s, want pass", verdictName(got))
	}
	if ev, ok := h.tryEvent(100_000_000); ok {
		t.Errorf("unexpected report %+v", ev)
	}
}

// A flood of denied packets fills the ring buffer: the datapath drops on, and counts the lost events.
func TestEventStormIsCounted(t *testing.T) {
	h := newHarness(t, bpf.Options{EventBytes: 4096})
	h.policy(egressOnly443())
	for i := 0; i < 500; i++ {
		if got := h.from(tcp(podV4, worldV4, uint16(30000+i), 80, testutil.TCPSyn)); got != retDrop {
			t.Fatalf("denied packet %d: %s", i, verdictName(got))
		}
	}
	lost, err := h.dp.Stat(bpf.StatEventsLost)
	if err != nil {
		t.Fatal(err)
	}
	if lost == 0 || lost >= 500 {
		t.Errorf("lost events = %d, want some but not all of 500", lost)
	}
	if n := h.reasonCount(bpf.ReasonDenyDefault); n != 500 {
		t.Errorf("deny-default counter = %d, want 500", n)
	}
}

// An inbound ping allowed by a rule is decided again, by its request's type, after a policy change.
func TestPolicyChangeCutsInboundPing(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := egressOnly443()
	p.Rules = append(p.Rules, policy.Rule{ID: 50, Direction: bpf.Ingress, Action: bpf.ActionAllow, AllPeers: true,
		Ports: ports(policy.ProtoICMPv6, 128, 128)})
	h.policy(p)
	if got := h.to(icmp(worldV6, podV6, 128)); got != retNext {
		t.Fatalf("inbound ping allowed by rule: %s", verdictName(got))
	}
	if got := h.from(icmp(podV6, worldV6, 129)); got != retNext {
		t.Fatalf("the pod's echo reply: %s", verdictName(got))
	}
	h.policy(egressOnly443())
	if got := h.from(icmp(podV6, worldV6, 129)); got != retDrop {
		t.Errorf("echo reply after the rule went: %s, want drop", verdictName(got))
	}
	if n := h.reasonCount(bpf.ReasonRevoked); n != 1 {
		t.Errorf("revoked counter = %d, want 1", n)
	}
}

// A pure SYN always opens a new connection: one that arrives in the reply direction of an established flow is
// judged as a new inbound connection, not let through as a reply.
func TestSYNIsNeverAReply(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	if got := h.from(tcp(podV4, worldV4, 46100, 443, testutil.TCPSyn)); got != retNext {
		t.Fatalf("outbound SYN: %s", verdictName(got))
	}
	if got := h.to(tcp(worldV4, podV4, 443, 46100, testutil.TCPSyn)); got != retDrop {
		t.Errorf("inbound SYN on the tuple of an outbound flow: %s, want drop (a new, denied, inbound connection)", verdictName(got))
	}
	if got := h.to(tcp(worldV4, podV4, 443, 46100, testutil.TCPSyn|testutil.TCPAck)); got != retNext {
		t.Errorf("SYN-ACK of the outbound flow: %s, want pass", verdictName(got))
	}
	// a retransmitted SYN is decided by policy again, and still allowed
	before := h.reasonCount(bpf.ReasonAllowRule)
	if got := h.from(tcp(podV4, worldV4, 46100, 443, testutil.TCPSyn)); got != retNext {
		t.Errorf("retransmitted SYN: %s, want pass", verdictName(got))
	}
	if h.reasonCount(bpf.ReasonAllowRule) != before+1 {
		t.Errorf("retransmitted SYN was not decided by policy")
	}
}

// procJiffies reads the kernel's jiffies from /proc/timer_list, a clock independent of the datapath's.
func procJiffies(t *testing.T) (uint64, time.Time) {
	t.Helper()
	b, err := os.ReadFile("/proc/timer_list")
	if err != nil {
		t.Skipf("no /proc/timer_list to check jiffies against: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "jiffies: "); ok {
			j, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("jiffies line %q: %v", l, err)
			}
			return j, time.Now()
		}
	}
	t.Skip("/proc/timer_list has no jiffies line")
	return 0, time.Time{}
}

// Deadlines are in jiffies at the tick rate the loader measured: the rate agrees with the kernel's own count, and
// a SYN's entry expires 60 s of ticks from now.
func TestConntrackDeadlinesInJiffies(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	cfg, err := h.dp.Config()
	if err != nil {
		t.Fatal(err)
	}
	j0, t0 := procJiffies(t)
	time.Sleep(300 * time.Millisecond)
	j1, t1 := procJiffies(t)
	rate := float64(j1-j0) / t1.Sub(t0).Seconds()
	if hz := float64(cfg.Hz); hz < rate*0.85 || hz > rate*1.15 {
		t.Fatalf("config.hz = %d, but the kernel counted %.0f jiffies per second", cfg.Hz, rate)
	}

	before, _ := procJiffies(t)
	h.from(tcp(podV4, worldV4, 42100, 443, testutil.TCPSyn))
	after, _ := procJiffies(t)
	e, ok := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, 42100, 443))
	if !ok {
		t.Fatal("no entry for an allowed SYN")
	}
	lo, hi := before+60*uint64(cfg.Hz), after+60*uint64(cfg.Hz)
	if e.Expires < lo || e.Expires > hi {
		t.Errorf("SYN entry expires at jiffy %d, want 60 s of ticks from now: %d..%d", e.Expires, lo, hi)
	}
}

// A SYN on the port of a flow that still has an entry (closed, or allowed under an older policy) is decided by
// policy and writes its own record over the entry: the rule, direction, flags and sequence numbers of the new
// connection, under the current generation. It is no new entry: the endpoint's count stays, and at its bound the
// SYN still passes.
func TestSYNOnReusedPortRewritesEntry(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.CtMaxPerEndpoint = 1 }); err != nil {
		t.Fatal(err)
	}
	syn := tcp(podV4, worldV4, 42000, 443, testutil.TCPSyn)
	syn.Seq = 1000
	if got := h.from(syn); got != retNext {
		t.Fatalf("first SYN: %s, want pass", verdictName(got))
	}
	key := ctKey(h, testutil.ProtoTCP, podV4, worldV4, 42000, 443)
	var first bpf.CTValue
	if err := h.dp.ConntrackMap().Lookup(&key, &first); err != nil {
		t.Fatal(err)
	}
	old := bpf.CTValue{Expires: first.Expires + 100000, Generation: 0, RuleId: 99, Direction: uint8(bpf.Ingress),
		Flags: 1 | 2 | 4 | 8 | 32, Port: 80, SeqNext: [2]uint32{7, 8}} // seen reply, both FINs, audit, remote seq
	if err := h.dp.ConntrackMap().Put(&key, &old); err != nil {
		t.Fatal(err)
	}
	syn.Seq = 5000
	if got := h.from(syn); got != retNext {
		t.Fatalf("SYN on the reused port at the bound: %s, want pass", verdictName(got))
	}
	var v bpf.CTValue
	if err := h.dp.ConntrackMap().Lookup(&key, &v); err != nil {
		t.Fatal(err)
	}
	cfg, err := h.dp.Config()
	if err != nil {
		t.Fatal(err)
	}
	want := bpf.CTValue{Expires: v.Expires, Generation: cfg.Generation, RuleId: 31, Direction: uint8(bpf.Egress),
		Flags: 16, Port: 443, SeqNext: [2]uint32{5001, 0}} // the pod's next sequence number only
	if v != want {
		t.Errorf("entry after the SYN: %+v, want %+v", v, want)
	}
	if v.Expires < first.Expires || v.Expires >= old.Expires {
		t.Errorf("deadline %d: want the SYN's, from %d and before the old one %d", v.Expires, first.Expires, old.Expires)
	}
	counts, err := h.dp.ConntrackCounts()
	if err != nil {
		t.Fatal(err)
	}
	if counts[h.ifindex].Live != 1 {
		t.Errorf("count after the SYN on a reused port: %d, want 1", counts[h.ifindex].Live)
	}
	if got := h.from(tcp(podV4, worldV4, 42001, 443, testutil.TCPSyn)); got != retDrop {
		t.Errorf("a SYN of another flow past the bound: %s, want drop", verdictName(got))
	}
}
