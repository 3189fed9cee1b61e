package bpf_test

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/policy/policytest"
	"github.com/moatfw/moat/internal/testutil"
)

var diffSeedFlag = flag.Uint64("bpf.seed", 0, "seed of an extra run of TestDatapathDifferential (0: none; make fuzz draws one)")

// The endpoint of the differential tests, in the pod ranges of the other tests. Policy judges the remote end
// only, so rules may cover these addresses; the generator is told to avoid them as remotes.
var (
	diffV4 = netip.MustParseAddr("10.250.250.10")
	diffV6 = netip.MustParseAddr("fd00:250::10")
)

// TestDatapathDifferential runs random packets through the loaded datapath (BPF_PROG_TEST_RUN) under random
// policies and ipcaches, and checks each verdict, and each flow event, against the reference evaluator.
func TestDatapathDifferential(t *testing.T) {
	seeds := []uint64{1, 2}
	if *diffSeedFlag != 0 {
		seeds = append(seeds, *diffSeedFlag)
	}

	d := newDiffer(t)
	start := time.Now()
	total := 0
	for _, seed := range seeds {
		n, ok := d.differential(seed)
		total += n
		if !ok {
			t.Fatalf("seed %d disagrees (rerun with -bpf.seed=%d)", seed, seed)
		}
	}
	t.Logf("%d packets compared through the datapath in %v", total, time.Since(start).Round(time.Millisecond))
	if total < 40_000*len(seeds) {
		t.Errorf("only %d packets compared over %d seeds", total, len(seeds))
	}
	if lost, err := d.dp.Stat(bpf.StatEventsLost); err != nil || lost != 0 {
		t.Errorf("%d events lost (%v): the comparison of events is not whole", lost, err)
	}
	d.requireNoConntrack()
}

// differential runs one seed: 40 policies, the first of 1,000 rules, the others of 0 to 400, each with its
// own ipcache, cluster defaults and packets, and now and then the same identity without any policy (before
// its policy is swapped in, and after the previous policy of the identity was deleted). It returns how many
// packets it compared and whether all of them agreed.
func (d *differ) differential(seed uint64) (int, bool) {
	rng := policytest.NewRand(seed)
	compared := 0
	for i := range 40 {
		rules := policytest.RuleCount(rng, i)
		g := policytest.NewGenerator(rng)
		g.Avoid(diffV4, diffV6)
		p := g.Policy(rules)
		ipc := g.IPCache()
		defaults := g.Defaults()
		n := 600 + 8*rules
		if i%4 == 1 {
			// an identity without a policy map: the cluster defaults of the config map apply
			if !d.agree(seed, p.Identity, nil, defaults, ipc, g, n/4) {
				return compared, false
			}
			compared += n / 4
		}
		if !d.agree(seed, p.Identity, p, defaults, ipc, g, n) {
			return compared, false
		}
		compared += n
		d.setPolicy(p.Identity, nil)
	}
	return compared, true
}

// agree installs p (nil: none) for an endpoint of identity, with the cluster defaults and ipcache, and
// compares n random packets that a frame can carry; on the first disagreement it reports a shrunk policy.
func (d *differ) agree(seed uint64, identity uint32, p *policy.IdentityPolicy, defaults policy.Defaults,
	ipc *policy.IPCache, g *policytest.Generator, n int) bool {
	d.t.Helper()
	d.install(identity, p, defaults, ipc)
	tg := policytest.NewTargets(p, ipc)
	for compared := 0; compared < n; {
		pkt, ok := carried(g.Packet(tg))
		if !ok || dnsOfFQDNIdentity(p, pkt) {
			continue
		}
		compared++
		want := policy.Evaluate(p, defaults, ipc, pkt)
		if mismatch := d.compare(pkt, want); mismatch != "" {
			d.report(fmt.Sprintf("seed %d", seed), p, defaults, ipc, pkt, mismatch)
			return false
		}
	}
	return true
}

// FuzzDatapath decodes the input into cluster defaults, a small policy (or an identity without any), a small
// ipcache and up to 8 packets aimed at their edges, and checks the datapath's verdicts and events against
// Evaluate. One datapath serves every input of a process (loading one takes as long as hundreds of inputs),
// and each input starts from an empty ipcache and conntrack.
func FuzzDatapath(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x00, 0x1f, 0x00, 0x01, 0x01, 0x01, 0x00, 0x10, 0x08, 0x10, 0x00, 0x01, 0x05, 0x00, 0x07, 0x01, 0x00, 0x02, 0x01, 0x00})
	f.Add([]byte{0x06, 0x23, 0x3a, 0x12, 0x07, 0x09, 0x00, 0x00, 0x10, 0x04, 0x00, 0x01, 0x04, 0x1e, 0x0d, 0x33, 0x00, 0x05, 0x03, 0x04, 0x00, 0x01})
	f.Add([]byte{0x01, 0x0e, 0x00, 0x07, 0x02, 0x03, 0x00, 0x01, 0x07, 0x81, 0x80, 0x09})
	rng := rand.New(rand.NewPCG(13, 17))
	for range 8 {
		b := make([]byte, 24+rng.IntN(104))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		f.Add(b)
	}
	d := newDiffer(f)
	d.inPlace = true
	f.Fuzz(func(t *testing.T, data []byte) {
		d.t = t // the datapath outlives the input; failures belong to it
		d.reset()
		r := policytest.ByteReader(data)
		flags := r.Next()
		defaults := policy.Defaults{DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow}
		if flags&2 != 0 {
			defaults.DefaultEgress = bpf.ActionDeny
		}
		if flags&4 != 0 {
			defaults.DefaultIngress = bpf.ActionDeny
		}
		p := policytest.DecodePolicy(&r)
		if err := p.Validate(); err != nil {
			t.Fatalf("the decoder made an invalid policy: %v\n%s", err, policytest.FormatPolicy(p))
		}
		identity := p.Identity
		ipc := policytest.DecodeIPCache(&r)
		edges := policytest.NewEdges(p, ipc)
		if flags&1 != 0 {
			identity, p = p.Identity+1, nil // never given a policy
		}
		d.install(identity, p, defaults, ipc)
		for i := range 1 + int(r.Next()%8) {
			if i > 0 && len(r) == 0 {
				break // the input is used up: the rest would repeat one packet
			}
			b := r.Next()
			proto := edges.Protocols[int(b>>1)%len(edges.Protocols)]
			ports := edges.Ports[proto]
			pkt := policy.Packet{Direction: bpf.Direction(b & 1), Protocol: proto, Port: ports[int(r.Next())%len(ports)],
				Remote: edges.Remotes[(int(r.Next())<<8|int(r.Next()))%len(edges.Remotes)]}
			pkt, ok := carried(pkt)
			if !ok || pkt.Remote == diffV4 || pkt.Remote == diffV6 {
				continue
			}
			want := policy.Evaluate(p, defaults, ipc, pkt)
			if mismatch := d.compare(pkt, want); mismatch != "" {
				d.report("fuzz input", p, defaults, ipc, pkt, mismatch)
				t.FailNow()
			}
		}
	})
}

// differ is a harness whose ipcache, policies, conntrack and ring buffer belong to the differential tests:
// one endpoint (on the harness's device) whose identity, policy and cluster defaults each case sets, and an
// ipcache that holds exactly the case's (the harness's own entries would classify remotes that the
// case's IPCache calls the world).
type differ struct {
	*harness
	ipcache  *ebpf.Map // the pinned ipcache, to empty it
	outer    *ebpf.Map // the pinned policy map, to find an identity's trie
	identity uint32    // the endpoint's
	sport    uint16    // the next remote or ephemeral port
	// policies holds the identities that may have a policy, and when inPlace an open handle of its trie.
	policies map[uint32]*ebpf.Map
	// inPlace rewrites an identity's trie in place once it has one rather than swap a new trie in: a swap
	// waits for an RCU grace period, many times as long as the rest of a fuzz input takes. The datapath
	// decides the same either way; TestDatapathDifferential swaps, as the enforcer does.
	inPlace bool
}

func newDiffer(t testing.TB) *differ {
	t.Helper()
	h := newHarness(t, bpf.Options{})
	d := &differ{harness: h, sport: 20000, policies: map[uint32]*ebpf.Map{}}
	for name, m := range map[string]**ebpf.Map{"ipcache": &d.ipcache, "policy": &d.outer} {
		var err error
		if *m, err = ebpf.LoadPinnedMap(filepath.Join(h.dp.Root, name), nil); err != nil {
			t.Fatalf("open the pinned %s map: %v", name, err)
		}
	}
	t.Cleanup(func() {
		for _, m := range d.policies {
			if m != nil {
				m.Close()
			}
		}
		d.ipcache.Close()
		d.outer.Close()
	})
	h.openEvents()
	if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.Flags |= uint32(bpf.ConfigAllowEvents) }); err != nil {
		t.Fatal(err)
	}
	d.reset()
	return d
}

// reset empties conntrack and drains the ring buffer: what a failed case may leave behind.
func (d *differ) reset() {
	d.t.Helper()
	clearMap[bpf.CTKey, bpf.CTValue](d.t, d.dp.ConntrackMap())
	for d.events.Pending() > 0 {
		if _, ok := d.tryEvent(0); !ok {
			break
		}
	}
}

// clearMap deletes every entry of m, whose keys are K and values V.
func clearMap[K, V any](t testing.TB, m *ebpf.Map) {
	t.Helper()
	var keys []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		t.Fatalf("list %s: %v", m, err)
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("empty %s: %v", m, err)
		}
	}
}

// install makes the endpoint's identity identity, with policy p (nil: none, so the cluster defaults apply),
// the cluster defaults in the config map, and ipc as the whole ipcache.
func (d *differ) install(identity uint32, p *policy.IdentityPolicy, defaults policy.Defaults, ipc *policy.IPCache) {
	d.t.Helper()
	d.identity = identity
	d.endpoint(identity, bpf.ModeEnforce, diffV4, diffV6)
	err := d.dp.UpdateConfig(func(c *bpf.Config) {
		c.DefaultVerdict[bpf.Egress] = uint8(defaults.DefaultEgress)
		c.DefaultVerdict[bpf.Ingress] = uint8(defaults.DefaultIngress)
	})
	if err != nil {
		d.t.Fatal(err)
	}
	d.setPolicy(identity, p)
	clearMap[bpf.IPCacheKey, bpf.IPCacheValue](d.t, d.ipcache)
	for _, e := range ipc.Entries() {
		if err := d.dp.SetIPCache(e.Prefix, e.Class, e.Identity); err != nil {
			d.t.Fatal(err)
		}
	}
}

// setPolicy makes p identity's policy, or deletes identity's policy when p is nil, and bumps the generation.
func (d *differ) setPolicy(identity uint32, p *policy.IdentityPolicy) {
	d.t.Helper()
	trie, had := d.policies[identity]
	switch {
	case p == nil && !had:
		return
	case p == nil:
		if err := d.dp.DeletePolicy(identity); err != nil {
			d.t.Fatal(err)
		}
		if trie != nil {
			trie.Close()
		}
		delete(d.policies, identity)
	case trie != nil:
		entries, err := policy.Compile(p)
		if err != nil {
			d.t.Fatalf("compile: %v", err)
		}
		clearMap[bpf.PolicyKey, bpf.PolicyValue](d.t, trie)
		for _, e := range entries {
			if err := trie.Put(&e.Key, &e.Value); err != nil {
				d.t.Fatalf("rewrite the policy of identity %d: %v", identity, err)
			}
		}
	default:
		d.policies[identity] = nil // from here on it may have one
		d.policy(p)                // swaps the trie in and bumps the generation
		if d.inPlace {
			d.policies[identity] = d.openTrie(identity)
		}
		return
	}
	if _, err := d.dp.BumpGeneration(); err != nil {
		d.t.Fatal(err)
	}
}

// openTrie opens the policy trie of identity.
func (d *differ) openTrie(identity uint32) *ebpf.Map {
	d.t.Helper()
	var id uint32
	if err := d.outer.Lookup(identity, &id); err != nil {
		d.t.Fatalf("look up the policy of identity %d: %v", identity, err)
	}
	trie, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		d.t.Fatalf("open the policy trie of identity %d: %v", identity, err)
	}
	return trie
}

// carried is pkt as a frame carries it to the datapath, or false when no frame can: for TCP, UDP and SCTP
// the port is the destination port (the remote's for egress, the pod's for ingress); for ICMP and ICMPv6
// the type, one byte; other protocols have no port, so policy judges them as port 0; and IPv6 has no
// protocol numbers that are extension headers, since the datapath walks those.
func carried(pkt policy.Packet) (policy.Packet, bool) {
	switch pkt.Protocol {
	case policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP:
	case policy.ProtoICMP, policy.ProtoICMPv6:
		if pkt.Port > 255 {
			return pkt, false
		}
	default:
		pkt.Port = 0
		if pkt.Remote.Is6() {
			switch pkt.Protocol {
			case testutil.ExtHopByHop, testutil.ExtRouting, testutil.ExtFragment, testutil.ExtDestOpts, 51 /* AH */, 135 /* MH */ :
				return pkt, false
			}
		}
	}
	return pkt, true
}

// dnsOfFQDNIdentity: a flow to a DNS port of an identity with fqdn peers, which the datapath refuses unless its
// destination is a trusted resolver (dns-untrusted): not policy, so Evaluate does not decide it.
func dnsOfFQDNIdentity(p *policy.IdentityPolicy, pkt policy.Packet) bool {
	return p != nil && pkt.Direction == bpf.Egress && len(p.FQDNPatterns()) > 0 &&
		(pkt.Protocol == policy.ProtoTCP || pkt.Protocol == policy.ProtoUDP) && (pkt.Port == 53 || pkt.Port == 853)
}

// outcome is what the datapath did with one packet.
type outcome struct {
	ret    uint32      // retNext or retDrop
	events []bpf.Event // the events it produced, in order
	ct     bool        // it left a conntrack entry for the flow (deleted since)
}

// frame is the frame that carries pkt (see carried) between the endpoint and pkt.Remote, with sport as the
// other end's port, and the conntrack key of its flow. TCP packets are RSTs, which never make an entry.
func (d *differ) frame(pkt policy.Packet, sport uint16) (testutil.Packet, bpf.CTKey) {
	local := diffV4
	if !pkt.Remote.Is4() {
		local = diffV6
	}
	fr := testutil.Packet{Src: local, Dst: pkt.Remote, Proto: pkt.Protocol}
	if pkt.Direction == bpf.Ingress {
		fr.Src, fr.Dst = pkt.Remote, local
	}
	var lport, rport uint16
	switch pkt.Protocol {
	case policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP:
		fr.SPort, fr.DPort = sport, pkt.Port
		if pkt.Protocol == policy.ProtoTCP {
			fr.TCPFlags = testutil.TCPRst
		}
		if pkt.Protocol == policy.ProtoUDP {
			fr.Payload = []byte("moat")
		}
		lport, rport = sport, pkt.Port // egress: the pod's port is the source
		if pkt.Direction == bpf.Ingress {
			lport, rport = pkt.Port, sport
		}
	case policy.ProtoICMP, policy.ProtoICMPv6:
		fr.ICMPType, fr.ICMPID = uint8(pkt.Port), sport // errors quote nothing: never related to a flow
		lport = sport                                   // echo: the identifier, and no remote port
	default:
		fr.Payload = []byte("moat-l4!") // no ports; an IPv6 payload cannot be empty
	}
	return fr, bpf.NewCTKey(d.ifindex, pkt.Protocol, local, lport, pkt.Remote, rport)
}

// makesConntrack reports whether a packet that passed leaves a conntrack entry: every new flow but TCP RSTs
// and the ICMP that is not an echo.
func makesConntrack(pkt policy.Packet) bool {
	switch pkt.Protocol {
	case policy.ProtoTCP:
		return false
	case policy.ProtoICMP, policy.ProtoICMPv6:
		if pkt.Remote.Is4() {
			return pkt.Port == 0 || pkt.Port == 8
		}
		return pkt.Port == 128 || pkt.Port == 129
	}
	return true
}

// send runs pkt through the program of its direction and collects what the datapath did: its return code,
// the events it produced (without their time and ports, which are not policy's), and whether it made a
// conntrack entry, which send deletes so that every packet is the first of its flow.
func (d *differ) send(pkt policy.Packet) outcome {
	d.t.Helper()
	d.sport++
	if d.sport == 0 {
		d.sport = 20000
	}
	fr, key := d.frame(pkt, d.sport)
	// what the identity learned of the remote from answers is the packet's: exactly its slots
	if err := d.dp.ForgetFQDN(d.identity, pkt.Remote); err != nil {
		d.t.Fatal(err)
	}
	if pkt.FQDN != 0 {
		if err := d.dp.LearnFQDN(d.identity, pkt.Remote, pkt.FQDN, time.Hour); err != nil {
			d.t.Fatal(err)
		}
	}
	prog := d.dp.FromPod
	if pkt.Direction == bpf.Ingress {
		prog = d.dp.ToPod
	}
	var o outcome
	o.ret = d.run(prog, fr.Bytes())
	for d.events.Pending() > 0 { // the program has written its events when the run returns
		ev, ok := d.tryEvent(time.Second)
		if !ok {
			break
		}
		ev.TimeNs, ev.Sport, ev.Dport = 0, 0, 0
		o.events = append(o.events, ev)
	}
	switch err := d.dp.ConntrackMap().Delete(&key); {
	case err == nil:
		o.ct = true
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		d.t.Fatalf("delete the conntrack entry of %s: %v", policytest.FormatPacket(pkt), err)
	}
	return o
}

// expect is what the datapath should do with pkt, the first packet of its flow, when Evaluate decides want:
// pass unless denied; an event for an Audit policy's rule first, if one matched before the deciding rule;
// then the decision's own event (allow events are on); and a conntrack entry when it passed.
func (d *differ) expect(pkt policy.Packet, want policy.Result) outcome {
	fr, _ := d.frame(pkt, 0)
	base := bpf.Event{Ifindex: d.ifindex, Identity: d.identity, RemoteIdentity: want.RemoteIdentity,
		Family: bpf.Family(fr.Src), Protocol: pkt.Protocol, Direction: uint8(pkt.Direction),
		RemoteClass: uint8(want.RemoteClass), Saddr: bpf.Addr16(fr.Src), Daddr: bpf.Addr16(fr.Dst)}
	o := outcome{ret: retNext}
	if want.Verdict == bpf.VerdictDenied {
		o.ret = retDrop
	}
	if want.AuditRuleID != 0 {
		ev := base
		ev.Verdict, ev.Reason, ev.RuleId = uint8(bpf.VerdictAudit), uint8(bpf.ReasonAuditPolicy), want.AuditRuleID
		o.events = append(o.events, ev)
	}
	ev := base
	ev.Verdict, ev.Reason, ev.RuleId = uint8(want.Verdict), uint8(want.Reason), want.RuleID
	o.events = append(o.events, ev)
	o.ct = o.ret == retNext && makesConntrack(pkt)
	return o
}

// compare runs pkt and describes how the datapath's outcome differs from Evaluate's want; "" when it does
// not. Every event must carry the reason Evaluate gives, and so decide()'s, never conntrack's: each packet
// is decided as the first of its flow.
func (d *differ) compare(pkt policy.Packet, want policy.Result) string {
	d.t.Helper()
	got, exp := d.send(pkt), d.expect(pkt, want)
	var diffs []string
	for _, ev := range got.events {
		switch r := bpf.Reason(ev.Reason); r {
		case bpf.ReasonCTEstablished, bpf.ReasonCTReply, bpf.ReasonCTRelated, bpf.ReasonRevoked:
			diffs = append(diffs, fmt.Sprintf("conntrack decided (%s), not policy", bpf.ReasonName(r)))
		}
	}
	if got.ret != exp.ret {
		diffs = append(diffs, fmt.Sprintf("returned %s, want %s", verdictName(got.ret), verdictName(exp.ret)))
	}
	if got.ct != exp.ct {
		diffs = append(diffs, fmt.Sprintf("left a conntrack entry: %v, want %v", got.ct, exp.ct))
	}
	if len(got.events) != len(exp.events) {
		diffs = append(diffs, fmt.Sprintf("%d events, want %d", len(got.events), len(exp.events)))
	}
	for i := range min(len(got.events), len(exp.events)) {
		if got.events[i] != exp.events[i] {
			diffs = append(diffs, fmt.Sprintf("event %d differs", i+1))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n  datapath: %s%s", strings.Join(diffs, "; "), verdictName(got.ret), ctNote(got.ct))
	for _, ev := range got.events {
		fmt.Fprintf(&b, "\n    event %s", formatEvent(ev))
	}
	fmt.Fprintf(&b, "\n  expected: %s%s", verdictName(exp.ret), ctNote(exp.ct))
	for _, ev := range exp.events {
		fmt.Fprintf(&b, "\n    event %s", formatEvent(ev))
	}
	return b.String()
}

func ctNote(ct bool) string {
	if ct {
		return ", conntrack entry"
	}
	return ""
}

func formatEvent(ev bpf.Event) string {
	return fmt.Sprintf("%s %s rule %d, remote %s/%d, identity %d, %s proto %d %s -> %s, ifindex %d",
		bpf.Verdict(ev.Verdict), bpf.ReasonName(bpf.Reason(ev.Reason)), ev.RuleId, bpf.Class(ev.RemoteClass),
		ev.RemoteIdentity, ev.Identity, bpf.Direction(ev.Direction), ev.Protocol, bpf.AddrFrom16(ev.Family, ev.Saddr),
		bpf.AddrFrom16(ev.Family, ev.Daddr), ev.Ifindex)
}

// shrinkBudget bounds the time report spends shrinking a policy (each try compiles and swaps in a policy).
const shrinkBudget = time.Minute

// report fails the test with everything needed to replay a disagreement: the packet, both decisions, the
// cluster defaults, the policy shrunk to the rules that still make the datapath disagree about the packet
// when installed afresh, and the ipcache entries of the remote.
func (d *differ) report(what string, p *policy.IdentityPolicy, defaults policy.Defaults, ipc *policy.IPCache,
	pkt policy.Packet, mismatch string) {
	d.t.Helper()
	identity := d.identity
	afresh := func(q *policy.IdentityPolicy) string { // the mismatch of pkt alone, with q just installed
		d.reset()
		d.install(identity, q, defaults, ipc)
		return d.compare(pkt, policy.Evaluate(q, defaults, ipc, pkt))
	}
	small, note := p, ""
	switch deadline := time.Now().Add(shrinkBudget); {
	case p == nil:
	case afresh(p) == "":
		note = "; it agrees when installed afresh: the packets before it matter"
	default:
		small = policytest.Shrink(p, func(q *policy.IdentityPolicy) bool {
			return time.Now().Before(deadline) && afresh(q) != ""
		})
		if time.Now().After(deadline) {
			note = fmt.Sprintf("; shrinking stopped after %v", shrinkBudget)
		}
		if m := afresh(small); m != "" {
			mismatch = m // the datapath's side as the shrunk policy has it
		}
	}
	rules := 0
	if p != nil {
		rules = len(p.Rules)
	}
	d.t.Errorf("%s: the datapath disagrees with Evaluate\npacket %s\n%s\nEvaluate %s\n"+
		"cluster defaults egress %s ingress %s\npolicy (shrunk from %d rules%s) %sipcache entries of the remote:\n%s",
		what, policytest.FormatPacket(pkt), mismatch, policytest.FormatResult(policy.Evaluate(small, defaults, ipc, pkt)),
		policytest.ActionName(defaults.DefaultEgress), policytest.ActionName(defaults.DefaultIngress), rules, note,
		policytest.FormatPolicy(small), policytest.FormatIPCache(ipc, pkt.Remote))
}

// requireNoConntrack checks that the packets left no conntrack entry behind.
func (d *differ) requireNoConntrack() {
	d.t.Helper()
	var k bpf.CTKey
	var v bpf.CTValue
	n := 0
	it := d.dp.ConntrackMap().Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		d.t.Fatal(err)
	}
	if n != 0 {
		d.t.Errorf("%d conntrack entries left behind", n)
	}
}
