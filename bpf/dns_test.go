package bpf_test

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

const retRedirect = 7 // TC_ACT_REDIRECT: bpf_redirect_peer's

var resolverV4, resolverV6 = netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:250:96::a")

// query is a pod's DNS query for name (type A) from port 40000 to the resolver's port 53, its UDP checksum
// right.
func query(t *testing.T, src netip.Addr, name string, edit ...func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = 0x4d6f
	for _, e := range edit {
		e(m)
	}
	payload, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return rawQuery(src, payload)
}

func rawQuery(src netip.Addr, payload []byte) []byte {
	dst := resolverV4
	if src.Is6() {
		dst = resolverV6
	}
	frame := testutil.Packet{Src: src, Dst: dst, Proto: testutil.ProtoUDP, SPort: 40000, DPort: 53, Payload: payload}.Bytes()
	setUDPChecksum(frame)
	return frame
}

// udpOffsets are where a frame's IP header, UDP header and the IP addresses (and their length) are.
func udpOffsets(frame []byte) (l3, l4, addrs, alen int) {
	if binary.BigEndian.Uint16(frame[12:]) == testutil.EthTypeIPv4 {
		return 14, 14 + int(frame[14]&0x0f)*4, 14 + 12, 4
	}
	return 14, 14 + 40, 14 + 8, 16
}

// udpSum is the ones' complement sum of the pseudo-header and the UDP datagram, its checksum field included.
func udpSum(frame []byte) uint16 { return l4Sum(frame, testutil.ProtoUDP) }

// l4Sum is the ones' complement sum of the pseudo-header and the transport segment, its checksum included.
func l4Sum(frame []byte, proto uint8) uint16 {
	_, l4, addrs, alen := udpOffsets(frame)
	seg := frame[l4:]
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(frame[addrs : addrs+2*alen])
	sum += uint32(proto) + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func setUDPChecksum(frame []byte) {
	_, l4, _, _ := udpOffsets(frame)
	binary.BigEndian.PutUint16(frame[l4+6:], 0)
	c := ^udpSum(frame)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(frame[l4+6:], c)
}

// runOut runs a program on a frame and returns its verdict and the frame as it left.
func (h *harness) runOut(prog *ebpf.Program, frame []byte) (uint32, []byte) {
	h.t.Helper()
	out := make([]byte, len(frame)+256)
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out, Context: skbContext(h.ifindex)})
	if err != nil {
		h.t.Fatalf("run: %v", err)
	}
	return ret, out[:len(frame)]
}

// dnsHarness is a harness whose pod's namespace has the DNS name set 3.
func dnsHarness(t *testing.T, names map[string]bpf.DNSValue) *harness {
	t.Helper()
	h := newHarness(t, bpf.Options{})
	if err := h.dp.SetDNSSet(podID, 3); err != nil {
		t.Fatal(err)
	}
	for name, v := range names {
		if err := h.dp.PutDNSName(3, name, v); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func deny(form bpf.DNSForm, rule uint32) bpf.DNSValue {
	var v bpf.DNSValue
	v.Rule[form] = rule
	return v
}

// checkNXDOMAIN checks that out is the NXDOMAIN answer to the query in: the frame back the way it came, the same
// question and id, nothing in the answer, a right UDP checksum.
func checkNXDOMAIN(t *testing.T, in, out []byte) {
	t.Helper()
	_, l4, addrs, alen := udpOffsets(in)
	if string(out[0:6]) != string(in[6:12]) || string(out[6:12]) != string(in[0:6]) {
		t.Errorf("MACs %x -> %x, want %x -> %x", out[6:12], out[0:6], in[0:6], in[6:12])
	}
	if string(out[addrs:addrs+alen]) != string(in[addrs+alen:addrs+2*alen]) ||
		string(out[addrs+alen:addrs+2*alen]) != string(in[addrs:addrs+alen]) {
		t.Errorf("addresses not swapped: %x, from %x", out[addrs:addrs+2*alen], in[addrs:addrs+2*alen])
	}
	if string(out[l4:l4+2]) != string(in[l4+2:l4+4]) || string(out[l4+2:l4+4]) != string(in[l4:l4+2]) {
		t.Errorf("ports not swapped: %x, from %x", out[l4:l4+4], in[l4:l4+4])
	}
	if c := binary.BigEndian.Uint16(out[l4+6:]); c != 0 && udpSum(out) != 0xffff {
		t.Errorf("UDP checksum %#04x is wrong (sum %#04x)", c, udpSum(out))
	}
	var q, a dns.Msg
	if err := q.Unpack(in[l4+8:]); err != nil {
		t.Fatal(err)
	}
	if err := a.Unpack(out[l4+8:]); err != nil {
		t.Fatalf("the answer does not parse: %v", err)
	}
	if !a.Response || a.Rcode != dns.RcodeNameError || a.Id != q.Id || len(a.Answer) != 0 || len(a.Ns) != 0 ||
		len(a.Question) != 1 || a.Question[0] != q.Question[0] || !a.RecursionAvailable || a.RecursionDesired != q.RecursionDesired {
		t.Errorf("the answer is not an empty NXDOMAIN for the question:\n%v", &a)
	}
}

// A query for a name its namespace may not resolve is answered NXDOMAIN by the datapath and handed back to the
// pod (IPv4 with and without a UDP checksum, IPv6, an EDNS record echoed), with an event naming the rule; names
// are matched case-insensitively and by the forms of each pattern; other names pass untouched.
func TestDNSDenyAnswersNXDOMAIN(t *testing.T) {
	h := dnsHarness(t, map[string]bpf.DNSValue{
		"evil.example":    deny(bpf.DNSExact, 7),
		"ads.example":     deny(bpf.DNSOne, 8),
		"tracker.example": deny(bpf.DNSAny, 9),
	})
	h.openEvents()
	for _, c := range []struct {
		src    netip.Addr
		name   string
		denied uint32 // the rule, 0 = passes
		edit   func(*dns.Msg)
	}{
		{podV4, "evil.example.", 7, nil},
		{podV4, "EvIl.ExAmPlE.", 7, nil},
		{podV6, "evil.example.", 7, nil},
		{podV4, "evil.example.", 7, func(m *dns.Msg) { m.SetEdns0(1232, true) }},
		{podV4, "www.evil.example.", 0, nil},
		{podV4, "example.", 0, nil},
		{podV4, "ads.example.", 0, nil},
		{podV4, "x.ads.example.", 8, nil},
		{podV6, "X.Ads.Example.", 8, nil},
		{podV4, "y.x.ads.example.", 0, nil},
		{podV4, "tracker.example.", 0, nil},
		{podV4, "a.tracker.example.", 9, nil},
		{podV4, "a.b.c.tracker.example.", 9, nil},
		{podV4, "eviL.example.com.", 0, nil},
		{podV4, "notevil.example.", 0, nil},
	} {
		in := query(t, c.src, c.name, func(m *dns.Msg) {
			if c.edit != nil {
				c.edit(m)
			}
		})
		ret, out := h.runOut(h.dp.FromPod, in)
		if c.denied == 0 {
			if ret != retNext || string(out) != string(in) {
				t.Errorf("%s from %s: %s, the frame changed: %t; want it passed untouched", c.name, c.src, verdictName(ret), string(out) != string(in))
			}
			continue
		}
		if ret != retRedirect {
			t.Errorf("%s from %s: %s, want the answer redirected (7)", c.name, c.src, verdictName(ret))
			continue
		}
		checkNXDOMAIN(t, in, out)
		ev := h.nextEvent()
		if bpf.Reason(ev.Reason) != bpf.ReasonDNSDenied || ev.RuleId != c.denied || bpf.Verdict(ev.Verdict) != bpf.VerdictDenied || ev.Dport != 53 {
			t.Errorf("%s: event %s rule %d verdict %d dport %d, want dns-name-denied rule %d denied to 53", c.name,
				bpf.ReasonName(bpf.Reason(ev.Reason)), ev.RuleId, ev.Verdict, ev.Dport, c.denied)
		}
	}
	// an EDNS record with an extended RCODE and a version: echoed with both zero, so the RCODE stays NXDOMAIN
	// (found by FuzzDNSQuery); at both alignments of the record
	for _, name := range []string{"evil.example.", "x.ads.example."} {
		in := query(t, podV4, name, func(m *dns.Msg) {
			m.SetEdns0(1232, true)
			opt := m.IsEdns0()
			opt.SetExtendedRcode(0x7f0)
			opt.SetVersion(7)
		})
		ret, out := h.runOut(h.dp.FromPod, in)
		if ret != retRedirect {
			t.Errorf("%s with EDNS bits: %s, want answered", name, verdictName(ret))
			continue
		}
		checkNXDOMAIN(t, in, out)
		var a dns.Msg
		_, l4, _, _ := udpOffsets(out)
		if err := a.Unpack(out[l4+8:]); err != nil || a.IsEdns0() == nil || a.IsEdns0().Version() != 0 || !a.IsEdns0().Do() {
			t.Errorf("%s: the answer's EDNS record: %v (version 0 and DO kept wanted)", name, &a)
		}
		h.nextEvent()
	}
	// a query without a UDP checksum (IPv4 allows it) gets an answer without one
	in := query(t, podV4, "evil.example.")
	_, l4, _, _ := udpOffsets(in)
	binary.BigEndian.PutUint16(in[l4+6:], 0)
	if ret, out := h.runOut(h.dp.FromPod, in); ret != retRedirect || binary.BigEndian.Uint16(out[l4+6:]) != 0 {
		t.Errorf("no checksum: %s, checksum %#04x; want redirected without one", verdictName(ret), binary.BigEndian.Uint16(out[l4+6:]))
	} else {
		checkNXDOMAIN(t, in, out)
	}
}

// Overlapping patterns all count, the most specific one names the rule; a name with more labels than the datapath
// reads is still matched by the wildcards of its last labels.
func TestDNSDenyOverlappingAndDeepNames(t *testing.T) {
	h := dnsHarness(t, map[string]bpf.DNSValue{"example": deny(bpf.DNSAny, 20), "evil.example": deny(bpf.DNSExact, 21)})
	h.openEvents()
	deep := strings.Repeat("a.", 40) + "example."
	for name, rule := range map[string]uint32{"evil.example.": 21, "good.example.": 20, deep: 20} {
		ret, out := h.runOut(h.dp.FromPod, query(t, podV4, name))
		if ret != retRedirect {
			t.Errorf("%s: %s, want answered", name, verdictName(ret))
			continue
		}
		var a dns.Msg
		if _, l4, _, _ := udpOffsets(out); a.Unpack(out[l4+8:]) != nil || a.Rcode != dns.RcodeNameError {
			t.Errorf("%s: no NXDOMAIN", name)
		}
		if ev := h.nextEvent(); ev.RuleId != rule {
			t.Errorf("%s: rule %d, want %d", name, ev.RuleId, rule)
		}
	}
	if ret := h.from(testutil.Packet{Src: podV4, Dst: resolverV4, Proto: testutil.ProtoUDP, SPort: 1, DPort: 53,
		Payload: mustPack(t, "example.")}); ret != retNext {
		t.Errorf("example. itself (only **.example denied): %s, want passed", verdictName(ret))
	}
}

func mustPack(t *testing.T, name string) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeAAAA)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Names only an Audit policy denies, and any in a namespace in audit mode, are reported and resolved.
func TestDNSDenyAudit(t *testing.T) {
	var audit bpf.DNSValue
	audit.AuditRule[bpf.DNSExact] = 31
	h := dnsHarness(t, map[string]bpf.DNSValue{"audited.example": audit, "evil.example": deny(bpf.DNSExact, 32)})
	h.openEvents()
	in := query(t, podV4, "audited.example.")
	if ret, out := h.runOut(h.dp.FromPod, in); ret != retNext || string(out) != string(in) {
		t.Errorf("audited name: %s, want passed untouched", verdictName(ret))
	}
	if ev := h.nextEvent(); bpf.Verdict(ev.Verdict) != bpf.VerdictAudit || ev.RuleId != 31 || bpf.Reason(ev.Reason) != bpf.ReasonDNSDenied {
		t.Errorf("audited name: event verdict %d rule %d reason %d, want audit 31 dns-name-denied", ev.Verdict, ev.RuleId, ev.Reason)
	}
	h.endpoint(podID, bpf.ModeAudit, podV4, podV6)
	in = query(t, podV4, "evil.example.")
	if ret, out := h.runOut(h.dp.FromPod, in); ret != retNext || string(out) != string(in) {
		t.Errorf("denied name in an audit-mode namespace: %s, want passed untouched", verdictName(ret))
	}
	if ev := h.nextEvent(); bpf.Verdict(ev.Verdict) != bpf.VerdictAudit || ev.RuleId != 32 {
		t.Errorf("audit mode: event verdict %d rule %d, want audit 32", ev.Verdict, ev.RuleId)
	}
}

// A pod may ask several names on one socket: a query of an established flow meets the DNS stage too.
func TestDNSDenyOnAnEstablishedFlow(t *testing.T) {
	h := dnsHarness(t, map[string]bpf.DNSValue{"evil.example": deny(bpf.DNSExact, 40)})
	if ret := h.run(h.dp.FromPod, query(t, podV4, "good.example.")); ret != retNext {
		t.Fatalf("first query: %s", verdictName(ret))
	}
	before := h.reasonCount(bpf.ReasonCTEstablished)
	if ret := h.run(h.dp.FromPod, query(t, podV4, "good.example.")); ret != retNext || h.reasonCount(bpf.ReasonCTEstablished) != before+1 {
		t.Fatalf("second query: %s, not established", verdictName(ret))
	}
	if ret, _ := h.runOut(h.dp.FromPod, query(t, podV4, "evil.example.")); ret != retRedirect {
		t.Errorf("a denied name on the same flow: %s, want answered", verdictName(ret))
	}
}

// Hostile queries from a namespace with names it may not resolve: whatever the datapath cannot read as the
// resolver would is dropped, never passed; a namespace without names is not read at all.
func TestDNSDenyHostileQueries(t *testing.T) {
	h := dnsHarness(t, map[string]bpf.DNSValue{"evil.example": deny(bpf.DNSExact, 50)})
	good := mustPack(t, "evil.example.")
	header := good[:12]
	with := func(question []byte, edit func(hdr []byte)) []byte {
		hdr := append([]byte(nil), header...)
		if edit != nil {
			edit(hdr)
		}
		return append(hdr, question...)
	}
	question := good[12:]
	long := []byte{}
	for i := 0; i < 5; i++ {
		long = append(long, 63)
		long = append(long, []byte(strings.Repeat("a", 63))...)
	}
	long = append(long, 0, 0, 1, 0, 1)
	for _, c := range []struct {
		name    string
		payload []byte
		want    uint32
	}{
		{"a compression pointer as the name", with([]byte{0xc0, 0x0c, 0, 1, 0, 1}, nil), retDrop},
		{"a pointer after a label", with([]byte{3, 'w', 'w', 'w', 0xc0, 0x0c, 0, 1, 0, 1}, nil), retDrop},
		{"an extended label type (0x40)", with([]byte{0x41, 'x', 0, 0, 1, 0, 1}, nil), retDrop},
		{"two questions", with(append(append([]byte(nil), question...), question...), func(h []byte) { h[5] = 2 }), retDrop},
		{"no question", with(nil, func(h []byte) { h[5] = 0 }), retDrop},
		{"a name without its end", with(question[:len(question)-6], nil), retDrop},
		{"no type and class", with(question[:len(question)-4], nil), retDrop},
		{"a name longer than 255 bytes", with(long, nil), retDrop},
		{"only a header", header, retDrop},
		{"not even a header", header[:6], retDrop},
		{"an answer record in the query", with(question, func(h []byte) { h[7] = 1 }), retDrop},
		{"an authority record in the query", with(question, func(h []byte) { h[9] = 1 }), retDrop},
		{"two additional records", with(question, func(h []byte) { h[11] = 2 }), retDrop},
		{"an additional record that is not OPT (a denied name)", with(append(append([]byte(nil), question...),
			0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 0), func(h []byte) { h[11] = 1 }), retDrop},
		{"an OPT record cut short (a denied name)", with(append(append([]byte(nil), question...), 0, 0, 41, 4),
			func(h []byte) { h[11] = 1 }), retDrop},
		{"an answer (QR) sent by the pod", with(question, func(h []byte) { h[2] |= 0x80 }), retNext},
		{"a NOTIFY (opcode 4)", with(question, func(h []byte) { h[2] |= 4 << 3 }), retNext},
	} {
		before := h.reasonCount(bpf.ReasonDNSUnparsed)
		ret, _ := h.runOut(h.dp.FromPod, rawQuery(podV4, c.payload))
		if ret != c.want {
			t.Errorf("%s: %s, want %s", c.name, verdictName(ret), verdictName(c.want))
		}
		if c.want == retDrop && h.reasonCount(bpf.ReasonDNSUnparsed) != before+1 {
			t.Errorf("%s: not counted as dns-query-unreadable", c.name)
		}
	}
	// a namespace without names: even an unreadable query is the resolver's to refuse
	if err := h.dp.SetDNSSet(podID, 0); err != nil {
		t.Fatal(err)
	}
	if ret := h.run(h.dp.FromPod, rawQuery(podV4, with([]byte{0xc0, 0x0c, 0, 1, 0, 1}, nil))); ret != retNext {
		t.Errorf("a pointer from a namespace without names: %s, want passed", verdictName(ret))
	}
}

// With the DNS stage out of reach (its program gone from the tail-call table), a namespace's queries are dropped,
// never passed unread.
func TestDNSDenyFailsClosed(t *testing.T) {
	h := dnsHarness(t, map[string]bpf.DNSValue{"evil.example": deny(bpf.DNSExact, 60)})
	tails, err := ebpf.LoadPinnedMap(h.root+"/tails", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tails.Close()
	if err := tails.Delete(uint32(0)); err != nil {
		t.Fatal(err)
	}
	if ret := h.run(h.dp.FromPod, query(t, podV4, "good.example.")); ret != retDrop {
		t.Errorf("a query with the DNS stage gone: %s, want dropped", verdictName(ret))
	}
	if ret := h.from(udp(podV4, resolverV4, 40001, 5353)); ret != retNext {
		t.Errorf("other UDP: %s, want passed", verdictName(ret))
	}
}

// NewDNSKey: labels reversed after their lengths, lower-case; names the datapath cannot match refused.
func TestNewDNSKey(t *testing.T) {
	k, err := bpf.NewDNSKey(9, "www.Example.COM.")
	if err != nil {
		t.Fatal(err)
	}
	want := "\x03com\x07example\x03www"
	if k.Set != 9 || string(k.Name[:len(want)]) != want || strings.Trim(string(k.Name[len(want):]), "\x00") != "" {
		t.Errorf("key %d %q, want 9 %q", k.Set, k.Name[:len(want)+2], want)
	}
	for _, bad := range []string{"", ".", "a..b", strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 33) + "com",
		strings.Repeat(strings.Repeat("a", 50)+".", 5) + "com"} {
		if _, err := bpf.NewDNSKey(1, bad); err == nil {
			t.Errorf("NewDNSKey(%q): no error", bad)
		}
	}
}

// tcpQuery is a pod's DNS query over TCP: one segment (PSH, ACK) holding the message after its length, its
// checksum right.
func tcpQuery(t *testing.T, src netip.Addr, msg []byte) []byte {
	t.Helper()
	dst := resolverV4
	if src.Is6() {
		dst = resolverV6
	}
	payload := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
	frame := testutil.Packet{Src: src, Dst: dst, Proto: testutil.ProtoTCP, SPort: 40002, DPort: 53, TCPFlags: 0x18,
		Seq: 1000, Ack: 5000, Payload: append(payload, msg...)}.Bytes()
	_, l4, _, _ := udpOffsets(frame)
	binary.BigEndian.PutUint16(frame[l4+16:], 0)
	binary.BigEndian.PutUint16(frame[l4+16:], ^l4Sum(frame, testutil.ProtoTCP))
	return frame
}

// Over TCP a denied name resets the connection: the pod gets the resolver's RST (the sequence number it expects,
// the query acknowledged), the resolver never gets the query; other names pass; a segment that is not one whole
// message is dropped.
func TestDNSDenyOverTCP(t *testing.T) {
	h := dnsHarness(t, map[string]bpf.DNSValue{"evil.example": deny(bpf.DNSExact, 90)})
	for _, src := range []netip.Addr{podV4, podV6} {
		msg := mustPack(t, "Evil.Example.")
		in := tcpQuery(t, src, msg)
		ret, out := h.runOut(h.dp.FromPod, in)
		if ret != retRedirect {
			t.Errorf("%s: denied name over TCP: %s, want the reset redirected", src, verdictName(ret))
			continue
		}
		_, l4, addrs, alen := udpOffsets(in)
		if string(out[addrs:addrs+alen]) != string(in[addrs+alen:addrs+2*alen]) || string(out[l4:l4+2]) != string(in[l4+2:l4+4]) ||
			string(out[0:6]) != string(in[6:12]) {
			t.Errorf("%s: the reset is not turned around", src)
		}
		if flags, seq, ack := out[l4+13], binary.BigEndian.Uint32(out[l4+4:]), binary.BigEndian.Uint32(out[l4+8:]); flags != 0x14 ||
			seq != 5000 || ack != 1000+uint32(2+len(msg)) {
			t.Errorf("%s: flags %#x seq %d ack %d, want RST|ACK seq 5000 ack %d", src, flags, seq, ack, 1000+2+len(msg))
		}
		if l4Sum(out, testutil.ProtoTCP) != 0xffff {
			t.Errorf("%s: the reset's TCP checksum is wrong", src)
		}
	}
	good := tcpQuery(t, podV4, mustPack(t, "good.example."))
	if ret, out := h.runOut(h.dp.FromPod, good); ret != retNext || string(out) != string(good) {
		t.Errorf("another name over TCP: %s, want passed untouched", verdictName(ret))
	}
	two := append(mustPack(t, "good.example."), 0, 0)
	twoMsgs := append(append(binary.BigEndian.AppendUint16(nil, uint16(len(mustPack(t, "good.example.")))), mustPack(t, "good.example.")...),
		append(binary.BigEndian.AppendUint16(nil, uint16(len(mustPack(t, "evil.example.")))), mustPack(t, "evil.example.")...)...)
	for name, payload := range map[string][]byte{
		"two messages in one segment": twoMsgs,
		"a message cut short":         binary.BigEndian.AppendUint16(nil, uint16(len(two)+10)),
	} {
		frame := testutil.Packet{Src: podV4, Dst: resolverV4, Proto: testutil.ProtoTCP, SPort: 40003, DPort: 53, TCPFlags: 0x18,
			Seq: 1, Ack: 1, Payload: payload}.Bytes()
		if ret := h.run(h.dp.FromPod, frame); ret != retDrop {
			t.Errorf("%s: %s, want dropped", name, verdictName(ret))
		}
	}
}
