package simnode

import (
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// WorldAddr6 is the address the stand-in Internet answers on in a World6 prefix (its first host).
func WorldAddr6(i int) netip.Addr {
	p := World6[i]
	if p.Bits() == 128 {
		return p.Addr()
	}
	return p.Addr().Next()
}

// wire6 gives the link between the node and its Internet IPv6 addresses, routes World6 and the NAT64 prefix
// there and the pods' IPv6 subnet back, and turns on IPv6 forwarding in the host namespace. Duplicate address
// detection is off in the host namespace (the bridge's gateway address is usable at once) and on the uplink.
func (n *Node) wire6() error {
	if err := n.Host.Do(func(ns.NetNS) error {
		for _, f := range []string{"all/accept_dad", "default/accept_dad"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+f, []byte("0"), 0o644); err != nil {
				return err
			}
		}
		l, err := addr6(Uplink, uplinkHost6)
		if err != nil {
			return err
		}
		for _, p := range append(append([]netip.Prefix(nil), World6...), NAT64Prefix) {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(p), Gw: uplinkWorld6.Addr().AsSlice()}); err != nil {
				return err
			}
		}
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	}); err != nil {
		return err
	}
	return n.Internet.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		var addrs []netip.Addr
		for i := range World6 {
			addrs = append(addrs, WorldAddr6(i))
		}
		for i := range World {
			addrs = append(addrs, NAT64(WorldAddr(i)))
		}
		for _, a := range addrs {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(a, 128)), Flags: unix.IFA_F_NODAD}); err != nil {
				return err
			}
		}
		l, err := addr6(Uplink, uplinkWorld6)
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(PodSubnet6), Gw: uplinkHost6.Addr().AsSlice()})
	})
}

// addr6 adds an IPv6 address to a link with no duplicate address detection, so it is usable at once.
func addr6(name string, p netip.Prefix) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
	return l, netlink.AddrAdd(l, a)
}
