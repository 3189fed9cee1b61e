package node

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// The cluster's network. Each node lives in a network namespace of its own with two links: a management link to
// the host, where the control plane listens, and eth0 on the datacenter network, a bridge in a namespace of its
// own that joins the nodes and the stand-in Internet. Each node's pod ranges are routed to it over the datacenter
// network (host-gw style: no tunnel, no NAT), and the nodes' default route is the Internet: nothing a node sends
// can reach the host's own uplink.
var (
	HostAddr = netip.MustParseAddr("10.123.0.1") // the host on the management network: the apiserver
	mgmtNet  = netip.MustParsePrefix("10.123.0.0/24")
	dcNet    = netip.MustParsePrefix("10.123.2.0/24")
	dcNet6   = netip.MustParsePrefix("fd00:123:2::/64")
	// the Internet's side of the datacenter network: the nodes' default gateway
	inetV4 = netip.MustParseAddr("10.123.2.254")
	inetV6 = netip.MustParseAddr("fd00:123:2::fe")
	// ClusterCIDR holds every node's IPv4 pod range (kube-proxy's clusterCIDR)
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// World is what the stand-in Internet answers on: documentation ranges and the metadata API addresses.
	World = []netip.Addr{
		netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"),
		netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"),
	}
	// InternetDNS is the stand-in Internet's authoritative DNS server (the e2e suite's), which the cluster DNS
	// forwards to: not in World, so the echo servers leave its port 53 to it.
	InternetDNS = netip.MustParseAddr("203.0.113.53")
	MetadataV4  = netip.MustParseAddr("169.254.169.254")
	MetadataV6  = netip.MustParseAddr("fd00:ec2::254")
	// WorldPorts are the TCP ports the Internet's servers listen on (and UDP 53).
	WorldPorts = []uint16{80, 443, 8080, 8443, 9000, 9001, 9002}
)

// Names of what the harness makes on the host.
const (
	InternetNS   = "moat-e2e-inet"
	DatacenterNS = "moat-e2e-dc" // the datacenter network's switch: bridge dc0
	mgmtBridge   = "moat-e2e0"   // the host's end of the management network
	mgmtNode     = "mgmt0"       // a node's end of it
	dcNode       = "eth0"        // a node's link to the datacenter network
	dcBridge     = "dc0"
	uplinkName   = "uplink0" // the Internet's link to the datacenter network
	maxNodes     = 8
)

// nodeName is the i-th node's name: moat-e2e-a, moat-e2e-b, ... It names its network namespace, its mount
// namespace, its cgroup and its Node object.
func nodeName(i int) string { return fmt.Sprintf("moat-e2e-%c", 'a'+i) }

// addresses fills in the i-th node's addresses.
func (n *Node) addresses(i int) {
	n.Name = nodeName(i)
	n.MgmtIP = netip.AddrFrom4([4]byte{10, 123, 0, byte(2 + i)})
	n.IP = netip.AddrFrom4([4]byte{10, 123, 2, byte(1 + i)})
	v6 := dcNet6.Addr().As16()
	v6[15] = byte(1 + i)
	n.IPv6 = netip.AddrFrom16(v6)
	n.PodCIDR = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
	p6 := netip.MustParseAddr("fd00:244::").As16()
	p6[5] = byte(i) // fd00:244::/64, fd00:244:1::/64, ...
	n.PodCIDRv6 = netip.PrefixFrom(netip.AddrFrom16(p6), 64)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func inNS(ns string, args ...string) error { return ip(append([]string{"-n", ns}, args...)...) }

func inNSAll(ns string, steps [][]string) error {
	for _, s := range steps {
		if err := inNS(ns, s...); err != nil {
			return err
		}
	}
	return nil
}

func host(a netip.Addr, bits int) string { return netip.PrefixFrom(a, bits).String() }

// wire makes the namespaces and links of the nodes. Every step is undone by unwire, which tolerates a half-made
// state.
func wire(nodes []*Node) error {
	names := []string{DatacenterNS, InternetNS}
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	for _, ns := range names {
		if err := ip("netns", "add", ns); err != nil {
			return err
		}
	}
	// the management network: a bridge on the host, one veth a node
	steps := [][]string{
		{"link", "add", mgmtBridge, "type", "bridge"},
		{"addr", "add", host(HostAddr, mgmtNet.Bits()), "dev", mgmtBridge},
		{"link", "set", mgmtBridge, "up"},
	}
	for _, n := range nodes {
		steps = append(steps,
			[]string{"link", "add", n.Name, "type", "veth", "peer", "name", mgmtNode, "netns", n.Name},
			[]string{"link", "set", n.Name, "master", mgmtBridge, "up"},
			// the apiserver reaches the kubelet at the node's address, and the pods' replies to it come back,
			// over the management network
			[]string{"route", "add", host(n.IP, 32), "via", n.MgmtIP.String(), "dev", mgmtBridge},
			[]string{"route", "add", n.PodCIDR.String(), "via", n.MgmtIP.String(), "dev", mgmtBridge})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	// the datacenter network: a bridge in its own namespace, one veth a node and one to the Internet
	dc := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", dcBridge, "type", "bridge"},
		{"link", "set", dcBridge, "up"},
		{"link", "add", "inet", "type", "veth", "peer", "name", uplinkName, "netns", InternetNS},
		{"link", "set", "inet", "master", dcBridge, "up"},
	}
	for _, n := range nodes {
		dc = append(dc, []string{"link", "add", n.Name, "type", "veth", "peer", "name", dcNode, "netns", n.Name},
			[]string{"link", "set", n.Name, "master", dcBridge, "up"})
	}
	if err := inNSAll(DatacenterNS, dc); err != nil {
		return err
	}
	for _, n := range nodes {
		steps := [][]string{
			{"link", "set", "lo", "up"},
			{"addr", "add", host(n.MgmtIP, mgmtNet.Bits()), "dev", mgmtNode},
			{"link", "set", mgmtNode, "up"},
			{"addr", "add", host(n.IP, dcNet.Bits()), "dev", dcNode},
			{"-6", "addr", "add", host(n.IPv6, dcNet6.Bits()), "dev", dcNode, "nodad"},
			{"link", "set", dcNode, "up"},
			// the Internet is the node's default route: nothing leaves through the host
			{"route", "add", "default", "via", inetV4.String(), "dev", dcNode},
			{"-6", "route", "add", "default", "via", inetV6.String(), "dev", dcNode},
		}
		for _, o := range nodes {
			if o != n {
				steps = append(steps, []string{"route", "add", o.PodCIDR.String(), "via", o.IP.String(), "dev", dcNode},
					[]string{"-6", "route", "add", o.PodCIDRv6.String(), "via", o.IPv6.String(), "dev", dcNode})
			}
		}
		if err := inNSAll(n.Name, steps); err != nil {
			return err
		}
		for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/all/forwarding", "1"}} {
			if err := nsSysctl(n.Name, kv[0], kv[1]); err != nil {
				return err
			}
		}
	}
	inet := [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", host(inetV4, dcNet.Bits()), "dev", uplinkName},
		{"-6", "addr", "add", host(inetV6, dcNet6.Bits()), "dev", uplinkName, "nodad"},
		{"link", "set", uplinkName, "up"},
	}
	for _, n := range nodes {
		inet = append(inet, []string{"route", "add", n.PodCIDR.String(), "via", n.IP.String()},
			[]string{"-6", "route", "add", n.PodCIDRv6.String(), "via", n.IPv6.String()})
	}
	for _, a := range append(append([]netip.Addr{}, World...), MetadataV4, MetadataV6, InternetDNS) {
		inet = append(inet, []string{"addr", "add", host(a, a.BitLen()), "dev", "lo"})
	}
	return inNSAll(InternetNS, inet)
}

// nsSysctl writes a per-namespace sysctl inside a named network namespace.
func nsSysctl(ns, key, value string) error {
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", fmt.Sprintf("echo %s > /proc/sys/%s", value, key)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %v: %s", key, value, ns, err, out)
	}
	return nil
}

// unwire removes the host's links (the management bridge and each node's veth to it: deleting a veth deletes its
// peer at once, where a namespace's links go only when the kernel gets round to freeing it, so a next run could
// find them) and the namespaces, whose links and routes go with them.
func unwire(nodes []string) error {
	var errs []string
	for _, link := range append(append([]string{}, nodes...), mgmtBridge) {
		if _, err := os.Stat("/sys/class/net/" + link); err == nil {
			if err := ip("link", "del", link); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	for _, ns := range append(append([]string{}, nodes...), DatacenterNS, InternetNS) {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if err := ip("netns", "del", ns); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("unwire: %s", strings.Join(errs, "; "))
	}
	return nil
}
