package hostile

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/moatfw/moat/internal/simnode"
)

// Policies of the ICMP case: the pod of icmp (world egress denied by its label) may send DNS to one world
// range; the pod of locked takes nothing from other pods but UDP 9 (the marker's port).
const icmpYAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: icmp-dns}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: icmp}}
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.0/24}, {cidr: "2001:db8:100::/64"}]
    ports: [{protocol: UDP, port: 53}]
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: locked-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: locked}}
  ingress:
  - action: Allow
    from: [{namespaceSelector: {}}]
    ports: [{protocol: UDP, port: 9}]
  - action: Deny
    from: [{namespaceSelector: {}}]
`

// eth0 is a pod's interface.
func eth0(t *testing.T, p *simnode.Pod) link { return linkIn(t, p.Net, "eth0") }

// gateway is the pods' bridge in the node (their gateway).
func (e *env) gateway(t *testing.T) link { return linkIn(t, e.node.Host, "cni0") }

// internet is the stand-in Internet's end of the node's uplink: every packet from a pod to the world or the
// metadata API arrives there.
func (e *env) internet(t *testing.T) link { return linkIn(t, e.node.Internet, simnode.Uplink) }

// udpExchange sends a datagram from the pod to an echo server and waits for the answer, so conntrack knows the
// flow; it returns the pod's port.
func udpExchange(t *testing.T, p *simnode.Pod, local, remote netip.Addr, port uint16) uint16 {
	t.Helper()
	var lport uint16
	err := p.Net.Do(func(ns.NetNS) error {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: ip(local)}, net.UDPAddrFromAddrPort(netip.AddrPortFrom(remote, port)))
		if err != nil {
			return err
		}
		defer c.Close()
		lport = uint16(c.LocalAddr().(*net.UDPAddr).Port)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("moat")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		_, err = c.Read(buf)
		return err
	})
	if err != nil {
		t.Fatalf("UDP exchange %s -> %s:%d: %v", local, remote, port, err)
	}
	return lport
}

// through sends a hostile frame and then a marker frame from the link, and reports whether the hostile one
// arrived at the capture before the marker did (the marker must arrive: it is allowed, and it takes the same
// path, so nothing sent before it can still be on the way).
func through(t *testing.T, from link, at *capture, hostile []byte, isHostile func([]byte) bool, marker []byte, isMarker func([]byte) bool) bool {
	t.Helper()
	send(t, from, hostile, marker)
	seen, ok := at.until(isMarker, 5*time.Second)
	if !ok {
		t.Fatalf("the marker (%s) never arrived at %s: the path itself is broken", describe(marker), at.where)
	}
	return anyOf(seen[:len(seen)-1], isHostile)
}

// quoted is the packet an ICMP error quotes (from its IP header on): a UDP datagram of the given flow.
func quoted(t *testing.T, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	if src.Addr().Is4() {
		l3 := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
		_ = udp.SetNetworkLayerForChecksum(l3)
		return build(t, l3, udp, gopacket.Payload(payload))
	}
	l3 := ipv6(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	_ = udp.SetNetworkLayerForChecksum(l3)
	return build(t, l3, udp, gopacket.Payload(payload))
}

// unreachable is a destination unreachable (port) error from src to dst quoting quote.
func unreachable(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, quote []byte) []byte {
	t.Helper()
	if src.Is4() {
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)}
		return build(t, eth(srcMAC, dstMAC, layers.EthernetTypeIPv4), ipv4(src, dst, layers.IPProtocolICMPv4), icmp, gopacket.Payload(quote))
	}
	l3 := ipv6(src, dst, layers.IPProtocolICMPv6)
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable)}
	_ = icmp.SetNetworkLayerForChecksum(l3)
	// four unused bytes, then the quote
	return build(t, eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), l3, icmp, gopacket.Payload(append(make([]byte, 4), quote...)))
}

// icmpErrors: a pod with one allowed flow (DNS to 198.51.100.1) quotes that flow in ICMP errors it sends
// elsewhere, hoping the datapath takes them as related to the allowed flow. Only an error going back to the
// quoted packet's source, of a normal size, is related.
func icmpErrors(t *testing.T, e *env) {
	e.apply(t, "icmp.yaml", icmpYAML)
	a, victim := e.pods["icmp-a"], e.pods["locked-v"]
	from, gw, inet, vl := eth0(t, a), e.gateway(t), e.internet(t), eth0(t, victim)
	for _, fam := range []struct {
		name                   string
		pod, dns, denied, meta netip.Addr
		victim                 netip.Addr
		limit                  int // the largest related error datagram
	}{
		{"ipv4", a.Addr, simnode.WorldAddr(0), simnode.WorldAddr(1), simnode.Metadata, victim.Addr, 576},
		{"ipv6", a.Addr6, simnode.WorldAddr6(0), simnode.WorldAddr6(1), simnode.Metadata6, victim.Addr6, 1280},
	} {
		t.Run(fam.name, func(t *testing.T) {
			// the allowed flow the errors quote: its reply, as the pod received it
			port := udpExchange(t, a, fam.pod, fam.dns, 53)
			reply := func(payload []byte) []byte {
				return quoted(t, netip.AddrPortFrom(fam.dns, 53), netip.AddrPortFrom(fam.pod, port), payload)
			}
			toWorldMarker := func() ([]byte, func([]byte) bool) {
				m := tag("marker")
				return udpFrame(t, from.MAC, gw.MAC, netip.AddrPortFrom(fam.pod, port), netip.AddrPortFrom(fam.dns, 53), m), has(m)
			}
			headers := 20 + 8 + 20 + 8 // outer IP, ICMP, quoted IP, UDP
			if fam.pod.Is6() {
				headers = 40 + 8 + 40 + 8
			}
			for _, c := range []struct {
				name    string
				dst     netip.Addr
				dstMAC  net.HardwareAddr
				at      link
				size    int // the quoted payload's length (0: just the tag)
				blocked bool
			}{
				{"to a denied world host", fam.denied, gw.MAC, inet, 0, true},
				{"to the metadata API", fam.meta, gw.MAC, inet, 0, true},
				{"to a pod whose namespace denies it", fam.victim, vl.MAC, vl, 0, true},
				{"to the quoted packet's source", fam.dns, gw.MAC, inet, 0, false},
				{"to the quoted source, too long to be related", fam.dns, gw.MAC, inet, fam.limit - headers + 1, true},
			} {
				t.Run(c.name, func(t *testing.T) {
					id := tag("icmp-error")
					payload := id
					if c.size > len(id) {
						payload = append(append([]byte(nil), id...), make([]byte, c.size-len(id))...)
					}
					hostile := unreachable(t, from.MAC, c.dstMAC, fam.pod, c.dst, reply(payload))
					marker, isMarker := toWorldMarker()
					if c.at.Name != simnode.Uplink {
						m := tag("marker")
						marker, isMarker = udpFrame(t, from.MAC, c.dstMAC, netip.AddrPortFrom(fam.pod, port), netip.AddrPortFrom(c.dst, 9), m), has(m)
					}
					at := listen(t, c.at, false)
					e.verdict(t, c.name, through(t, from, at, hostile, has(id), marker, isMarker), c.blocked)
				})
			}
		})
	}
}
