package hostile

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/simnode"
)

// tunnelAllowedYAML lets the tunnel namespace's pods send VXLAN and IPIP to the pods' gateway.
const tunnelAllowedYAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: tunnel-allowed}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: tunnel}}
  egress:
  - action: Allow
    to: [{cidr: 10.251.0.1/32}]
    ports: [{protocol: UDP, port: 4789}, {protocol: UDP, port: 8472}, {protocol: "4"}]
`

// decapsulator is a VXLAN device in the node, as an overlay network would leave one: whatever a pod wraps in
// VXLAN to the node's port comes out of it and is routed on, here to the metadata API.
func decapsulator(t *testing.T, e *env, name string, vni uint32, port uint16) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := e.node.Host.Do(func(ns.NetNS) error {
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name}, VxlanId: int(vni), Port: int(port), Learning: false}
		if err := netlink.LinkAdd(vx); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		// the inner source is a pod's address arriving on the tunnel: loose or no reverse-path filtering, as
		// overlays run with
		for _, f := range []string{"all", name} {
			if err := os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", f), []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatalf("VXLAN device %s in the node: %v", name, err)
	}
	t.Cleanup(func() {
		_ = e.node.Host.Do(func(ns.NetNS) error {
			if l, err := netlink.LinkByName(name); err == nil {
				return netlink.LinkDel(l)
			}
			return nil
		})
	})
	return mac
}

// tunnels: a pod wraps a packet for the metadata API (or a world host) in VXLAN, Geneve, IPIP, GRE or 6in4 and
// sends it to a node address. A node that decapsulates it would route the inner packet where the pod may not
// go. Moat drops encapsulation to a node unless a rule allows it. This kernel has VXLAN but no ipip, gre, sit
// or geneve drivers, so only VXLAN is decapsulated in the baseline; for the others the baseline shows the
// outer packet reaching the node, and Moat must stop that.
func tunnels(t *testing.T, e *env) {
	e.apply(t, "tunnel.yaml", "")
	a := e.pods["tunnel-a"]
	from, gw, inet := eth0(t, a), e.gateway(t), e.internet(t)
	vxMAC := map[uint16]net.HardwareAddr{
		4789: decapsulator(t, e, "moatvx4789", 42, 4789),
		8472: decapsulator(t, e, "moatvx8472", 43, 8472),
	}
	gwAddr := simnode.PodSubnet.Addr().Next()
	// inner packets: to the metadata API, and to a world host
	innerUDP := func(src, dst netip.Addr, id []byte) []gopacket.SerializableLayer {
		udp := &layers.UDP{SrcPort: 4000, DstPort: 80}
		if src.Is4() {
			l3 := ipv4(src, dst, layers.IPProtocolUDP)
			_ = udp.SetNetworkLayerForChecksum(l3)
			return []gopacket.SerializableLayer{l3, udp, gopacket.Payload(id)}
		}
		l3 := ipv6(src, dst, layers.IPProtocolUDP)
		_ = udp.SetNetworkLayerForChecksum(l3)
		return []gopacket.SerializableLayer{l3, udp, gopacket.Payload(id)}
	}
	outerUDP := func(node netip.Addr, port uint16, inner ...gopacket.SerializableLayer) []byte {
		l3 := ipv4(a.Addr, node, layers.IPProtocolUDP)
		udp := &layers.UDP{SrcPort: 4789, DstPort: layers.UDPPort(port)}
		_ = udp.SetNetworkLayerForChecksum(l3)
		return build(t, append([]gopacket.SerializableLayer{eth(from.MAC, gw.MAC, layers.EthernetTypeIPv4), l3, udp}, inner...)...)
	}
	outerIP := func(node netip.Addr, proto layers.IPProtocol, inner ...gopacket.SerializableLayer) []byte {
		return build(t, append([]gopacket.SerializableLayer{eth(from.MAC, gw.MAC, layers.EthernetTypeIPv4), ipv4(a.Addr, node, proto)}, inner...)...)
	}
	for _, node := range []struct {
		name string
		addr netip.Addr
	}{{"gateway", gwAddr}, {"uplink", simnode.UplinkHost}, {"gateway, allowed by a rule", gwAddr}} {
		if node.name == "gateway, allowed by a rule" {
			// what Moat drops is encapsulation no rule allows, not these packets as such
			e.apply(t, "tunnel.yaml", tunnelAllowedYAML)
		}
		for _, c := range []struct {
			name  string
			frame func(id []byte) []byte
			decap bool // the baseline node decapsulates it: the inner packet must reach the metadata API
		}{
			{"VXLAN 4789", func(id []byte) []byte {
				return outerUDP(node.addr, 4789, append([]gopacket.SerializableLayer{&layers.VXLAN{ValidIDFlag: true, VNI: 42},
					eth(fakeMAC(), vxMAC[4789], layers.EthernetTypeIPv4)}, innerUDP(a.Addr, simnode.Metadata, id)...)...)
			}, true},
			{"VXLAN 8472", func(id []byte) []byte {
				return outerUDP(node.addr, 8472, append([]gopacket.SerializableLayer{&layers.VXLAN{ValidIDFlag: true, VNI: 43},
					eth(fakeMAC(), vxMAC[8472], layers.EthernetTypeIPv4)}, innerUDP(a.Addr, simnode.WorldAddr(1), id)...)...)
			}, true},
			{"Geneve 6081", func(id []byte) []byte {
				// gopacket decodes Geneve but cannot write it: version 0, no options, Ethernet inside, VNI 42
				geneve := gopacket.Payload{0, 0, 0x65, 0x58, 0, 0, 42, 0}
				return outerUDP(node.addr, 6081, append([]gopacket.SerializableLayer{geneve, eth(fakeMAC(), gw.MAC, layers.EthernetTypeIPv4)},
					innerUDP(a.Addr, simnode.Metadata, id)...)...)
			}, false},
			{"IPIP", func(id []byte) []byte {
				return outerIP(node.addr, layers.IPProtocolIPv4, innerUDP(a.Addr, simnode.Metadata, id)...)
			}, false},
			{"GRE", func(id []byte) []byte {
				return outerIP(node.addr, layers.IPProtocolGRE, append([]gopacket.SerializableLayer{&layers.GRE{Protocol: layers.EthernetTypeIPv4}},
					innerUDP(a.Addr, simnode.Metadata, id)...)...)
			}, false},
			{"6in4", func(id []byte) []byte {
				return outerIP(node.addr, layers.IPProtocolIPv6, innerUDP(a.Addr6, simnode.WorldAddr6(1), id)...)
			}, false},
		} {
			allowed := node.name == "gateway, allowed by a rule"
			if allowed && !c.decap && c.name != "IPIP" {
				continue // the rule allows VXLAN and IPIP only
			}
			t.Run(c.name+" to the "+node.name, func(t *testing.T) {
				id, m := tag("tunnel"), tag("marker")
				hostile := c.frame(id)
				marker := udpFrame(t, from.MAC, gw.MAC, netip.AddrPortFrom(a.Addr, 9), netip.AddrPortFrom(node.addr, 9), m)
				atNode, atWorld := listen(t, gw, false), listen(t, inet, false)
				e.verdict(t, c.name+" reaching the node", through(t, from, atNode, hostile, has(id), marker, has(m)), !allowed)
				if c.decap && !e.moat {
					// the node unwraps it and routes the inner packet on: the attack done
					if _, ok := atWorld.until(has(id), 3*time.Second); !ok {
						t.Errorf("%s: the node did not route the inner packet to the Internet: no attack", c.name)
					}
				}
			})
		}
	}
}
