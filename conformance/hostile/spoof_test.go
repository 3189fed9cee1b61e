package hostile

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

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
// apart here: docs/security.md.) The node's own IPv6 addresses, which the kernel accepts from outside (it drops
// only the IPv4 form, as martian), pass only when netfilter masqueraded the flow: masqueradedNodePort.
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
		{"IPv6: the node's bridge address", simnode.PodSubnet6.Addr().Next(), simnode.WorldAddr6(0), v.Addr6},
		{"IPv6: the node's uplink address", simnode.UplinkHost6, simnode.WorldAddr6(0), v.Addr6},
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

// masqueradedNodePort: what looks like the node's own address claimed from outside, and must pass. netfilter
// translates a NodePort on the node's uplink address to a pod of the ingress-Deny namespace and masquerades it
// to the bridge's address, as kube-proxy does for a Service with externalTrafficPolicy Cluster: the pod sees the
// node as the source, which policy allows.
func masqueradedNodePort(t *testing.T, e *env) {
	v := e.pods["locked-v"]
	inet, uplink := e.internet(t), linkIn(t, e.node.Host, simnode.Uplink)
	for _, c := range []struct {
		name             string
		table            string
		world, node, pod netip.Addr
	}{
		{"IPv4", "ip", simnode.WorldAddr(1), simnode.UplinkHost, v.Addr},
		{"IPv6", "ip6", simnode.WorldAddr6(1), simnode.UplinkHost6, v.Addr6},
	} {
		t.Run(c.name, func(t *testing.T) {
			nft(t, e.node.Host, fmt.Sprintf(`table %s moat_nodeport {
	chain pre { type nat hook prerouting priority dstnat; iifname %q udp dport 30009 dnat to %s; }
	chain post { type nat hook postrouting priority srcnat; oifname "cni0" masquerade; }
}
`, c.table, simnode.Uplink, netip.AddrPortFrom(c.pod, 9)))
			t.Cleanup(func() { nft(t, e.node.Host, fmt.Sprintf("delete table %s moat_nodeport\n", c.table)) })
			id := tag("nodeport")
			at := listen(t, eth0(t, v), false)
			send(t, inet, udpFrame(t, inet.MAC, uplink.MAC, netip.AddrPortFrom(c.world, 4000), netip.AddrPortFrom(c.node, 30009), id))
			seen, ok := at.until(has(id), 5*time.Second)
			if ok && !bytes.Contains(seen[len(seen)-1], gateway(c.pod).AsSlice()) {
				t.Errorf("the NodePort datagram arrived unmasqueraded: %s", describe(seen[len(seen)-1]))
			}
			e.verdict(t, "a NodePort masqueraded to the node's bridge address", ok, false)
		})
	}
}

// gateway is the bridge's address in the pod's subnet.
func gateway(pod netip.Addr) netip.Addr {
	if pod.Is6() {
		return simnode.PodSubnet6.Addr().Next()
	}
	return simnode.PodSubnet.Addr().Next()
}

// nft runs an nftables script in a namespace.
func nft(t *testing.T, n ns.NetNS, script string) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}); err != nil {
		t.Fatalf("nft: %v", err)
	}
}
