package hostile

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/moatfw/moat/internal/simnode"
)

const mobilityDNS = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: mobility-dns}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: mobility}}
  egress:
  - action: Allow
    to: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]
    ports: [{protocol: UDP, port: 53}]
`

const mobilityAllowed = mobilityDNS + `  - action: Allow
    to: [{cidr: "::/0"}]
    ports: [{protocol: "135"}]
`

// ipProtoMobility is the IPv6 Mobility header's next-header value (RFC 6275).
const ipProtoMobility = layers.IPProtocol(135)

// mobility: an IPv6 Mobility header whose payload-protocol field names UDP, followed by a UDP/53 header. A
// datapath that walks it like an extension header would decide the packet as DNS; it is protocol 135, which
// only a rule for 135 allows.
func mobility(t *testing.T, e *env) {
	a := e.pods["mobility-a"]
	from, gw, inet := eth0(t, a), e.gateway(t), e.internet(t)
	frame := func(id []byte) []byte {
		l3 := ipv6(a.Addr6, simnode.WorldAddr6(0), ipProtoMobility)
		udp := &layers.UDP{SrcPort: 4000, DstPort: 53}
		_ = udp.SetNetworkLayerForChecksum(l3)
		// gopacket has no Mobility header: payload proto UDP (RFC 6275 wants 59, none), length 0 (8 bytes),
		// type 0 (binding refresh request), reserved, checksum, 2 bytes of padding
		mh := gopacket.Payload{uint8(layers.IPProtocolUDP), 0, 0, 0, 0, 0, 0, 0}
		return build(t, eth(from.MAC, gw.MAC, layers.EthernetTypeIPv6), l3, mh, udp, gopacket.Payload(id))
	}
	for _, c := range []struct {
		name, policy string
		blocked      bool
	}{
		{"DNS allowed, 135 not", mobilityDNS, true},
		{"135 allowed", mobilityAllowed, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.apply(t, "mobility.yaml", c.policy)
			id, m := tag("mobility"), tag("marker")
			marker := udpFrame(t, from.MAC, gw.MAC, netip.AddrPortFrom(a.Addr6, 4000), netip.AddrPortFrom(simnode.WorldAddr6(0), 53), m)
			at := listen(t, inet, false)
			e.verdict(t, "a Mobility header hiding UDP/53", through(t, from, at, frame(id), has(id), marker, has(m)), c.blocked)
		})
	}
}
