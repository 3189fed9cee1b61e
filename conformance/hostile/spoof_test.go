package hostile

import (
	"net/netip"
	"testing"

	"github.com/moatfw/moat/internal/simnode"
)

// spoofAllowWorld lets the stand-in Internet's first addresses reach the locked namespace on UDP 9: the marker's
// way in. Everything else from the world stays denied (moat.dev/ingress: Deny).
const spoofAllowWorld = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: spoof-marker}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: locked}}
  ingress:
  - action: Allow
    from: [{cidr: 198.51.100.0/24}, {cidr: "2001:db8:100::/64"}]
    ports: [{protocol: UDP, port: 9}]
`

// spoofedClusterSource: a host on the Internet sends to a pod of an ingress-Deny namespace claiming an address of
// the node's pod range, which is cluster traffic and allowed by default. It arrives on the node's uplink, while
// the node routes that range to its bridge: strict reverse-path checking in the datapath drops it. (A source in
// another node's pod range is routed out of the same uplink on a network without tunnels, and cannot be told
// apart here: docs/security.md.)
func spoofedClusterSource(t *testing.T, e *env) {
	e.apply(t, "spoof.yaml", spoofAllowWorld)
	v := e.pods["locked-v"]
	inet, uplink := e.internet(t), linkIn(t, e.node.Host, simnode.Uplink)
	for _, c := range []struct {
		name                 string
		spoofed, world, dest netip.Addr
	}{
		{"IPv4: an unused address of the node's pod range", netip.MustParseAddr("10.251.0.77"), simnode.WorldAddr(0), v.Addr},
		{"IPv6: an unused address of the node's pod range", netip.MustParseAddr("fd00:251::77"), simnode.WorldAddr6(0), v.Addr6},
	} {
		t.Run(c.name, func(t *testing.T) {
			id, m := tag("spoofed-source"), tag("marker")
			hostile := udpFrame(t, inet.MAC, uplink.MAC, netip.AddrPortFrom(c.spoofed, 4000), netip.AddrPortFrom(c.dest, 9), id)
			marker := udpFrame(t, inet.MAC, uplink.MAC, netip.AddrPortFrom(c.world, 4000), netip.AddrPortFrom(c.dest, 9), m)
			at := listen(t, eth0(t, v), false)
			e.verdict(t, "a pod-range source from the Internet", through(t, inet, at, hostile, has(id), marker, has(m)), true)
		})
	}
}
