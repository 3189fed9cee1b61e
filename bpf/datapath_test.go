package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

func cidr(s string, except ...string) policy.Peer {
	p := policy.Peer{CIDR: netip.MustParsePrefix(s)}
	for _, e := range except {
		p.Except = append(p.Except, netip.MustParsePrefix(e))
	}
	return p
}

func ports(proto uint8, first, last uint16) []policy.PortRange {
	return []policy.PortRange{{Protocol: proto, First: first, Last: last}}
}

// truthPolicy is the policy of the truth table: egress and ingress rules of every kind.
func truthPolicy() *policy.IdentityPolicy {
	return &policy.IdentityPolicy{
		Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionDeny,
		Rules: []policy.Rule{
			{ID: 11, Direction: bpf.Egress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr("198.51.100.0/24", "198.51.100.128/28")},
				Ports: ports(policy.ProtoTCP, 443, 443)},
			{ID: 12, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("198.51.100.0/24")}, AllPorts: true},
			{ID: 13, Direction: bpf.Egress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr("203.0.113.0/24")},
				Ports: ports(policy.ProtoUDP, 8000, 8100)},
			{ID: 14, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("203.0.113.0/24")},
				Ports: ports(policy.ProtoICMP, 8, 8)},
			{ID: 15, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("203.0.113.0/24")},
				Ports: ports(47, 0, 65535)},
			{ID: 16, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{{Identities: []uint32{peerID}}},
				Ports: ports(policy.ProtoTCP, 5432, 5432)},
			{ID: 17, Direction: bpf.Egress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr("2001:db8::/32")},
				Ports: ports(policy.ProtoTCP, 80, 80)},
			{ID: 18, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("2001:db8::/32")}, AllPorts: true},
			{ID: 19, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("10.0.0.0/24")},
				Ports: ports(policy.ProtoSCTP, 9000, 9999)},
			{ID: 21, Direction: bpf.Ingress, Action: bpf.ActionAllow, Peers: []policy.Peer{cidr("198.51.100.0/24")},
				Ports: ports(policy.ProtoTCP, 8443, 8443)},
			{ID: 22, Direction: bpf.Ingress, Action: bpf.ActionDeny, Peers: []policy.Peer{{Identities: []uint32{peerID}}}, AllPorts: true},
			{ID: 23, Direction: bpf.Ingress, Action: bpf.ActionAllow, AllPeers: true, Ports: ports(policy.ProtoICMPv6, 128, 128)},
		},
	}
}

func icmp(src, dst netip.Addr, typ uint8) testutil.Packet {
	proto := uint8(testutil.ProtoICMP)
	if src.Is6() {
		proto = testutil.ProtoICMPv6
	}
	return testutil.Packet{Src: src, Dst: dst, Proto: proto, ICMPType: typ, ICMPID: 77}
}

func TestTruthTable(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(truthPolicy())
	if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.Flags |= uint32(bpf.ConfigAllowEvents) }); err != nil {
		t.Fatal(err)
	}
	h.openEvents()
	ns := testutil.NeighborMessage(135, netip.IPv6Unspecified(), testutil.SolicitedNode(podV6), podV6)
	gateway := netip.MustParseAddr("fd00:250::1")
	nsLinkLocal := testutil.NeighborMessage(135, netip.MustParseAddr("fe80::2"), testutil.SolicitedNode(gateway), gateway)
	nsForwarded := nsLinkLocal
	nsForwarded.HopLimit = 254
	mld := testutil.Packet{Src: netip.IPv6Unspecified(), Dst: netip.MustParseAddr("ff02::16"),
		Proto: testutil.ProtoICMPv6, ICMPType: 143, HopLimit: 1}
	gre := testutil.Packet{Src: podV4, Dst: world2V4, Proto: 47, Payload: []byte{0, 0, 8, 0}}
	sctp := testutil.Packet{Src: podV4, Dst: nodeV4, Proto: testutil.ProtoSCTP, SPort: 5000, DPort: 9100}

	rows := []struct {
		name    string
		ingress bool
		pkt     testutil.Packet
		want    uint32
		reason  bpf.Reason
		rule    uint32
		event   bool // an event is expected (denies, and allows of new flows with allow events on)
	}{
		{"allow by rule, port and cidr", false, tcp(podV4, worldV4, 40001, 443, testutil.TCPSyn), retNext, bpf.ReasonAllowRule, 11, true},
		{"except carves out of the allow", false, tcp(podV4, netip.MustParseAddr("198.51.100.130"), 40002, 443, testutil.TCPSyn), retDrop, bpf.ReasonDenyRule, 12, true},
		{"deny by later rule, other port", false, tcp(podV4, worldV4, 40003, 80, testutil.TCPSyn), retDrop, bpf.ReasonDenyRule, 12, true},
		{"udp port range low edge", false, udp(podV4, world2V4, 40004, 8000), retNext, bpf.ReasonAllowRule, 13, true},
		{"udp port range high edge", false, udp(podV4, world2V4, 40005, 8100), retNext, bpf.ReasonAllowRule, 13, true},
		{"udp past the range: world default", false, udp(podV4, world2V4, 40006, 8101), retNext, bpf.ReasonAllowDefault, 0, true},
		{"icmp type by rule", false, icmp(podV4, world2V4, 8), retDrop, bpf.ReasonDenyRule, 14, true},
		{"icmp other type: default", false, icmp(podV4, world2V4, 13), retNext, bpf.ReasonAllowDefault, 0, true},
		{"protocol by number", false, gre, retDrop, bpf.ReasonDenyRule, 15, true},
		{"sctp port range to a node", false, sctp, retDrop, bpf.ReasonDenyRule, 19, true},
		{"namespace peer by identity", false, tcp(podV4, peerV4, 40007, 5432, testutil.TCPSyn), retDrop, bpf.ReasonDenyRule, 16, true},
		{"namespace peer by identity v6", false, tcp(podV6, peerV6, 40008, 5432, testutil.TCPSyn), retDrop, bpf.ReasonDenyRule, 16, true},
		{"namespace peer other port: pods allowed", false, tcp(podV4, peerV4, 40009, 5433, testutil.TCPSyn), retNext, bpf.ReasonAllowDefault, 0, true},
		{"v6 allow", false, tcp(podV6, worldV6, 40010, 80, testutil.TCPSyn), retNext, bpf.ReasonAllowRule, 17, true},
		{"v6 deny", false, tcp(podV6, worldV6, 40011, 81, testutil.TCPSyn), retDrop, bpf.ReasonDenyRule, 18, true},
		{"v4 rule never matches v6", false, tcp(podV6, netip.MustParseAddr("2001:db9::1"), 40012, 443, testutil.TCPSyn), retNext, bpf.ReasonAllowDefault, 0, true},
		{"metadata v4 blocked", false, tcp(podV4, metaV4, 40013, 80, testutil.TCPSyn), retDrop, bpf.ReasonMetadata, 0, true},
		{"metadata v6 blocked", false, tcp(podV6, metaV6, 40014, 80, testutil.TCPSyn), retDrop, bpf.ReasonMetadata, 0, true},
		{"node: allowed by default", false, tcp(podV4, nodeV4, 40015, 10250, testutil.TCPSyn), retNext, bpf.ReasonAllowDefault, 0, true},
		{"ingress allow by rule", true, tcp(worldV4, podV4, 50001, 8443, testutil.TCPSyn), retNext, bpf.ReasonAllowRule, 21, true},
		{"ingress world default deny", true, tcp(worldV4, podV4, 50002, 22, testutil.TCPSyn), retDrop, bpf.ReasonDenyDefault, 0, true},
		{"ingress peer denied", true, tcp(peerV4, podV4, 50003, 8443, testutil.TCPSyn), retDrop, bpf.ReasonDenyRule, 22, true},
		{"ingress from node allowed", true, tcp(nodeV4, podV4, 50004, 8080, testutil.TCPSyn), retNext, bpf.ReasonAllowDefault, 0, true},
		{"ingress all peers icmpv6 echo", true, icmp(worldV6, podV6, 128), retNext, bpf.ReasonAllowRule, 23, true},
		{"spoofed v4 source", false, tcp(netip.MustParseAddr("10.1.0.3"), worldV4, 40016, 443, testutil.TCPSyn), retDrop, bpf.ReasonSpoofed, 0, true},
		{"spoofed v6 source", false, tcp(netip.MustParseAddr("fd00:250::3"), worldV6, 40017, 80, testutil.TCPSyn), retDrop, bpf.ReasonSpoofed, 0, true},
		{"link-local source outside ND is spoofed", false, udp(netip.MustParseAddr("fe80::2"), worldV6, 40018, 53), retDrop, bpf.ReasonSpoofed, 0, true},
		{"DAD neighbour solicitation from ::", false, ns, retNext, bpf.ReasonNeighbor, 0, false},
		{"NS from link-local", false, nsLinkLocal, retNext, bpf.ReasonNeighbor, 0, false},
		{"NS with forwarded hop limit is not ND", false, nsForwarded, retDrop, bpf.ReasonSpoofed, 0, true},
		{"MLD report from ::", false, mld, retNext, bpf.ReasonNeighbor, 0, false},
		{"NS towards the pod", true, nsLinkLocal, retNext, bpf.ReasonNeighbor, 0, false},
	}
	for _, row := range rows {
		before := h.reasonCount(row.reason)
		var got uint32
		if row.ingress {
			got = h.to(row.pkt)
		} else {
			got = h.from(row.pkt)
		}
		if got != row.want {
			t.Errorf("%s: %s, want %s", row.name, verdictName(got), verdictName(row.want))
		}
		if after := h.reasonCount(row.reason); after != before+1 {
			t.Errorf("%s: counter of reason %s went %d -> %d, want +1", row.name, bpf.ReasonName(row.reason), before, after)
		}
		ev, ok := h.tryEvent(50_000_000)
		if ok != row.event {
			t.Errorf("%s: event present = %v, want %v (%+v)", row.name, ok, row.event, ev)
			continue
		}
		if ok && (bpf.Reason(ev.Reason) != row.reason || ev.RuleId != row.rule || ev.Identity != podID) {
			t.Errorf("%s: event reason %s rule %d identity %d, want %s rule %d identity %d", row.name,
				bpf.ReasonName(bpf.Reason(ev.Reason)), ev.RuleId, ev.Identity, bpf.ReasonName(row.reason), row.rule, podID)
		}
	}
}

func TestARPAndUnknownEthertype(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	if got := h.run(h.dp.FromPod, testutil.ARP()); got != retNext {
		t.Errorf("ARP from pod: %s, want pass", verdictName(got))
	}
	if got := h.run(h.dp.ToPod, testutil.ARP()); got != retNext {
		t.Errorf("ARP to pod: %s, want pass", verdictName(got))
	}
	lldp := testutil.ARP()
	lldp[12], lldp[13] = 0x88, 0xcc
	if got := h.run(h.dp.FromPod, lldp); got != retDrop {
		t.Errorf("LLDP frame: %s, want drop", verdictName(got))
	}
	if h.reasonCount(bpf.ReasonUnsupportedL3) != 1 {
		t.Errorf("unsupported-l3 counter = %d, want 1", h.reasonCount(bpf.ReasonUnsupportedL3))
	}
}

// A device that carries the programs but has no endpoint entry drops everything, ARP included.
func TestNoEndpointFailsClosed(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	if err := h.dp.DeleteEndpoint(h.ifindex); err != nil {
		t.Fatal(err)
	}
	for name, frame := range map[string][]byte{
		"tcp": tcp(podV4, worldV4, 1234, 443, testutil.TCPSyn).Bytes(),
		"arp": testutil.ARP(),
		"nd":  testutil.Packet{Src: netip.IPv6Unspecified(), Dst: netip.MustParseAddr("ff02::1:ff00:2"), Proto: testutil.ProtoICMPv6, ICMPType: 135, HopLimit: 255}.Bytes(),
	} {
		if got := h.run(h.dp.FromPod, frame); got != retDrop {
			t.Errorf("%s from pod without endpoint: %s, want drop", name, verdictName(got))
		}
		if got := h.run(h.dp.ToPod, frame); got != retDrop {
			t.Errorf("%s to pod without endpoint: %s, want drop", name, verdictName(got))
		}
	}
	if n := h.reasonCount(bpf.ReasonNoEndpoint); n != 6 {
		t.Errorf("no-endpoint counter = %d, want 6", n)
	}
}

// A pass hands the packet on with TCX_NEXT (never TCX_PASS), so programs after Moat's still run.
func TestPassIsTCXNext(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	got := h.from(tcp(podV4, worldV4, 1234, 443, testutil.TCPSyn))
	if got != 0xFFFFFFFF {
		t.Fatalf("allowed packet returned %#x, want TCX_NEXT (0xFFFFFFFF)", got)
	}
	if got := h.to(tcp(worldV4, podV4, 443, 1234, testutil.TCPSyn|testutil.TCPAck)); got != 0xFFFFFFFF {
		t.Fatalf("reply returned %#x, want TCX_NEXT", got)
	}
}

// Identities without a policy map (a namespace not known yet) get the cluster defaults: metadata blocked.
func TestClusterDefaultsWithoutPolicy(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.endpoint(0, bpf.ModeEnforce, podV4, podV6)
	if got := h.from(tcp(podV4, metaV4, 1000, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("metadata without identity: %s, want drop", verdictName(got))
	}
	if got := h.from(tcp(podV4, worldV4, 1001, 443, testutil.TCPSyn)); got != retNext {
		t.Errorf("world without identity (default Allow): %s, want pass", verdictName(got))
	}
	if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.DefaultVerdict[bpf.Egress] = uint8(bpf.ActionDeny) }); err != nil {
		t.Fatal(err)
	}
	if got := h.from(tcp(podV4, worldV4, 1002, 443, testutil.TCPSyn)); got != retDrop {
		t.Errorf("world without identity (default Deny): %s, want drop", verdictName(got))
	}
}

func TestMetadataForAllowedIdentity(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	p := &policy.IdentityPolicy{Identity: podID, MetadataAllowed: true, DefaultEgress: bpf.ActionDeny,
		DefaultIngress: bpf.ActionAllow}
	h.policy(p)
	// flagged: decided like the world, whose default here is Deny
	if got := h.from(tcp(podV4, metaV4, 1000, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("metadata, flagged, world default deny: %s, want drop", verdictName(got))
	}
	if h.reasonCount(bpf.ReasonDenyDefault) != 1 {
		t.Errorf("deny-default counter = %d, want 1", h.reasonCount(bpf.ReasonDenyDefault))
	}
	p.Rules = []policy.Rule{{ID: 3, Direction: bpf.Egress, Action: bpf.ActionAllow,
		Peers: []policy.Peer{cidr("169.254.169.254/32"), cidr("fd00:ec2::254/128")}, Ports: ports(policy.ProtoTCP, 80, 80)}}
	h.policy(p)
	if got := h.from(tcp(podV4, metaV4, 1001, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("metadata, flagged, allowed by rule: %s, want pass", verdictName(got))
	}
	if got := h.from(tcp(podV6, metaV6, 1001, 80, testutil.TCPSyn)); got != retNext {
		t.Errorf("metadata v6, flagged, allowed by rule: %s, want pass", verdictName(got))
	}
	// not flagged: the rule does not matter, the metadata rule comes first
	p.MetadataAllowed = false
	h.policy(p)
	if got := h.from(tcp(podV4, metaV4, 1002, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("metadata, not flagged, allowed by rule: %s, want drop", verdictName(got))
	}
}

// Neighbour discovery keeps the pod's link working under a deny-everything policy, but from the pod's global
// address it only passes towards the link: towards the world it is an ICMPv6 packet like any other.
func TestNeighborDiscoveryStaysOnLink(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(&policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny,
		Rules: []policy.Rule{{ID: 9, Direction: bpf.Egress, Action: bpf.ActionDeny, AllPeers: true, AllPorts: true}}})
	ns := func(src, dst, target string) testutil.Packet {
		return testutil.NeighborMessage(135, netip.MustParseAddr(src), netip.MustParseAddr(dst), netip.MustParseAddr(target))
	}
	for _, c := range []struct {
		name string
		pkt  testutil.Packet
		want uint32
	}{
		{"unreachability detection of a global gateway", ns("fd00:250::2", "fd00:250::1", "fd00:250::1"), retNext},
		{"from the global address to the solicited-node group", ns("fd00:250::2", "ff02::1:ff00:1", "fd00:250::1"), retNext},
		{"from the global address to a link-local router", ns("fd00:250::2", "fe80::1", "fe80::1"), retNext},
		{"from the global address to the world", ns("fd00:250::2", "2001:db8::7", "2001:db8::7"), retDrop},
		{"from the global address to the metadata API", ns("fd00:250::2", "fd00:ec2::254", "fd00:ec2::254"), retDrop},
	} {
		if got := h.from(c.pkt); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, verdictName(got), verdictName(c.want))
		}
	}
}
