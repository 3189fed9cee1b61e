package bpf_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// fragments splits a UDP datagram into a first fragment (with the UDP header) and a second one (without).
func fragments(src, dst netip.Addr, sport, dport uint16, id uint32) (first, second testutil.Packet) {
	payload := make([]byte, 64)
	first = testutil.Packet{Src: src, Dst: dst, Proto: testutil.ProtoUDP, SPort: sport, DPort: dport,
		Payload: payload[:24], Fragment: &testutil.Fragment{ID: id, Offset: 0, More: true}}
	second = testutil.Packet{Src: src, Dst: dst, Proto: testutil.ProtoUDP, NoL4: true, Payload: payload[24:],
		Fragment: &testutil.Fragment{ID: id, Offset: 32, More: false}}
	return first, second
}

func TestFragments(t *testing.T) {
	for _, fam := range []struct {
		name       string
		pod, world netip.Addr
	}{{"v4", podV4, worldV4}, {"v6", podV6, worldV6}} {
		t.Run(fam.name, func(t *testing.T) {
			h := newHarness(t, bpf.Options{})
			h.policy(egressOnly443()) // UDP 53 allowed, the rest of the world denied both ways

			// in order: the second fragment follows the first's verdict
			first, second := fragments(fam.pod, fam.world, 48000, 53, 1001)
			if got := h.from(first); got != retNext {
				t.Errorf("allowed first fragment: %s, want pass", verdictName(got))
			}
			if got := h.from(second); got != retNext {
				t.Errorf("second fragment of an allowed datagram: %s, want pass", verdictName(got))
			}
			if n := h.reasonCount(bpf.ReasonFragment); n != 1 {
				t.Errorf("fragment counter = %d, want 1", n)
			}

			// a denied first fragment takes its followers down with it, never judged as port 0
			first, second = fragments(fam.pod, fam.world, 48001, 9999, 1002)
			if got := h.from(first); got != retDrop {
				t.Errorf("denied first fragment: %s, want drop", verdictName(got))
			}
			if got := h.from(second); got != retDrop {
				t.Errorf("second fragment of a denied datagram: %s, want drop", verdictName(got))
			}

			// out of order: a non-first fragment with no first fragment seen is dropped ...
			first, second = fragments(fam.pod, fam.world, 48002, 53, 1003)
			if got := h.from(second); got != retDrop {
				t.Errorf("non-first fragment before its first: %s, want drop", verdictName(got))
			}
			if n := h.reasonCount(bpf.ReasonFragNoFirst); n != 1 {
				t.Errorf("fragment-without-first counter = %d, want 1", n)
			}
			// ... and once the first arrives, the retransmitted rest follows it
			if got := h.from(first); got != retNext {
				t.Errorf("late first fragment: %s, want pass", verdictName(got))
			}
			if got := h.from(second); got != retNext {
				t.Errorf("non-first fragment after its first: %s, want pass", verdictName(got))
			}

			// inbound: the reply's fragments follow the reply's verdict (conntrack)
			rfirst, rsecond := fragments(fam.world, fam.pod, 53, 48000, 2001)
			if got := h.to(rfirst); got != retNext {
				t.Errorf("first fragment of a reply: %s, want pass", verdictName(got))
			}
			if got := h.to(rsecond); got != retNext {
				t.Errorf("second fragment of a reply: %s, want pass", verdictName(got))
			}
			// a fragment id seen only in the other direction opens nothing
			_, osecond := fragments(fam.world, fam.pod, 53, 48000, 1001)
			if got := h.to(osecond); got != retDrop {
				t.Errorf("fragment matching an id of the other direction: %s, want drop", verdictName(got))
			}
		})
	}
}

func TestIPv6ExtensionHeaders(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	withExt := func(n int, dport uint16, sport uint16) testutil.Packet {
		p := tcp(podV6, worldV6, sport, dport, testutil.TCPSyn)
		for i := 0; i < n; i++ {
			if i%2 == 0 {
				p.ExtHeaders = append(p.ExtHeaders, testutil.ExtDestOpts)
			} else {
				p.ExtHeaders = append(p.ExtHeaders, testutil.ExtRouting)
			}
		}
		if n > 0 {
			p.ExtHeaders[0] = testutil.ExtHopByHop
		}
		return p
	}
	if got := h.from(withExt(2, 443, 49000)); got != retNext {
		t.Errorf("hop-by-hop + routing, allowed port: %s, want pass", verdictName(got))
	}
	if got := h.from(withExt(2, 80, 49001)); got != retDrop {
		t.Errorf("hop-by-hop + routing, denied port: %s, want drop (the port behind the headers was read)", verdictName(got))
	}
	if got := h.from(withExt(8, 443, 49002)); got != retNext {
		t.Errorf("8 extension headers (the limit), allowed port: %s, want pass", verdictName(got))
	}
	if got := h.from(withExt(9, 443, 49003)); got != retDrop {
		t.Errorf("9 extension headers: %s, want drop", verdictName(got))
	}
	if n := h.reasonCount(bpf.ReasonExtHdrLimit); n != 1 {
		t.Errorf("too-many-extension-headers counter = %d, want 1", n)
	}
	// a fragment header among other headers: the first fragment is judged by its port
	p := withExt(1, 80, 49004)
	p.Fragment = &testutil.Fragment{ID: 7, More: true}
	if got := h.from(p); got != retDrop {
		t.Errorf("first fragment behind a destination header, denied port: %s, want drop", verdictName(got))
	}
}

// IPv4 options shift the L4 header; the port behind them is what policy sees.
func TestIPv4Options(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	p := tcp(podV4, worldV4, 49100, 80, testutil.TCPSyn)
	p.IPv4Options = []byte{1, 1, 1, 0} // NOP NOP NOP EOL
	// 443 in the bytes where the port would be without options must not matter
	binary.BigEndian.PutUint16(p.IPv4Options[2:], 443)
	if got := h.from(p); got != retDrop {
		t.Errorf("denied port behind IP options: %s, want drop", verdictName(got))
	}
	p.DPort = 443
	p.SPort = 49101
	if got := h.from(p); got != retNext {
		t.Errorf("allowed port behind IP options: %s, want pass", verdictName(got))
	}
}

// Every packet cut short at any length from 14 bytes on is dropped, and the whole one passes.
func TestTruncatedPackets(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := egressOnly443()
	p.DefaultEgress = bpf.ActionAllow
	h.policy(p)
	v6ext := tcp(podV6, worldV6, 50001, 443, testutil.TCPSyn)
	v6ext.ExtHeaders = []uint8{testutil.ExtHopByHop, testutil.ExtDestOpts}
	v4opt := tcp(podV4, worldV4, 50002, 443, testutil.TCPSyn)
	v4opt.IPv4Options = []byte{1, 1, 1, 0}
	v6frag := udp(podV6, worldV6, 50003, 53)
	v6frag.Fragment = &testutil.Fragment{ID: 9, More: true}
	quoted := udp(podV4, worldV4, 50004, 53)
	icmpErr := testutil.Packet{Src: podV4, Dst: worldV4, Proto: testutil.ProtoICMP, ICMPType: 3, Quote: quoted.L3()}
	sctp := testutil.Packet{Src: podV4, Dst: worldV4, Proto: testutil.ProtoSCTP, SPort: 50005, DPort: 443}
	for name, pkt := range map[string]testutil.Packet{
		"tcp v4":                tcp(podV4, worldV4, 50000, 443, testutil.TCPSyn),
		"tcp v4 options":        v4opt,
		"tcp v6 ext headers":    v6ext,
		"udp v6 first fragment": v6frag,
		"icmp error":            icmpErr,
		"sctp":                  sctp,
		"icmpv6 echo":           icmp(podV6, worldV6, 128),
	} {
		frame := pkt.Bytes()
		ipHeader := 14 + 20
		if pkt.Src.Is6() {
			ipHeader = 14 + 40
		}
		for n := 14; n < len(frame); n++ {
			got, err := h.tryRun(h.dp.FromPod, frame[:n])
			if err != nil && n < ipHeader {
				continue // BPF_PROG_TEST_RUN refuses IP frames shorter than the fixed IP header before the program runs
			}
			if err != nil {
				t.Fatalf("%s cut to %d bytes: %v", name, n, err)
			}
			if got != retDrop {
				t.Errorf("%s cut to %d of %d bytes: %s, want drop", name, n, len(frame), verdictName(got))
			}
		}
		// the same lengths with the IP header whole but nothing behind it reach the program: the header checks
		// then see a datagram longer than the frame
		if got := h.run(h.dp.FromPod, frame[:ipHeader]); got != retDrop {
			t.Errorf("%s cut after the IP header: %s, want drop", name, verdictName(got))
		}
		if got := h.run(h.dp.FromPod, frame); got != retNext {
			t.Errorf("%s whole (%d bytes): %s, want pass", name, len(frame), verdictName(got))
		}
	}
	if h.reasonCount(bpf.ReasonMalformed) == 0 {
		t.Errorf("malformed counter did not move")
	}
}

// Headers that lie about themselves are dropped.
func TestMalformedHeaders(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	good4 := tcp(podV4, worldV4, 51000, 443, testutil.TCPSyn).Bytes()
	good6 := tcp(podV6, worldV6, 51001, 443, testutil.TCPSyn).Bytes()
	mutate := func(frame []byte, f func(b []byte)) []byte {
		b := append([]byte(nil), frame...)
		f(b)
		return b
	}
	cases := map[string][]byte{
		"ihl below 5":            mutate(good4, func(b []byte) { b[14] = 0x44 }),
		"ihl past the datagram":  mutate(good4, func(b []byte) { b[14] = 0x4f }),
		"ip version 6 in v4":     mutate(good4, func(b []byte) { b[14] = 0x65 }),
		"total length too long":  mutate(good4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 1500) }),
		"total length too short": mutate(good4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 30) }),
		"v6 payload length 0":    mutate(good6, func(b []byte) { binary.BigEndian.PutUint16(b[18:], 0) }),
		"v6 payload length long": mutate(good6, func(b []byte) { binary.BigEndian.PutUint16(b[18:], 900) }),
		"v6 version 4":           mutate(good6, func(b []byte) { b[14] = 0x40 }),
		"v6 extension runs out":  mutate(good6, func(b []byte) { b[20] = testutil.ExtDestOpts }),
	}
	for name, frame := range cases {
		if got := h.run(h.dp.FromPod, frame); got != retDrop {
			t.Errorf("%s: %s, want drop", name, verdictName(got))
		}
	}
}
