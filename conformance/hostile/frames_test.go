package hostile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// build serializes layers into one frame, with lengths and checksums filled in (transport checksums over the
// IP layer given to SetNetworkLayerForChecksum by the caller).
func build(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize %d layers: %v", len(ls), err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// made counts the tags and addresses the tests make up, so that each is one of a kind and every run makes the same.
var made atomic.Uint32

// tag is a payload no other packet carries, to recognise a crafted packet at its destination.
func tag(what string) []byte {
	return fmt.Appendf(nil, "moat-hostile:%s:%012x", what, made.Add(1))
}

// fakeMAC is a locally administered unicast address no interface has (02:6d:6f:..., "mo").
func fakeMAC() net.HardwareAddr {
	n := made.Add(1)
	return net.HardwareAddr{0x02, 0x6d, 0x6f, byte(n >> 16), byte(n >> 8), byte(n)}
}

func ip(a netip.Addr) net.IP { return a.AsSlice() }

// eth is an Ethernet header for an IPv4, IPv6 or ARP frame.
func eth(src, dst net.HardwareAddr, typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: typ}
}

func ipv4(src, dst netip.Addr, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: ip(src), DstIP: ip(dst)}
}

func ipv6(src, dst netip.Addr, next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: ip(src), DstIP: ip(dst)}
}

// udpFrame is a whole Ethernet frame carrying a UDP datagram between two addresses of one family.
func udpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	if src.Addr().Is4() {
		l3 := ipv4(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
		_ = udp.SetNetworkLayerForChecksum(l3)
		return build(t, eth(srcMAC, dstMAC, layers.EthernetTypeIPv4), l3, udp, gopacket.Payload(payload))
	}
	l3 := ipv6(src.Addr(), dst.Addr(), layers.IPProtocolUDP)
	_ = udp.SetNetworkLayerForChecksum(l3)
	return build(t, eth(srcMAC, dstMAC, layers.EthernetTypeIPv6), l3, udp, gopacket.Payload(payload))
}

// link is an interface in a namespace: the names and addresses a crafted frame needs.
type link struct {
	Net   ns.NetNS
	Name  string
	Index int
	MAC   net.HardwareAddr
	LL    netip.Addr // IPv6 link-local address, if any
}

func linkIn(t testing.TB, n ns.NetNS, name string) link {
	t.Helper()
	l := link{Net: n, Name: name}
	if err := n.Do(func(ns.NetNS) error {
		nl, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		l.Index, l.MAC = nl.Attrs().Index, nl.Attrs().HardwareAddr
		addrs, err := netlink.AddrList(nl, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if x, ok := netip.AddrFromSlice(a.IP); ok && x.IsLinkLocalUnicast() {
				l.LL = x
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// send writes frames on the link from inside its namespace, in order, from one thread held on one CPU: the
// kernel hands each frame through the veths, bridge and routing on that CPU's backlog before the next one, so
// a frame sent later cannot overtake an earlier one on a shared path.
func send(t testing.TB, l link, frames ...[]byte) {
	t.Helper()
	err := l.Net.Do(func(ns.NetNS) error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return err
		}
		for cpu := 0; cpu < 1024; cpu++ {
			if old.IsSet(cpu) {
				one.Set(cpu)
				break
			}
		}
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &old) //nolint:errcheck // best effort: the thread is locked and leaves with us
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for i, f := range frames {
			to := &unix.SockaddrLinklayer{Ifindex: l.Index, Halen: 6, Protocol: htons(binary.BigEndian.Uint16(f[12:14]))}
			copy(to.Addr[:], f[0:6])
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return fmt.Errorf("frame %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send %d frames on %s: %v", len(frames), l.Name, err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// capture is an AF_PACKET socket on one interface of a namespace: what arrives there (not what leaves).
type capture struct {
	fd       int
	outgoing bool
	where    string
}

// listen opens a capture on the link; with outgoing it sees what leaves the interface too. It closes when the
// test ends.
func listen(t testing.TB, l link, outgoing bool) *capture {
	t.Helper()
	c := &capture{fd: -1, outgoing: outgoing, where: l.Name}
	err := l.Net.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Index}); err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s: %v", l.Name, err)
	}
	t.Cleanup(func() { unix.Close(c.fd) })
	return c
}

// until reads frames until one satisfies stop, or the deadline passes (then ok is false); it returns every
// frame read, the stopping one last.
func (c *capture) until(stop func([]byte) bool, within time.Duration) (seen [][]byte, ok bool) {
	deadline := time.Now().Add(within)
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return seen, false
		}
		if ll, isLL := from.(*unix.SockaddrLinklayer); isLL && ll.Pkttype == unix.PACKET_OUTGOING && !c.outgoing {
			continue
		}
		f := append([]byte(nil), buf[:n]...)
		seen = append(seen, f)
		if stop(f) {
			return seen, true
		}
	}
	return seen, false
}

// has matches a frame that carries b anywhere.
func has(b []byte) func([]byte) bool {
	return func(f []byte) bool { return bytes.Contains(f, b) }
}

// any is true if one of the frames matches.
func anyOf(frames [][]byte, match func([]byte) bool) bool {
	for _, f := range frames {
		if match(f) {
			return true
		}
	}
	return false
}

// decode parses a frame from its Ethernet header.
func decode(f []byte) gopacket.Packet {
	return gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
}

// describe is a frame in one line, for failure messages.
func describe(f []byte) string {
	p := decode(f)
	var s []string
	for _, l := range p.Layers() {
		s = append(s, l.LayerType().String())
	}
	return fmt.Sprintf("%d bytes %v", len(f), s)
}
