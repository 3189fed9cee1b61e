package hostile

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// same matches the very frame sent: a frame bridged between two pods arrives unchanged.
func same(frame []byte) func([]byte) bool {
	return func(f []byte) bool { return bytes.Equal(f, frame) }
}

// arpFrame is an ARP message; the target hardware address is zero in a request.
func arpFrame(t *testing.T, ethSrc, ethDst net.HardwareAddr, op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	t.Helper()
	if tha == nil {
		tha = make(net.HardwareAddr, 6)
	}
	return build(t, eth(ethSrc, ethDst, layers.EthernetTypeARP), &layers.ARP{AddrType: layers.LinkTypeEthernet,
		Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
		SourceHwAddress: sha, SourceProtAddress: ip(spa), DstHwAddress: tha, DstProtAddress: ip(tpa)})
}

// neighbor is the link-layer address a namespace's eth0 holds for a neighbour's address (nil: no entry).
func neighbor(t *testing.T, n ns.NetNS, a netip.Addr) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		family := netlink.FAMILY_V4
		if a.Is6() {
			family = netlink.FAMILY_V6
		}
		ns, err := netlink.NeighList(l.Attrs().Index, family)
		if err != nil {
			return err
		}
		for _, e := range ns {
			if x, ok := netip.AddrFromSlice(e.IP); ok && x.Unmap() == a && len(e.HardwareAddr) == 6 {
				mac = e.HardwareAddr
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// forget removes a namespace's neighbour entry for an address (the next packet resolves it again).
func forget(t *testing.T, n ns.NetNS, a netip.Addr) {
	t.Helper()
	_ = n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		family := netlink.FAMILY_V4
		if a.Is6() {
			family = netlink.FAMILY_V6
		}
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: family, IP: ip(a)})
	})
}

// learn makes a namespace resolve a neighbour (a datagram to its discard port) and waits for the entry.
func learn(t *testing.T, n ns.NetNS, a netip.Addr) net.HardwareAddr {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("moat"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if mac := neighbor(t, n, a); mac != nil {
			return mac
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no neighbour entry for %s", a)
	return nil
}

// arp: a pod speaks ARP only for itself (its MAC, its address, 0.0.0.0 in a probe), and every frame it sends
// carries its own MAC. The victim is another pod on the bridge; its ARP cache shows what the attack did.
func arp(t *testing.T, e *env) {
	e.apply(t, "neigh.yaml", "")
	a, v, w := e.pods["neigh-a"], e.pods["neigh-v"], e.pods["neigh-w"]
	al, vl, wl := eth0(t, a), eth0(t, v), eth0(t, w)
	gwAddr := simnode.PodSubnet.Addr().Next()
	fake := fakeMAC()
	for _, c := range []struct {
		name    string
		frame   []byte
		poison  netip.Addr       // the victim's cache entry the frame rewrites without Moat
		to      net.HardwareAddr // to this MAC
		blocked bool
	}{
		{"sender MAC not its own", arpFrame(t, al.MAC, broadcast, layers.ARPRequest, fake, a.Addr, nil, v.Addr), a.Addr, fake, true},
		{"sender address the gateway's", arpFrame(t, al.MAC, broadcast, layers.ARPRequest, al.MAC, gwAddr, nil, v.Addr), gwAddr, al.MAC, true},
		{"sender address another pod's", arpFrame(t, al.MAC, vl.MAC, layers.ARPRequest, al.MAC, w.Addr, nil, v.Addr), w.Addr, al.MAC, true},
		{"reply for another pod's address", arpFrame(t, al.MAC, vl.MAC, layers.ARPReply, al.MAC, w.Addr, vl.MAC, v.Addr), netip.Addr{}, nil, true},
		{"Ethernet source not its own", arpFrame(t, fake, broadcast, layers.ARPRequest, al.MAC, a.Addr, nil, v.Addr), netip.Addr{}, nil, true},
		{"Ethernet source another pod's", arpFrame(t, wl.MAC, broadcast, layers.ARPRequest, al.MAC, a.Addr, nil, v.Addr), netip.Addr{}, nil, true},
		{"probe from 0.0.0.0", arpFrame(t, al.MAC, broadcast, layers.ARPRequest, al.MAC, netip.IPv4Unspecified(), nil, a.Addr), netip.Addr{}, nil, false},
		{"request for a neighbour", arpFrame(t, al.MAC, broadcast, layers.ARPRequest, al.MAC, a.Addr, nil, v.Addr), netip.Addr{}, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.poison.IsValid() {
				forget(t, v.Net, c.poison)
				t.Cleanup(func() { forget(t, v.Net, c.poison) })
			}
			at := listen(t, vl, false)
			m := tag("marker")
			marker := udpFrame(t, al.MAC, vl.MAC, netip.AddrPortFrom(a.Addr, 9), netip.AddrPortFrom(v.Addr, 9), m)
			e.verdict(t, c.name, through(t, al, at, c.frame, same(c.frame), marker, has(m)), c.blocked)
			if c.poison.IsValid() {
				got := neighbor(t, v.Net, c.poison)
				poisoned := bytes.Equal(got, c.to)
				switch {
				case !e.moat && !poisoned:
					t.Errorf("without Moat the victim's entry for %s is %v, not the attacker's %v: no attack", c.poison, got, c.to)
				case e.moat && poisoned:
					t.Errorf("the victim's ARP cache says %s is at %v", c.poison, got)
				}
			}
		})
	}
	// Ethernet source not its own, on an IPv4 datagram
	t.Run("datagram with another pod's MAC", func(t *testing.T) {
		id, m := tag("spoofed-mac"), tag("marker")
		hostile := udpFrame(t, wl.MAC, vl.MAC, netip.AddrPortFrom(a.Addr, 9), netip.AddrPortFrom(v.Addr, 9), id)
		marker := udpFrame(t, al.MAC, vl.MAC, netip.AddrPortFrom(a.Addr, 9), netip.AddrPortFrom(v.Addr, 9), m)
		at := listen(t, vl, false)
		e.verdict(t, "a datagram with another pod's MAC", through(t, al, at, hostile, has(id), marker, has(m)), true)
		// the bridge learnt w's MAC on a's port without Moat: w's next frame teaches it back
		send(t, wl, udpFrame(t, wl.MAC, vl.MAC, netip.AddrPortFrom(w.Addr, 9), netip.AddrPortFrom(v.Addr, 9), tag("relearn")))
	})
	// a normal exchange still works
	t.Run("pods still reach each other", func(t *testing.T) {
		forget(t, a.Net, v.Addr)
		forget(t, a.Net, v.Addr6)
		for _, to := range []netip.Addr{v.Addr, v.Addr6} {
			testutil.Listen(t, v.Net, netip.AddrPortFrom(to, 8080).String())
			if err := a.Connect(netip.AddrPortFrom(to, 8080).String(), 3*time.Second); err != nil {
				t.Errorf("connect %s -> %s: %v", a.Addr, to, err)
			}
		}
	})
}

// multicastMAC is the Ethernet group address of an IPv6 multicast group.
func multicastMAC(g netip.Addr) net.HardwareAddr {
	b := g.As16()
	return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
}

// solicitedNode is the solicited-node group of an address.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	g := netip.MustParseAddr("ff02::1:ff00:0").As16()
	copy(g[13:], b[13:])
	return netip.AddrFrom16(g)
}

var (
	allNodes   = netip.MustParseAddr("ff02::1")
	allRouters = netip.MustParseAddr("ff02::2")
)

// ndFrame is a neighbour discovery message (hop limit 255) with optional bytes after it.
func ndFrame(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, msg gopacket.SerializableLayer, msgType uint8, trailing []byte) []byte {
	t.Helper()
	l3 := ipv6(src, dst, layers.IPProtocolICMPv6)
	l3.HopLimit = 255
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(msgType, 0)}
	_ = icmp.SetNetworkLayerForChecksum(l3)
	ls := []gopacket.SerializableLayer{eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), l3, icmp, msg}
	if len(trailing) > 0 {
		ls = append(ls, gopacket.Payload(trailing))
	}
	return build(t, ls...)
}

// mldReport is an MLDv1 report for group, sent to dst, with hop limit 1 and the router alert option.
func mldReport(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst, group netip.Addr, trailing []byte) []byte {
	t.Helper()
	// router alert (MLD), then a PadN of two to fill the header's 8 bytes (gopacket's own padding gets it wrong)
	hbh := &layers.IPv6HopByHop{Options: []*layers.IPv6HopByHopOption{{OptionType: 5, OptionData: []byte{0, 0}}, {OptionType: 1, OptionData: []byte{}}}}
	hbh.NextHeader = layers.IPProtocolICMPv6
	l3 := ipv6(src, dst, layers.IPProtocolIPv6HopByHop)
	l3.HopLimit = 1
	l3.HopByHop = hbh
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeMLDv1MulticastListenerReportMessage, 0)}
	_ = icmp.SetNetworkLayerForChecksum(l3)
	ls := []gopacket.SerializableLayer{eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), l3, icmp,
		&layers.MLDv1MulticastListenerReportMessage{MLDv1Message: layers.MLDv1Message{MulticastAddress: ip(group)}}}
	if len(trailing) > 0 {
		ls = append(ls, gopacket.Payload(trailing))
	}
	return build(t, ls...)
}

func lladdr(typ layers.ICMPv6Opt, mac net.HardwareAddr) layers.ICMPv6Options {
	return layers.ICMPv6Options{{Type: typ, Data: mac}}
}

// neighborDiscovery: a pod's ND and MLD speak only for itself and towards its link: no advertisement for another
// address or with another MAC, no router advertisement or redirect, no data riding after the options, no
// solicitation or report to another pod's unicast address. Normal ND passes.
func neighborDiscovery(t *testing.T, e *env) {
	e.apply(t, "neigh.yaml", "")
	a, v, w := e.pods["neigh-a"], e.pods["neigh-v"], e.pods["neigh-w"]
	al, vl := eth0(t, a), eth0(t, v)
	gw6 := simnode.PodSubnet6.Addr().Next()
	fake := fakeMAC()
	junk := tag("riding-after-the-options")
	group := netip.MustParseAddr("ff02::1:ff00:beef")
	na := func(target netip.Addr, mac net.HardwareAddr) *layers.ICMPv6NeighborAdvertisement {
		return &layers.ICMPv6NeighborAdvertisement{Flags: 0x20, TargetAddress: ip(target), Options: lladdr(layers.ICMPv6OptTargetAddress, mac)}
	}
	ns := func(target netip.Addr) *layers.ICMPv6NeighborSolicitation {
		return &layers.ICMPv6NeighborSolicitation{TargetAddress: ip(target), Options: lladdr(layers.ICMPv6OptSourceAddress, al.MAC)}
	}
	rs := &layers.ICMPv6RouterSolicitation{Options: lladdr(layers.ICMPv6OptSourceAddress, al.MAC)}
	for _, c := range []struct {
		name    string
		frame   []byte
		poison  netip.Addr // the victim's cache entry the frame rewrites without Moat
		to      net.HardwareAddr
		blocked bool
	}{
		{"NA for the gateway's address", ndFrame(t, al.MAC, vl.MAC, a.Addr6, v.Addr6, na(gw6, al.MAC), layers.ICMPv6TypeNeighborAdvertisement, nil), gw6, al.MAC, true},
		{"NA for another pod's address", ndFrame(t, al.MAC, vl.MAC, a.Addr6, v.Addr6, na(w.Addr6, al.MAC), layers.ICMPv6TypeNeighborAdvertisement, nil), w.Addr6, al.MAC, true},
		{"NA for its own address with another MAC", ndFrame(t, al.MAC, vl.MAC, a.Addr6, v.Addr6, na(a.Addr6, fake), layers.ICMPv6TypeNeighborAdvertisement, nil), a.Addr6, fake, true},
		{"router advertisement", ndFrame(t, al.MAC, multicastMAC(allNodes), al.LL, allNodes, &layers.ICMPv6RouterAdvertisement{HopLimit: 64, RouterLifetime: 1800,
			Options: lladdr(layers.ICMPv6OptSourceAddress, al.MAC)}, layers.ICMPv6TypeRouterAdvertisement, nil), netip.Addr{}, nil, true},
		{"redirect", ndFrame(t, al.MAC, vl.MAC, al.LL, v.Addr6, &layers.ICMPv6Redirect{TargetAddress: ip(al.LL), DestinationAddress: ip(simnode.WorldAddr6(1)),
			Options: lladdr(layers.ICMPv6OptTargetAddress, al.MAC)}, layers.ICMPv6TypeRedirect, nil), netip.Addr{}, nil, true},
		{"NS with data after its options", ndFrame(t, al.MAC, multicastMAC(solicitedNode(v.Addr6)), a.Addr6, solicitedNode(v.Addr6), ns(v.Addr6),
			layers.ICMPv6TypeNeighborSolicitation, junk), netip.Addr{}, nil, true},
		{"RS with data after its options", ndFrame(t, al.MAC, multicastMAC(allRouters), al.LL, allRouters, rs, layers.ICMPv6TypeRouterSolicitation, junk), netip.Addr{}, nil, true},
		{"MLD report with data after it", mldReport(t, al.MAC, multicastMAC(group), al.LL, group, group, junk), netip.Addr{}, nil, true},
		{"NS to another pod's address for a third", ndFrame(t, al.MAC, vl.MAC, a.Addr6, v.Addr6, ns(w.Addr6), layers.ICMPv6TypeNeighborSolicitation, nil), netip.Addr{}, nil, true},
		{"RS to another pod's address", ndFrame(t, al.MAC, vl.MAC, al.LL, v.Addr6, rs, layers.ICMPv6TypeRouterSolicitation, nil), netip.Addr{}, nil, true},
		{"MLD report to another pod's address", mldReport(t, al.MAC, vl.MAC, al.LL, v.Addr6, group, nil), netip.Addr{}, nil, true},
		// what a pod's stack sends
		{"NS to the target's group", ndFrame(t, al.MAC, multicastMAC(solicitedNode(v.Addr6)), a.Addr6, solicitedNode(v.Addr6), ns(v.Addr6),
			layers.ICMPv6TypeNeighborSolicitation, nil), netip.Addr{}, nil, false},
		{"NS to its target (unreachability detection)", ndFrame(t, al.MAC, vl.MAC, a.Addr6, v.Addr6, ns(v.Addr6), layers.ICMPv6TypeNeighborSolicitation, nil), netip.Addr{}, nil, false},
		{"NA for its own address", ndFrame(t, al.MAC, multicastMAC(allNodes), a.Addr6, allNodes, na(a.Addr6, al.MAC), layers.ICMPv6TypeNeighborAdvertisement, nil), netip.Addr{}, nil, false},
		{"RS to all routers", ndFrame(t, al.MAC, multicastMAC(allRouters), al.LL, allRouters, rs, layers.ICMPv6TypeRouterSolicitation, nil), netip.Addr{}, nil, false},
		{"MLD report to its group", mldReport(t, al.MAC, multicastMAC(group), al.LL, group, group, nil), netip.Addr{}, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame := c.frame
			if c.poison.IsValid() {
				// Linux takes an unsolicited advertisement only for an entry it has
				learn(t, v.Net, c.poison)
				t.Cleanup(func() { forget(t, v.Net, c.poison) })
			}
			at := listen(t, vl, false)
			m := tag("marker")
			marker := udpFrame(t, al.MAC, vl.MAC, netip.AddrPortFrom(a.Addr6, 9), netip.AddrPortFrom(v.Addr6, 9), m)
			e.verdict(t, c.name, through(t, al, at, frame, same(frame), marker, has(m)), c.blocked)
			if c.poison.IsValid() {
				got := neighbor(t, v.Net, c.poison)
				poisoned := bytes.Equal(got, c.to)
				switch {
				case !e.moat && !poisoned:
					t.Errorf("without Moat the victim's entry for %s is %v, not the attacker's %v: no attack", c.poison, got, c.to)
				case e.moat && poisoned:
					t.Errorf("the victim's neighbour cache says %s is at %v", c.poison, got)
				}
			}
		})
	}
}

// toPodWrongAddress: a frame sent to a pod's MAC whose IP destination is not the pod's (a world address,
// another pod's) carries data the pod's policy never judged; it must not be delivered.
func toPodWrongAddress(t *testing.T, e *env) {
	e.apply(t, "neigh.yaml", "")
	a, v, w := e.pods["neigh-a"], e.pods["neigh-v"], e.pods["neigh-w"]
	al, vl := eth0(t, a), eth0(t, v)
	for _, c := range []struct {
		name     string
		src, dst netip.Addr
	}{
		{"a world address", a.Addr, netip.MustParseAddr("198.51.100.9")},
		{"another pod's address", a.Addr, w.Addr},
		{"a world IPv6 address", a.Addr6, netip.MustParseAddr("2001:db8:113::9")},
		{"another pod's IPv6 address", a.Addr6, w.Addr6},
	} {
		t.Run(c.name, func(t *testing.T) {
			vAddr := v.Addr
			if c.src.Is6() {
				vAddr = v.Addr6
			}
			id, m := tag("wrong-address"), tag("marker")
			hostile := udpFrame(t, al.MAC, vl.MAC, netip.AddrPortFrom(c.src, 9), netip.AddrPortFrom(c.dst, 9), id)
			marker := udpFrame(t, al.MAC, vl.MAC, netip.AddrPortFrom(c.src, 9), netip.AddrPortFrom(vAddr, 9), m)
			at := listen(t, vl, false)
			e.verdict(t, "to the victim's MAC, addressed to "+c.name, through(t, al, at, hostile, has(id), marker, has(m)), true)
		})
	}
}
