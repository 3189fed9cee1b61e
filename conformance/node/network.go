package node

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// The node's addresses. The node lives in a network namespace of its own, with a management link to the host
// (where the control plane listens) and an uplink to a stand-in Internet; nothing it sends can reach the host's
// own uplink.
var (
	HostAddr  = netip.MustParseAddr("10.123.0.1") // the host side of the management link: the apiserver
	NodeIP    = netip.MustParseAddr("10.123.0.2") // the node's address (kubelet --node-ip)
	uplinkV4  = netip.MustParsePrefix("10.123.1.1/30")
	inetV4    = netip.MustParsePrefix("10.123.1.2/30")
	uplinkV6  = netip.MustParsePrefix("fd00:123:1::1/64")
	inetV6    = netip.MustParsePrefix("fd00:123:1::2/64")
	PodCIDR   = netip.MustParsePrefix("10.244.0.0/24")
	PodCIDRv6 = netip.MustParsePrefix("fd00:244::/64")
	// World is what the stand-in Internet answers on: documentation ranges and the metadata API addresses.
	World = []netip.Addr{
		netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"),
		netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"),
	}
	MetadataV4 = netip.MustParseAddr("169.254.169.254")
	MetadataV6 = netip.MustParseAddr("fd00:ec2::254")
	// WorldPorts are the TCP ports the Internet's servers listen on (and UDP 53).
	WorldPorts = []uint16{80, 443, 8080, 8443, 9000, 9001, 9002}
)

// Names of what the harness makes on the host.
const (
	NodeNS     = "moat-e2e-node"
	InternetNS = "moat-e2e-inet"
	mgmtHost   = "moat-e2e0" // the host's end of the management link
	mgmtNode   = "mgmt0"
	uplinkName = "uplink0"
	NodeName   = "moat-e2e-node"
)

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func inNS(ns string, args ...string) error { return ip(append([]string{"-n", ns}, args...)...) }

// wire makes the namespaces and links. Every step is undone by unwire, which tolerates a half-made state.
func wire() error {
	for _, ns := range []string{NodeNS, InternetNS} {
		if err := ip("netns", "add", ns); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"link", "add", mgmtHost, "type", "veth", "peer", "name", mgmtNode, "netns", NodeNS},
		{"addr", "add", HostAddr.String() + "/30", "dev", mgmtHost},
		{"link", "set", mgmtHost, "up"},
		// the pods' replies to the apiserver come back over the management link
		{"route", "add", PodCIDR.String(), "via", NodeIP.String(), "dev", mgmtHost},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	node := [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", NodeIP.String() + "/30", "dev", mgmtNode},
		{"link", "set", mgmtNode, "up"},
		{"link", "add", uplinkName, "type", "veth", "peer", "name", uplinkName, "netns", InternetNS},
		{"addr", "add", uplinkV4.String(), "dev", uplinkName},
		{"-6", "addr", "add", uplinkV6.String(), "dev", uplinkName, "nodad"},
		{"link", "set", uplinkName, "up"},
		// the Internet is the node's default route: nothing leaves through the host
		{"route", "add", "default", "via", inetV4.Addr().String(), "dev", uplinkName},
		{"-6", "route", "add", "default", "via", inetV6.Addr().String(), "dev", uplinkName},
	}
	for _, s := range node {
		if err := inNS(NodeNS, s...); err != nil {
			return err
		}
	}
	inet := [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", inetV4.String(), "dev", uplinkName},
		{"-6", "addr", "add", inetV6.String(), "dev", uplinkName, "nodad"},
		{"link", "set", uplinkName, "up"},
		{"route", "add", "10.123.0.0/24", "via", uplinkV4.Addr().String()},
		{"route", "add", PodCIDR.String(), "via", uplinkV4.Addr().String()},
		{"-6", "route", "add", PodCIDRv6.String(), "via", uplinkV6.Addr().String()},
	}
	for _, a := range append(append([]netip.Addr{}, World...), MetadataV4, MetadataV6) {
		inet = append(inet, []string{"addr", "add", netip.PrefixFrom(a, a.BitLen()).String(), "dev", "lo"})
	}
	for _, s := range inet {
		if err := inNS(InternetNS, s...); err != nil {
			return err
		}
	}
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/all/forwarding", "1"}} {
		if err := nsSysctl(NodeNS, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// nsSysctl writes a per-namespace sysctl inside a named namespace.
func nsSysctl(ns, key, value string) error {
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", fmt.Sprintf("echo %s > /proc/sys/%s", value, key)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %v: %s", key, value, ns, err, out)
	}
	return nil
}

// unwire removes the namespaces (their links and routes go with them) and the host's end of the management link.
func unwire() error {
	var errs []string
	if _, err := os.Stat("/sys/class/net/" + mgmtHost); err == nil {
		if err := ip("link", "del", mgmtHost); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, ns := range []string{NodeNS, InternetNS} {
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
