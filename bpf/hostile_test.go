package bpf_test

// Hostile frames against the datapath in the kernel (BPF_PROG_TEST_RUN), one table row per attack that docs/security.md lists.
// The same attacks on real veths, each with a baseline run without Moat, are in conformance/hostile.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

var (
	podMAC    = testutil.DefaultSrcMAC
	otherMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x09}
	podLL     = bpf.LinkLocalFromMAC(podMAC) // fe80::ff:fe00:2
	gatewayV6 = netip.MustParseAddr("fd00:250::1")
	gatewayV4 = netip.MustParseAddr("10.1.0.1")
)

// row is one hostile (or legitimate, for contrast) frame and what the datapath must do with it.
type row struct {
	name    string
	ingress bool
	frame   []byte
	want    uint32
	reason  bpf.Reason
}

// check runs rows, each counted under its reason.
func (h *harness) check(rows []row) {
	h.t.Helper()
	for _, r := range rows {
		before := h.reasonCount(r.reason)
		prog := h.dp.FromPod
		if r.ingress {
			prog = h.dp.ToPod
		}
		if got := h.run(prog, r.frame); got != r.want {
			h.t.Errorf("%s: %s, want %s", r.name, verdictName(got), verdictName(r.want))
		}
		if after := h.reasonCount(r.reason); after != before+1 {
			h.t.Errorf("%s: counter of %s went %d -> %d, want +1", r.name, bpf.ReasonName(r.reason), before, after)
		}
	}
}

// withLink gives the harness endpoint the MAC of testutil's frames and the link-local address derived from it.
func (h *harness) withLink(identity uint32, addrs ...netip.Addr) {
	h.t.Helper()
	ep, err := bpf.NewEndpoint(identity, bpf.ModeEnforce, addrs)
	if err != nil {
		h.t.Fatal(err)
	}
	ep.SetLink(podMAC, netip.Addr{})
	if err := h.dp.SetEndpoint(h.ifindex, &ep); err != nil {
		h.t.Fatal(err)
	}
}

func denyWorldPolicy(rules ...policy.Rule) *policy.IdentityPolicy {
	return &policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny,
		Rules: rules}
}

// 1. An ICMP error is related to a flow only when it goes back to the flow's peer and quotes no more than a real
// stack does; any other is plain ICMP for policy, so an allowed flow is no tunnel to elsewhere.
func TestICMPErrorsAreRelatedOnlyToTheirPeer(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(denyWorldPolicy(
		policy.Rule{ID: 41, Direction: bpf.Egress, Action: bpf.ActionAllow, AllPeers: true, Ports: ports(policy.ProtoUDP, 53, 53)},
		policy.Rule{ID: 42, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{{Identities: []uint32{peerID}}}, AllPorts: true},
	))
	for _, v6 := range []bool{false, true} {
		pod, world, other, meta, peer, limit := podV4, worldV4, world2V4, metaV4, peerV4, 576
		if v6 {
			pod, world, other, meta, peer, limit = podV6, worldV6, netip.MustParseAddr("2001:db8::99"), metaV6, peerV6, 1280
		}
		if got := h.from(udp(pod, world, 33000, 53)); got != retNext {
			t.Fatalf("v6=%v: the allowed flow: %s", v6, verdictName(got))
		}
		// the pod's error about a reply it "received", and the world's about the pod's own packet
		quoteReply := udp(world, pod, 53, 33000).L3()
		quoteOwn := udp(pod, world, 33000, 53).L3()
		unreach := func(src, dst netip.Addr, quote []byte) []byte {
			p := icmp(src, dst, 3)
			if v6 {
				p.ICMPType = 1
			}
			p.ICMPID, p.Quote = 0, quote
			return p.Bytes()
		}
		long := append(append([]byte{}, quoteReply...), bytes.Repeat([]byte{'x'}, limit)...)
		h.check([]row{
			{"error back to the flow's peer", false, unreach(pod, world, quoteReply), retNext, bpf.ReasonCTRelated},
			{"error to a denied world host", false, unreach(pod, other, quoteReply), retDrop, bpf.ReasonDenyDefault},
			{"error to the metadata API", false, unreach(pod, meta, quoteReply), retDrop, bpf.ReasonMetadata},
			{"error to a pod the policy denies", false, unreach(pod, peer, quoteReply), retDrop, bpf.ReasonDenyRule},
			{"error back to the peer, quoting too much", false, unreach(pod, world, long), retDrop, bpf.ReasonDenyDefault},
			{"a router's error to the pod about its flow", true, unreach(other, pod, quoteOwn), retNext, bpf.ReasonCTRelated},
			{"error to the pod quoting a flow of another address", true, unreach(other, pod, udp(peer, world, 33000, 53).L3()), retDrop, bpf.ReasonDenyDefault},
		})
	}
}

// 2. From a pod, ARP and ND speak only for the pod; to a pod, only what is addressed to it passes.
func TestNeighborMessagesFromPod(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.withLink(podID, podV4, podV6)
	h.policy(denyWorldPolicy(policy.Rule{ID: 43, Direction: bpf.Egress, Action: bpf.ActionDeny, AllPeers: true, AllPorts: true}))
	// as on a node that does not know the pods' IPv6 range (no Node podCIDR for it): its own /64 is its link
	if err := h.dp.DeleteIPCache(netip.MustParsePrefix("fd00:250::/48")); err != nil {
		t.Fatal(err)
	}
	zeroMAC := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	arp := func(op uint16, eth, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
		f := testutil.ARPMessage(op, sha, spa, tha, tpa)
		copy(f[6:12], eth)
		return f
	}
	padded := append(arp(1, podMAC, podMAC, podV4, zeroMAC, gatewayV4), make([]byte, 18)...)
	trailing := append(arp(1, podMAC, podMAC, podV4, zeroMAC, gatewayV4), bytes.Repeat([]byte{'x'}, 18)...)
	sll := testutil.NDOption(1, podMAC)
	tll := testutil.NDOption(2, podMAC)
	nonce := testutil.NDOption(14, []byte{1, 2, 3, 4, 5, 6})
	nd := func(typ uint8, src, dst, target netip.Addr, opts ...[]byte) []byte {
		return testutil.NeighborMessage(typ, src, dst, target, opts...).Bytes()
	}
	ndHop := func(p testutil.Packet, hop uint8) []byte { p.HopLimit = hop; return p.Bytes() }
	allNodes, allRouters := netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::2")
	mld2 := func(records ...byte) []byte {
		p := testutil.Packet{Src: podLL, Dst: netip.MustParseAddr("ff02::16"), Proto: testutil.ProtoICMPv6,
			ICMPType: 143, HopLimit: 1, Payload: records}
		b := p.Bytes()
		n := (len(records) + 19) / 20
		b[len(b)-len(records)-1] = byte(n) // the record count, in the header's last byte
		return b
	}
	group := testutil.SolicitedNode(podV6).As16()
	record := append([]byte{2, 0, 0, 0}, group[:]...) // MODE_IS_EXCLUDE, no aux data, no source
	recordAux := append([]byte{2, 1, 0, 0}, group[:]...)
	mld1 := func(payload []byte) []byte {
		p := testutil.Packet{Src: podLL, Dst: testutil.SolicitedNode(podV6), Proto: testutil.ProtoICMPv6, ICMPType: 131,
			HopLimit: 1, Payload: append(group[:], payload...)}
		return p.Bytes()
	}
	spoofedTCP := tcp(podV4, worldV4, 1000, 443, testutil.TCPSyn)
	spoofedTCP.SrcMAC = otherMAC
	a := netip.MustParseAddr

	h.check([]row{
		{"ARP request for the gateway", false, arp(1, podMAC, podMAC, podV4, zeroMAC, gatewayV4), retNext, bpf.ReasonNeighbor},
		{"ARP probe from 0.0.0.0", false, arp(1, podMAC, podMAC, netip.IPv4Unspecified(), zeroMAC, podV4), retNext, bpf.ReasonNeighbor},
		{"ARP padded to 60 bytes with zeros", false, padded, retNext, bpf.ReasonNeighbor},
		{"ARP reply claiming another pod's address", false, arp(2, podMAC, podMAC, peerV4, otherMAC, gatewayV4), retDrop, bpf.ReasonNeighborDenied},
		{"gratuitous ARP for the gateway's address", false, arp(1, podMAC, podMAC, gatewayV4, zeroMAC, gatewayV4), retDrop, bpf.ReasonNeighborDenied},
		{"ARP with another sender MAC", false, arp(2, podMAC, otherMAC, podV4, otherMAC, gatewayV4), retDrop, bpf.ReasonNeighborDenied},
		{"ARP from another Ethernet source", false, arp(1, otherMAC, otherMAC, podV4, zeroMAC, gatewayV4), retDrop, bpf.ReasonSpoofed},
		{"ARP reply from 0.0.0.0", false, arp(2, podMAC, podMAC, netip.IPv4Unspecified(), otherMAC, gatewayV4), retDrop, bpf.ReasonNeighborDenied},
		{"ARP request with data as target MAC", false, arp(1, podMAC, podMAC, podV4, otherMAC, gatewayV4), retDrop, bpf.ReasonNeighborDenied},
		{"ARP with data after the message", false, trailing, retDrop, bpf.ReasonNeighborDenied},
		{"IPv4 from another Ethernet source", false, spoofedTCP.Bytes(), retDrop, bpf.ReasonSpoofed},

		{"NA for its own address", false, nd(136, podLL, allNodes, podV6, tll), retNext, bpf.ReasonNeighbor},
		{"NA for its link-local address", false, nd(136, podLL, allNodes, podLL, tll), retNext, bpf.ReasonNeighbor},
		{"NA for another pod's address", false, nd(136, podLL, allNodes, peerV6, tll), retDrop, bpf.ReasonNeighborDenied},
		{"NA for the gateway", false, nd(136, podLL, allNodes, gatewayV6, tll), retDrop, bpf.ReasonNeighborDenied},
		{"NA with another link-layer address", false, nd(136, podLL, allNodes, podV6, testutil.NDOption(2, otherMAC)), retDrop, bpf.ReasonNeighborDenied},
		{"router advertisement", false, nd(134, podLL, allNodes, netip.IPv6Unspecified()), retDrop, bpf.ReasonNeighborDenied},
		{"redirect", false, nd(137, podLL, gatewayV6, worldV6), retDrop, bpf.ReasonNeighborDenied},
		{"DAD of its own address, with a nonce", false, nd(135, netip.IPv6Unspecified(), testutil.SolicitedNode(podV6), podV6, nonce), retNext, bpf.ReasonNeighbor},
		{"DAD of another pod's address", false, nd(135, netip.IPv6Unspecified(), testutil.SolicitedNode(peerV6), peerV6), retDrop, bpf.ReasonNeighborDenied},
		{"DAD with a source link-layer option", false, nd(135, netip.IPv6Unspecified(), testutil.SolicitedNode(podV6), podV6, sll), retDrop, bpf.ReasonNeighborDenied},
		{"NS for the gateway", false, nd(135, podLL, testutil.SolicitedNode(gatewayV6), gatewayV6, sll), retNext, bpf.ReasonNeighbor},
		{"NS for the gateway, unicast", false, nd(135, podV6, gatewayV6, gatewayV6, sll), retNext, bpf.ReasonNeighbor},
		{"NS for a neighbour of its /64 that the ipcache does not know", false, nd(135, podV6, testutil.SolicitedNode(a("fd00:250::1:77")), a("fd00:250::1:77"), sll), retNext, bpf.ReasonNeighbor},
		{"NS for a world address", false, nd(135, podV6, testutil.SolicitedNode(worldV6), worldV6, sll), retDrop, bpf.ReasonNeighborDenied},
		{"NS from another link-local address", false, nd(135, netip.MustParseAddr("fe80::99"), testutil.SolicitedNode(gatewayV6), gatewayV6, sll), retDrop, bpf.ReasonSpoofed},
		{"NS with another link-layer address", false, nd(135, podLL, testutil.SolicitedNode(gatewayV6), gatewayV6, testutil.NDOption(1, otherMAC)), retDrop, bpf.ReasonNeighborDenied},
		{"NS to a pod that is not its target", false, nd(135, podLL, peerV6, gatewayV6, sll), retDrop, bpf.ReasonNeighborDenied},
		{"NS with data beyond its options", false, nd(135, podLL, testutil.SolicitedNode(gatewayV6), gatewayV6, sll, []byte("hidden!!")), retDrop, bpf.ReasonNeighborDenied},
		{"NS with an unknown option", false, nd(135, podLL, testutil.SolicitedNode(gatewayV6), gatewayV6, testutil.NDOption(99, []byte("data"))), retDrop, bpf.ReasonNeighborDenied},
		{"NS with a forwarded hop limit: plain ICMPv6", false, ndHop(testutil.NeighborMessage(135, podV6, testutil.SolicitedNode(gatewayV6), gatewayV6), 64), retDrop, bpf.ReasonDenyRule},
		{"RA with a forwarded hop limit: plain ICMPv6", false, ndHop(testutil.NeighborMessage(134, podV6, allNodes, netip.IPv6Unspecified()), 64), retDrop, bpf.ReasonDenyRule},
		{"RS to all routers", false, nd(133, podLL, allRouters, netip.Addr{}, sll), retNext, bpf.ReasonNeighbor},
		{"RS to another pod", false, nd(133, podLL, peerV6, netip.Addr{}, sll), retDrop, bpf.ReasonNeighborDenied},
		{"RS with a payload", false, nd(133, podLL, allRouters, netip.Addr{}, sll, []byte("12345678")), retDrop, bpf.ReasonNeighborDenied},
		{"MLDv2 report of its group", false, mld2(record...), retNext, bpf.ReasonNeighbor},
		{"MLDv2 report with auxiliary data", false, mld2(append(recordAux, 1, 2, 3, 4)...), retDrop, bpf.ReasonNeighborDenied},
		{"MLDv2 report with data after its records", false, mld2(append(append([]byte{}, record...), []byte("hidden")...)...), retDrop, bpf.ReasonNeighborDenied},
		{"MLDv1 report", false, mld1(nil), retNext, bpf.ReasonNeighbor},
		{"MLDv1 report with data", false, mld1([]byte("hidden")), retDrop, bpf.ReasonNeighborDenied},
		{"MLD query", false, (testutil.Packet{Src: podLL, Dst: allNodes, Proto: testutil.ProtoICMPv6, ICMPType: 130, HopLimit: 1, Payload: make([]byte, 16)}).Bytes(), retDrop, bpf.ReasonNeighborDenied},
	})
}

func TestOnlyItsOwnTrafficReachesAPod(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.withLink(podID, podV4, podV6)
	h.policy(&policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow})
	h.check([]row{
		{"TCP to the pod", true, tcp(worldV4, podV4, 1000, 80, testutil.TCPSyn).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"TCP to another pod's address, on this pod's MAC", true, tcp(worldV4, peerV4, 1001, 80, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonNotForEndpoint},
		{"TCP to a world address, on this pod's MAC", true, tcp(worldV4, world2V4, 1002, 80, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonNotForEndpoint},
		{"IPv6 to another pod's address", true, tcp(worldV6, peerV6, 1003, 80, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonNotForEndpoint},
		{"IPv6 to another link-local address", true, udp(worldV6, netip.MustParseAddr("fe80::99"), 1004, 80).Bytes(), retDrop, bpf.ReasonNotForEndpoint},
		{"IPv6 to its link-local address", true, udp(netip.MustParseAddr("fe80::1"), podLL, 1005, 80).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"a multicast group", true, udp(peerV4, netip.MustParseAddr("224.0.0.251"), 5353, 5353).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"the broadcast address", true, udp(peerV4, netip.MustParseAddr("255.255.255.255"), 67, 68).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"NS from a neighbour", true, testutil.NeighborMessage(135, netip.MustParseAddr("fe80::1"), testutil.SolicitedNode(podV6), podV6).Bytes(), retNext, bpf.ReasonNeighbor},
		{"ARP request broadcast", true, testutil.ARPMessage(1, otherMAC, gatewayV4, net.HardwareAddr{0, 0, 0, 0, 0, 0}, peerV4), retNext, bpf.ReasonNeighbor},
		{"ARP reply for the pod", true, testutil.ARPMessage(2, otherMAC, gatewayV4, podMAC, podV4), retNext, bpf.ReasonNeighbor},
		{"ARP reply for another pod", true, testutil.ARPMessage(2, otherMAC, gatewayV4, otherMAC, peerV4), retDrop, bpf.ReasonNotForEndpoint},
	})
}

// 5. Encapsulation to a node (or another cluster address the node holds) needs a rule: the node would decapsulate
// it and send the inner packet where policy never looked.
func TestEncapsulationToTheNodeNeedsARule(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := &policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow}
	h.policy(p)
	clusterV4, clusterV6 := netip.MustParseAddr("10.5.5.5"), gatewayV6
	proto := func(src, dst netip.Addr, n uint8) []byte {
		return testutil.Packet{Src: src, Dst: dst, Proto: n, Payload: make([]byte, 40)}.Bytes()
	}
	h.check([]row{
		{"IPIP to a node", false, proto(podV4, nodeV4, 4), retDrop, bpf.ReasonEncapsulation},
		{"6in4 to a node", false, proto(podV4, nodeV4, 41), retDrop, bpf.ReasonEncapsulation},
		{"GRE to a node", false, proto(podV4, nodeV4, 47), retDrop, bpf.ReasonEncapsulation},
		{"VXLAN to a node", false, udp(podV4, nodeV4, 40000, 4789).Bytes(), retDrop, bpf.ReasonEncapsulation},
		{"Linux VXLAN to a node", false, udp(podV4, nodeV4, 40001, 8472).Bytes(), retDrop, bpf.ReasonEncapsulation},
		{"Geneve to a node", false, udp(podV4, nodeV4, 40002, 6081).Bytes(), retDrop, bpf.ReasonEncapsulation},
		{"GRE to the gateway's cluster address", false, proto(podV4, clusterV4, 47), retDrop, bpf.ReasonEncapsulation},
		{"IPIP over IPv6 to a cluster address", false, proto(podV6, clusterV6, 4), retDrop, bpf.ReasonEncapsulation},
		{"DNS to a node", false, udp(podV4, nodeV4, 40003, 53).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"GRE to the world", false, proto(podV4, worldV4, 47), retNext, bpf.ReasonAllowDefault},
		{"GRE to a pod", false, proto(podV4, peerV4, 47), retNext, bpf.ReasonAllowDefault},
	})
	p.Rules = []policy.Rule{{ID: 44, Direction: bpf.Egress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr("10.0.0.0/24")},
		Ports: ports(policy.ProtoUDP, 4789, 4789)}}
	h.policy(p)
	h.check([]row{
		{"VXLAN to a node, allowed by a rule", false, udp(podV4, nodeV4, 40004, 4789).Bytes(), retNext, bpf.ReasonAllowRule},
		{"Geneve to a node, no rule", false, udp(podV4, nodeV4, 40005, 6081).Bytes(), retDrop, bpf.ReasonEncapsulation},
	})
}

// 6. A RST that the endpoint's own TCP would ignore does not end the flow: an allowed idle stream of an
// ingress-Deny namespace survives a blind RST from the Internet.
func TestBlindRSTKeepsTheFlow(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	seg := func(out bool, sport uint16, flags uint8, seq, ack uint32, payload int) testutil.Packet {
		p := tcp(worldV4, podV4, 443, sport, flags)
		if out {
			p = tcp(podV4, worldV4, sport, 443, flags)
		}
		p.Seq, p.Ack, p.Payload = seq, ack, make([]byte, payload)
		return p
	}
	open := func(sport uint16) {
		t.Helper()
		h.from(seg(true, sport, testutil.TCPSyn, 100, 0, 0))
		h.to(seg(false, sport, testutil.TCPSyn|testutil.TCPAck, 9000, 101, 0))
		h.from(seg(true, sport, testutil.TCPAck, 101, 9001, 0))
		h.to(seg(false, sport, testutil.TCPAck, 9001, 101, 10)) // the server sent 10 bytes: its next is 9011
	}
	alive := func(sport uint16) bool {
		_, ok := h.ctEntry(ctKey(h, testutil.ProtoTCP, podV4, worldV4, sport, 443))
		return ok
	}

	open(42100)
	for _, seq := range []uint32{0, 12345, 9010, 9012, 9011 + 65535} {
		if got := h.to(seg(false, 42100, testutil.TCPRst, seq, 0, 0)); got != retNext {
			t.Errorf("blind RST seq %d: %s, want pass (the pod's TCP judges it)", seq, verdictName(got))
		}
		if !alive(42100) {
			t.Fatalf("blind RST seq %d ended the flow", seq)
		}
	}
	if got := h.to(seg(false, 42100, testutil.TCPAck, 9011, 101, 5)); got != retNext {
		t.Errorf("data after the blind RSTs: %s, want pass", verdictName(got))
	}
	if got := h.to(seg(false, 42100, testutil.TCPRst, 9016, 0, 0)); got != retNext || alive(42100) {
		t.Errorf("the server's own RST (exact sequence): %s, entry kept %v; want pass and the flow ended", verdictName(got), alive(42100))
	}
	if got := h.to(seg(false, 42100, testutil.TCPAck, 9016, 101, 1)); got != retDrop {
		t.Errorf("packet after the real RST: %s, want drop", verdictName(got))
	}

	// the pod's own RST ends it too
	open(42101)
	if h.from(seg(true, 42101, testutil.TCPRst, 101, 0, 0)); alive(42101) {
		t.Error("the pod's own RST did not end the flow")
	}
	// a RST answering a SYN acknowledges it exactly; another acknowledgement is blind
	h.from(seg(true, 42102, testutil.TCPSyn, 500, 0, 0))
	if h.to(seg(false, 42102, testutil.TCPRst|testutil.TCPAck, 0, 777, 0)); !alive(42102) {
		t.Error("a RST that acknowledges nothing the pod sent ended the flow")
	}
	if h.to(seg(false, 42102, testutil.TCPRst|testutil.TCPAck, 0, 501, 0)); alive(42102) {
		t.Error("the refusal of the pod's SYN did not end the flow")
	}
}

// 7. One endpoint flooding new flows meets a bound of its own and never evicts another's established flows.
func TestConntrackBoundPerEndpoint(t *testing.T) {
	const table, bound = 64, 16
	for _, bounded := range []bool{false, true} {
		h := newHarness(t, bpf.Options{ConntrackEntries: table})
		h.policy(egressOnly443())
		victim := uint32(testutil.Dummy(t))
		ep, err := bpf.NewEndpoint(podID, bpf.ModeEnforce, []netip.Addr{peerV4})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.dp.SetEndpoint(victim, &ep); err != nil {
			t.Fatal(err)
		}
		if bounded {
			if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.CtMaxPerEndpoint = bound }); err != nil {
				t.Fatal(err)
			}
		}
		runOn := func(prog *ebpf.Program, ifindex uint32, p testutil.Packet) uint32 {
			ret, err := prog.Run(&ebpf.RunOptions{Data: p.Bytes(), Context: skbContext(ifindex)})
			if err != nil {
				t.Fatal(err)
			}
			return ret
		}
		if got := runOn(h.dp.FromPod, victim, udp(peerV4, worldV4, 5000, 53)); got != retNext {
			t.Fatalf("the victim's flow: %s", verdictName(got))
		}
		passed := 0
		for i := 0; i < 1000; i++ {
			if h.from(udp(podV4, worldV4, uint16(10000+i), 53)) == retNext {
				passed++
			}
		}
		_, victimAlive := h.ctEntry(bpf.NewCTKey(victim, testutil.ProtoUDP, peerV4, 5000, worldV4, 53))
		reply := runOn(h.dp.ToPod, victim, udp(worldV4, peerV4, 53, 5000))
		if !bounded {
			// the attack: without a bound of its own, the flood evicts the victim's entry and its reply is dropped
			if victimAlive || reply != retDrop {
				t.Fatalf("unbounded: the flood did not evict the victim's flow (entry %v, reply %s): the test shows no attack",
					victimAlive, verdictName(reply))
			}
			continue
		}
		if passed != bound {
			t.Errorf("the flood passed %d new flows, want the bound %d", passed, bound)
		}
		if n := h.reasonCount(bpf.ReasonCTLimit); n != 1000-bound {
			t.Errorf("conntrack-limit counter = %d, want %d", n, 1000-bound)
		}
		if n, _ := h.dp.Stat(bpf.StatCTLimited); n != 1000-bound {
			t.Errorf("conntrack-limited stat = %d, want %d", n, 1000-bound)
		}
		if !victimAlive || reply != retNext {
			t.Errorf("the victim's flow after the flood: entry %v, reply %s; want kept and passed", victimAlive, verdictName(reply))
		}
		// established flows of the flooder still pass; a recount finds the same numbers
		if got := h.to(udp(worldV4, podV4, 53, 10000)); got != retNext {
			t.Errorf("reply to one of the flooder's admitted flows: %s, want pass", verdictName(got))
		}
		counts, err := h.dp.RecountConntrack()
		if err != nil {
			t.Fatal(err)
		}
		if counts[h.ifindex] != bound || counts[victim] != 1 {
			t.Errorf("recount: flooder %d victim %d, want %d and 1", counts[h.ifindex], counts[victim], bound)
		}
		// an entry past its deadline is not counted; a device that is no endpoint any more loses its count
		now, err := h.dp.Jiffies()
		if err != nil {
			t.Fatal(err)
		}
		stale := bpf.NewCTKey(victim, testutil.ProtoUDP, peerV4, 1, worldV4, 53)
		if err := h.dp.ConntrackMap().Put(&stale, &bpf.CTValue{Expires: uint64(now) - 100}); err != nil {
			t.Fatal(err)
		}
		if err := h.dp.DeleteEndpoint(h.ifindex); err != nil {
			t.Fatal(err)
		}
		if counts, err = h.dp.RecountConntrack(); err != nil {
			t.Fatal(err)
		}
		all, err := h.dp.ConntrackCounts()
		if err != nil {
			t.Fatal(err)
		}
		if counts[victim] != 1 || all[victim].Live != 1 {
			t.Errorf("recount with an expired entry: %d (map %d), want 1", counts[victim], all[victim].Live)
		}
		if _, ok := all[h.ifindex]; ok {
			t.Errorf("the count of a deleted endpoint is still there")
		}
	}
}

// 8. NAT64 addresses are decided by the IPv4 address they embed: the metadata block and IPv4 rules hold.
func TestNAT64IsDecidedByItsIPv4Address(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(&policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionDeny,
		Rules: []policy.Rule{
			{ID: 45, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("203.0.113.0/24")}, AllPorts: true},
			{ID: 46, Direction: bpf.Ingress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr("198.51.100.0/24")}, AllPorts: true},
		}})
	a := netip.MustParseAddr
	h.check([]row{
		{"the metadata API through 64:ff9b::/96", false, tcp(podV6, a("64:ff9b::a9fe:a9fe"), 1000, 80, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonMetadata},
		{"the metadata API through 64:ff9b:1::/48", false, tcp(podV6, a("64:ff9b:1::a9fe:a9fe"), 1001, 80, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonMetadata},
		{"an IPv4 deny rule through NAT64", false, tcp(podV6, a("64:ff9b::cb00:7109"), 1002, 443, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonDenyRule},
		{"allowed IPv4 world through NAT64", false, tcp(podV6, a("64:ff9b::c633:6407"), 1003, 443, testutil.TCPSyn).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"an IPv4 ingress rule through NAT64", true, tcp(a("64:ff9b::c633:6407"), podV6, 1004, 80, testutil.TCPSyn).Bytes(), retNext, bpf.ReasonAllowRule},
		{"NAT64 source outside the ingress rule", true, tcp(a("64:ff9b::cb00:7109"), podV6, 1005, 80, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonDenyDefault},
		{"not NAT64: 64:ff9b:2::/48", false, tcp(podV6, a("64:ff9b:2::a9fe:a9fe"), 1006, 80, testutil.TCPSyn).Bytes(), retNext, bpf.ReasonAllowDefault},
	})
}

// 10. The Mobility header (135) is an upper-layer protocol for policy, never an extension header to look past.
func TestMobilityHeaderIsAProtocol(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := denyWorldPolicy(policy.Rule{ID: 47, Direction: bpf.Egress, Action: bpf.ActionAllow, AllPeers: true,
		Ports: ports(policy.ProtoUDP, 53, 53)})
	h.policy(p)
	// a Mobility header whose payload proto points at UDP, then a UDP header to port 53
	mh := []byte{17, 0, 0, 0, 0, 0, 0, 0, 0x9c, 0x40, 0, 53, 0, 8, 0, 0}
	frame := testutil.Packet{Src: podV6, Dst: worldV6, Proto: 135, Payload: mh}.Bytes()
	h.check([]row{{"UDP 53 behind a Mobility header", false, frame, retDrop, bpf.ReasonDenyDefault}})
	p.Rules = append(p.Rules, policy.Rule{ID: 48, Direction: bpf.Egress, Action: bpf.ActionAllow, AllPeers: true,
		Ports: ports(135, 0, 65535)})
	h.policy(p)
	h.check([]row{{"protocol 135 allowed by a rule", false, frame, retNext, bpf.ReasonAllowRule}})
}

// 3. A packet that claims a cluster or node source must arrive the way the cluster network brings that address:
// the route back to the source leaves through the device it came in on. In a network namespace of the test's
// own: a tunnel device towards other nodes' pods, an uplink towards the nodes and the world, a bridge for this
// node's pods.
func TestSpoofedClusterSourcesFromOutside(t *testing.T) {
	n := testutil.NewNS(t)
	err := n.Do(func(ns.NetNS) error {
		for _, f := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("turn forwarding on: %w", err)
			}
		}
		dev := map[string]int{}
		for _, name := range []string{"up0", "tun0", "br0"} {
			// veth pairs stand for the devices (this kernel may have no dummy driver); both ends up, for carrier
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
				return fmt.Errorf("add %s: %w", name, err)
			}
			for _, end := range []string{name + "p", name} {
				l, err := netlink.LinkByName(end)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
				dev[end] = l.Attrs().Index
			}
		}
		for _, a := range []struct{ dev, addr string }{{"up0", "10.0.0.1/24"}, {"br0", "10.1.0.1/24"},
			{"up0", "fd00:250:99::1/64"}, {"br0", "fd00:250::1/64"}} {
			addr, _ := netlink.ParseAddr(a.addr)
			addr.Flags = unix.IFA_F_NODAD
			if err := netlink.AddrAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: dev[a.dev]}}, addr); err != nil {
				return fmt.Errorf("address %s on %s: %w", a.addr, a.dev, err)
			}
		}
		for _, r := range []struct{ dev, dst string }{{"tun0", "10.252.0.0/16"}, {"tun0", "fd00:252::/48"},
			{"up0", "0.0.0.0/0"}, {"up0", "::/0"}} {
			_, dst, _ := net.ParseCIDR(r.dst)
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: dev[r.dev], Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("route %s dev %s: %w", r.dst, r.dev, err)
			}
		}
		spoofedSources(t, dev)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func spoofedSources(t *testing.T, dev map[string]int) {
	h := newHarness(t, bpf.Options{})
	h.policy(&policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionDeny})
	for _, e := range []struct {
		p     string
		class bpf.Class
	}{{"fd00:252::/48", bpf.ClassCluster}, {"fd00:250:99::/64", bpf.ClassNode}} {
		if err := h.dp.SetIPCache(netip.MustParsePrefix(e.p), e.class, 0); err != nil {
			t.Fatal(err)
		}
	}
	other := uint32(testutil.Dummy(t)) // another pod's host veth
	ep, err := bpf.NewEndpoint(peerID, bpf.ModeEnforce, []netip.Addr{peerV4})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.dp.SetEndpoint(other, &ep); err != nil {
		t.Fatal(err)
	}
	run := func(frame testutil.Packet, iif uint32) uint32 {
		ctx := skbContext(h.ifindex)
		binary.LittleEndian.PutUint32(ctx[36:], iif) // __sk_buff.ingress_ifindex
		ret, err := h.dp.ToPod.Run(&ebpf.RunOptions{Data: frame.Bytes(), Context: ctx})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	sport := uint16(20000)
	arrive := func(src, dst netip.Addr, iif uint32) uint32 {
		sport++
		return run(tcp(src, dst, sport, 80, testutil.TCPSyn), iif)
	}
	a := netip.MustParseAddr
	up, tun, br := uint32(dev["up0"]), uint32(dev["tun0"]), uint32(dev["br0"])
	// a NodePort masqueraded by netfilter, in both families: the pod sees the bridge's address as source
	masq4 := masquerade(t, dev, worldV4, a("10.0.0.1"), podV4, gatewayV4)
	masq6 := masquerade(t, dev, worldV6, a("fd00:250:99::1"), podV6, gatewayV6)
	rows := []struct {
		name   string
		frame  testutil.Packet
		iif    uint32
		want   uint32
		reason bpf.Reason
	}{
		{"the node's own address, masqueraded on the way in", tcp(gatewayV4, podV4, masq4, 80, testutil.TCPSyn), up, retNext, bpf.ReasonAllowDefault},
		{"the node's own address, masqueraded on the way in, IPv6", tcp(gatewayV6, podV6, masq6, 80, testutil.TCPSyn), up, retNext, bpf.ReasonAllowDefault},
		{"the node's own address claimed from outside", tcp(gatewayV4, podV4, 31000, 80, testutil.TCPSyn), up, retDrop, bpf.ReasonSpoofed},
		{"the node's bridge address claimed from outside, IPv6", tcp(gatewayV6, podV6, 31000, 80, testutil.TCPSyn), up, retDrop, bpf.ReasonSpoofed},
		{"the node's uplink address claimed from outside, IPv6", udp(a("fd00:250:99::1"), podV6, 31000, 53), up, retDrop, bpf.ReasonSpoofed},
		{"the node's address on a masqueraded port, another protocol", udp(gatewayV6, podV6, masq6, 80), up, retDrop, bpf.ReasonSpoofed},
		{"an echo request claiming the node's address, IPv6", testutil.Packet{Src: gatewayV6, Dst: podV6, Proto: testutil.ProtoICMPv6, ICMPType: 128}, up, retDrop, bpf.ReasonSpoofed},
	}
	for _, r := range rows {
		before := h.reasonCount(r.reason)
		if got := run(r.frame, r.iif); got != r.want {
			t.Errorf("%s: %s, want %s", r.name, verdictName(got), verdictName(r.want))
		}
		if after := h.reasonCount(r.reason); after != before+1 {
			t.Errorf("%s: counter of %s went %d -> %d, want +1", r.name, bpf.ReasonName(r.reason), before, after)
		}
	}
	addrRows := []struct {
		name     string
		src, dst netip.Addr
		iif      uint32
		want     uint32
		reason   bpf.Reason
	}{
		{"another node's pod over the tunnel", a("10.252.0.5"), podV4, tun, retNext, bpf.ReasonAllowDefault},
		{"another node's pod from the uplink", a("10.252.0.5"), podV4, up, retDrop, bpf.ReasonSpoofed},
		{"this node's pod range from the uplink", a("10.1.0.77"), podV4, up, retDrop, bpf.ReasonSpoofed},
		{"this node's pod through its bridge", a("10.1.0.77"), podV4, br, retNext, bpf.ReasonAllowDefault},
		{"a node from the uplink", a("10.0.0.5"), podV4, up, retNext, bpf.ReasonAllowDefault},
		{"a node from the tunnel", a("10.0.0.5"), podV4, tun, retDrop, bpf.ReasonSpoofed},
		{"made on this node", a("10.252.0.5"), podV4, 0, retNext, bpf.ReasonAllowDefault},
		{"from a pod of this node", peerV4, podV4, other, retNext, bpf.ReasonAllowDefault},
		{"the world from the uplink: policy decides", worldV4, podV4, up, retDrop, bpf.ReasonDenyDefault},
		{"the world from the tunnel: policy decides", worldV4, podV4, tun, retDrop, bpf.ReasonDenyDefault},
		{"another node's pod over the tunnel, IPv6", a("fd00:252::5"), podV6, tun, retNext, bpf.ReasonAllowDefault},
		{"another node's pod from the uplink, IPv6", a("fd00:252::5"), podV6, up, retDrop, bpf.ReasonSpoofed},
		{"this node's pod range from the uplink, IPv6", a("fd00:250::77"), podV6, up, retDrop, bpf.ReasonSpoofed},
	}
	for _, r := range addrRows {
		before := h.reasonCount(r.reason)
		if got := arrive(r.src, r.dst, r.iif); got != r.want {
			t.Errorf("%s: %s, want %s", r.name, verdictName(got), verdictName(r.want))
		}
		if after := h.reasonCount(r.reason); after != before+1 {
			t.Errorf("%s: counter of %s went %d -> %d, want +1", r.name, bpf.ReasonName(r.reason), before, after)
		}
	}
	// FirewallConfig sourceValidation: Disabled (multipath, asymmetric routes) leaves it to the network
	if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.Flags |= uint32(bpf.ConfigNoSourceCheck) }); err != nil {
		t.Fatal(err)
	}
	if got := arrive(a("10.252.0.5"), podV4, up); got != retNext {
		t.Errorf("another node's pod from the uplink, check off: %s, want pass", verdictName(got))
	}
}

// masquerade has netfilter translate a NodePort of the node's uplink address to the pod behind its bridge and
// masquerade it there, sends a real SYN from the world into the uplink, and returns the source port the pod sees
// (the node's bridge address is the source) once netfilter's conntrack holds the flow.
func masquerade(t *testing.T, dev map[string]int, world, node, pod, bridge netip.Addr) uint16 {
	t.Helper()
	family, table := netlink.InetFamily(unix.AF_INET), "ip"
	if pod.Is6() {
		family, table = unix.AF_INET6, "ip6"
	}
	rules := fmt.Sprintf(`table %[1]s moat_test_masq {
	chain pre { type nat hook prerouting priority dstnat; iifname "up0" tcp dport 30080 dnat to %[2]s; }
	chain post { type nat hook postrouting priority srcnat; oifname "br0" masquerade; }
}
`, table, netip.AddrPortFrom(pod, 80))
	nft := exec.Command("nft", "-f", "-")
	nft.Stdin = strings.NewReader(rules)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	up, err := netlink.LinkByIndex(dev["up0"])
	if err != nil {
		t.Fatal(err)
	}
	eth := &layers.Ethernet{SrcMAC: otherMAC, DstMAC: up.Attrs().HardwareAddr, EthernetType: layers.EthernetTypeIPv4}
	var ipl gopacket.NetworkLayer
	if pod.Is6() {
		eth.EthernetType = layers.EthernetTypeIPv6
		ipl = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: world.AsSlice(), DstIP: node.AsSlice()}
	} else {
		ipl = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: world.AsSlice(), DstIP: node.AsSlice()}
	}
	syn := &layers.TCP{SrcPort: 5555, DstPort: 30080, SYN: true, Seq: 1, Window: 1024}
	if err := syn.SetNetworkLayerForChecksum(ipl); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ipl.(gopacket.SerializableLayer), syn); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, buf.Bytes(), 0, &unix.SockaddrLinklayer{Ifindex: dev["up0p"]}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if f.Forward.DstPort == 30080 && f.Forward.SrcIP.Equal(world.AsSlice()) && f.Reverse.DstIP.Equal(bridge.AsSlice()) {
				return f.Reverse.DstPort
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("netfilter never tracked the masqueraded SYN from %s (%d flows)", world, len(flows))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// 4. A pod reaching another through its hostPort on a node address is decided as pod to pod: the sender's egress
// rules see the receiving pod (identity, container port), and, for a receiver on this node, whose own hook sees only
// the node's address after the portmap plugin masquerades the flow, the receiver's ingress rules see the sender.
func TestHostPortIsPodToPod(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	sender := &policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow,
		Rules: []policy.Rule{{ID: 51, Direction: bpf.Egress, Action: bpf.ActionDeny,
			Peers: []policy.Peer{{Identities: []uint32{peerID}}}, Ports: ports(policy.ProtoTCP, 80, 80)}}}
	receiver := &policy.IdentityPolicy{Identity: peerID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow,
		Rules: []policy.Rule{{ID: 52, Direction: bpf.Ingress, Action: bpf.ActionDeny,
			Peers: []policy.Peer{{Identities: []uint32{podID}}}, Ports: ports(policy.ProtoTCP, 8443, 8443)}}}
	h.policy(sender)
	h.policy(receiver)
	h.openEvents()
	node := netip.MustParseAddr("10.0.0.1")
	for _, hp := range []bpf.HostPort{
		{Node: node, Protocol: policy.ProtoTCP, Port: 8080, Pod: peerV4, PodPort: 80, Identity: peerID, Local: true},
		{Node: node, Protocol: policy.ProtoTCP, Port: 8443, Pod: peerV4, PodPort: 8443, Identity: peerID, Local: true},
		{Node: netip.MustParseAddr("10.0.0.2"), Protocol: policy.ProtoTCP, Port: 8443, Pod: netip.MustParseAddr("10.2.0.9"),
			PodPort: 8443, Identity: peerID, Local: false}, // a pod on another node: its own node decides its ingress
	} {
		if err := h.dp.SetHostPort(hp); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.dp.SetIPCache(netip.MustParsePrefix("10.2.0.9/32"), bpf.ClassPod, peerID); err != nil {
		t.Fatal(err)
	}
	h.check([]row{
		{"the sender's egress denies the receiver's namespace on its container port", false,
			tcp(podV4, node, 40100, 8080, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonDenyRule},
		{"the receiver's ingress denies the sender's namespace", false,
			tcp(podV4, node, 40101, 8443, testutil.TCPSyn).Bytes(), retDrop, bpf.ReasonDenyRule},
		{"a hostPort on another node: the sender's egress allows it (the receiver's node decides its ingress)", false,
			tcp(podV4, netip.MustParseAddr("10.0.0.2"), 40102, 8443, testutil.TCPSyn).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"another port of the node: node traffic", false,
			tcp(podV4, node, 40103, 9090, testutil.TCPSyn).Bytes(), retNext, bpf.ReasonAllowDefault},
		{"UDP on the TCP hostPort: node traffic", false,
			udp(podV4, node, 40104, 8080).Bytes(), retNext, bpf.ReasonAllowDefault},
	})
	// the flow event names the receiving pod's namespace, and the receiver's rule when it decided
	for {
		if _, ok := h.tryEvent(50 * time.Millisecond); !ok {
			break // the rows' events are read
		}
	}
	h.from(tcp(podV4, node, 40105, 8443, testutil.TCPSyn))
	if ev := h.nextEvent(); bpf.Class(ev.RemoteClass) != bpf.ClassPod || ev.RemoteIdentity != peerID || ev.RuleId != 52 {
		t.Errorf("event: remote %s/%d rule %d, want pod/%d rule 52", bpf.Class(ev.RemoteClass), ev.RemoteIdentity, ev.RuleId, peerID)
	}
	// an established flow through the hostPort is cut when the receiver's policy comes to deny it
	receiver.Rules[0].Ports = ports(policy.ProtoTCP, 1, 1)
	h.policy(receiver)
	if got := h.from(tcp(podV4, node, 40106, 8443, testutil.TCPSyn)); got != retNext {
		t.Fatalf("allowed through the hostPort: %s", verdictName(got))
	}
	receiver.Rules[0].Ports = ports(policy.ProtoTCP, 8443, 8443)
	h.policy(receiver)
	if got := h.from(tcp(podV4, node, 40106, 8443, testutil.TCPAck)); got != retDrop || h.reasonCount(bpf.ReasonRevoked) != 1 {
		t.Errorf("after the receiver denies the sender: %s (revoked %d), want drop, revoked", verdictName(got), h.reasonCount(bpf.ReasonRevoked))
	}
}

// 11. A pod of another node the enforcer has not heard of yet: its address lies in that node's pod range, which
// the ipcache classifies as a pod of unknown namespace. A rule denying namespaces by selector denies it too (it
// may be of them), with its own reason; a rule allowing namespaces does not allow it.
func TestUnknownPodIsDeniedByNamespaceRules(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	if err := h.dp.SetIPCache(netip.MustParsePrefix("10.244.1.0/24"), bpf.ClassPod, bpf.IdentityUnknownPod); err != nil {
		t.Fatal(err)
	}
	h.policy(&policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow,
		Rules: []policy.Rule{
			{ID: 61, Direction: bpf.Ingress, Action: bpf.ActionAllow, Peers: []policy.Peer{{Identities: []uint32{peerID}}},
				Ports: ports(policy.ProtoTCP, 80, 80)},
			{ID: 62, Direction: bpf.Ingress, Action: bpf.ActionDeny,
				Peers: []policy.Peer{{Identities: []uint32{77, bpf.IdentityUnknownPod}}}, AllPorts: true},
		}})
	unknown := netip.MustParseAddr("10.244.1.9")
	before := h.reasonCount(bpf.ReasonUnknownPod)
	if got := h.to(tcp(unknown, podV4, 40000, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("an unknown pod to a namespace that denies some namespaces: %s, want drop", verdictName(got))
	}
	if after := h.reasonCount(bpf.ReasonUnknownPod); after != before+1 {
		t.Errorf("unknown-pod counter %d -> %d, want +1", before, after)
	}
	if got := h.to(tcp(peerV4, podV4, 40001, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("a known pod of an allowed namespace: %s, want pass", verdictName(got))
	}
	// once the pod is known, its namespace decides
	if err := h.dp.SetIPCache(netip.MustParsePrefix("10.244.1.9/32"), bpf.ClassPod, peerID); err != nil {
		t.Fatal(err)
	}
	if got := h.to(tcp(unknown, podV4, 40002, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("the same pod, known to be of an allowed namespace: %s, want pass", verdictName(got))
	}
}
