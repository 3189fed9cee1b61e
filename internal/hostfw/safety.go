// Package hostfw is the node's own firewall: what a node keeps open whatever its host policy says (the safety
// set), derived from the cluster and limited by source.
package hostfw

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// Node is what the safety set needs to know of a node.
type Node struct {
	Name         string
	Addresses    []netip.Addr
	ControlPlane bool   // labelled node-role.kubernetes.io/control-plane (or master)
	KubeletPort  uint16 // status.daemonEndpoints.kubeletEndpoint.Port; 0: the default
}

// Input is what a node's safety set is derived from.
type Input struct {
	Node  string // the node the set is for
	Nodes []Node // every node of the cluster, this one included
	// APIServers are the kubernetes Service's endpoints (default/kubernetes): where the API servers listen.
	APIServers []netip.AddrPort
	// PodRanges are the cluster's pod ranges (the kubelet's metrics scrapers run in pods).
	PodRanges []netip.Prefix
	Config    *v1alpha1.HostFirewallConfig // nil: the defaults
}

// Source is one range an entry accepts, and where it came from.
type Source struct {
	Prefix netip.Prefix
	From   string // "node moat-e2e-b", "adminCIDRs", "kubernetes endpoints", "loopback", "pod range", ...
}

// Entry is one entry of the safety set: a protocol and port range, and who may reach it.
type Entry struct {
	Name     v1alpha1.SafetyEntry
	What     string // the service, in words
	Protocol string // tcp, udp, icmpv6
	First    uint16 // ports (ICMPv6: types)
	Last     uint16
	Sources  []Source
	// Overridable: FirewallConfig lists the entry in hostFirewall.overrides, so a host rule naming the port takes
	// it over.
	Overridable bool
	// Learned says where the port came from ("kubernetes endpoints", "Node status", "default", "FirewallConfig").
	Learned string
}

// Ports is the entry's ports as a table shows them.
func (e Entry) Ports() string {
	if e.First == e.Last {
		return fmt.Sprintf("%s/%d", e.Protocol, e.First)
	}
	return fmt.Sprintf("%s/%d-%d", e.Protocol, e.First, e.Last)
}

var (
	anywhere  = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	loopback  = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	linkLocal = netip.MustParsePrefix("fe80::/10")
)

// Derive is the safety set of in.Node: always in force on a node a host policy selects, before any host rule.
// Entries of the control plane are on the nodes that run it: the API server where an endpoint of the kubernetes
// Service is one of the node's addresses, etcd, the scheduler and the controller manager there and on nodes
// labelled as control plane. Warnings say what is wide open or could not be learned.
func Derive(in Input) (entries []Entry, warnings []string) {
	cfg := in.Config
	if cfg == nil {
		cfg = &v1alpha1.HostFirewallConfig{}
	}
	var self *Node
	for i := range in.Nodes {
		if in.Nodes[i].Name == in.Node {
			self = &in.Nodes[i]
		}
	}
	if self == nil {
		self = &Node{Name: in.Node}
		warnings = append(warnings, fmt.Sprintf("node %s is not among the cluster's nodes: its own addresses are not known", in.Node))
	}
	overridable := func(e v1alpha1.SafetyEntry) bool { return slices.Contains(cfg.Overrides, e) }

	var nodes, controlPlane, apiServers []Source
	for _, n := range in.Nodes {
		for _, a := range n.Addresses {
			s := Source{netip.PrefixFrom(a, a.BitLen()), "node " + n.Name}
			nodes = append(nodes, s)
			if n.ControlPlane {
				controlPlane = append(controlPlane, Source{s.Prefix, "control-plane node " + n.Name})
			}
		}
	}
	apiPort, onThisNode := uint16(0), false
	for _, ap := range in.APIServers {
		a := ap.Addr().Unmap()
		apiServers = append(apiServers, Source{netip.PrefixFrom(a, a.BitLen()), "kubernetes endpoints"})
		if slices.Contains(self.Addresses, a) {
			onThisNode, apiPort = true, ap.Port()
		}
	}
	if apiPort == 0 && len(in.APIServers) > 0 {
		apiPort = in.APIServers[0].Port()
	}
	apiLearned := "kubernetes endpoints"
	if apiPort == 0 {
		apiPort, apiLearned = v1alpha1.DefaultAPIServerPort, "default"
		warnings = append(warnings, "the kubernetes Service has no endpoints: the API server's port is taken as 6443")
	}
	admins := cidrSources(cfg.AdminCIDRs, "adminCIDRs")
	if len(cfg.AdminCIDRs) == 0 {
		admins = nil
		for _, p := range anywhere {
			admins = append(admins, Source{p, "anywhere: hostFirewall.adminCIDRs not set"})
		}
		warnings = append(warnings, "hostFirewall.adminCIDRs is not set: the API server and SSH answer every address")
	}
	local := loopbackAndSelf(self)
	controlPlaneNode := self.ControlPlane || onThisNode

	// with no endpoints known, a control-plane node keeps the default port open: never a lockout for want of data
	if onThisNode || (len(in.APIServers) == 0 && self.ControlPlane) {
		entries = append(entries, Entry{Name: v1alpha1.SafetyAPIServer, What: "the API server", Protocol: "tcp",
			First: apiPort, Last: apiPort, Sources: join(nodes, admins), Learned: apiLearned})
	}
	if controlPlaneNode {
		var ports v1alpha1.ControlPlanePorts
		if cfg.Ports != nil {
			ports = *cfg.Ports
		}
		etcd := join(apiServers, controlPlane)
		if len(cfg.EtcdPeers) > 0 {
			etcd = cidrSources(cfg.EtcdPeers, "hostFirewall.etcdPeers")
		}
		etcd = join(etcd, local)
		for _, c := range []struct {
			port *int32
			def  uint16
			name v1alpha1.SafetyEntry
			what string
		}{
			{ports.EtcdClient, v1alpha1.DefaultEtcdClientPort, v1alpha1.SafetyEtcd, "etcd's clients"},
			{ports.EtcdPeer, v1alpha1.DefaultEtcdPeerPort, v1alpha1.SafetyEtcd, "etcd's peers"},
			{ports.Scheduler, v1alpha1.DefaultSchedulerPort, v1alpha1.SafetyScheduler, "the scheduler"},
			{ports.ControllerManager, v1alpha1.DefaultControllerManagerPort, v1alpha1.SafetyControllerManager, "the controller manager"},
		} {
			port, learned := c.def, "default"
			if c.port != nil && *c.port > 0 && *c.port <= 65535 {
				port, learned = uint16(*c.port), "FirewallConfig"
			}
			sources := local // the scheduler and the controller manager: the node itself only
			if c.name == v1alpha1.SafetyEtcd {
				sources = etcd
			}
			entries = append(entries, Entry{Name: c.name, What: c.what, Protocol: "tcp", First: port, Last: port,
				Sources: sources, Learned: learned})
		}
	}
	kubelet, kubeletLearned := self.KubeletPort, "Node status"
	if kubelet == 0 {
		kubelet, kubeletLearned = v1alpha1.DefaultKubeletPort, "default"
	}
	entries = append(entries, Entry{Name: v1alpha1.SafetyKubelet, What: "the kubelet", Protocol: "tcp", First: kubelet,
		Last: kubelet, Sources: join(apiServers, controlPlane, nodes, prefixSources(in.PodRanges, "pod range")),
		Learned: kubeletLearned})
	entries = append(entries, Entry{Name: v1alpha1.SafetySSH, What: "SSH", Protocol: "tcp", First: 22, Last: 22,
		Sources: join(nodes, admins), Learned: "default"})

	// what the node needs to stay a node
	everywhere := prefixSources(anywhere, "anywhere")
	entries = append(entries,
		Entry{Name: v1alpha1.SafetyNode, What: "DHCP replies", Protocol: "udp", First: 68, Last: 68, Sources: everywhere, Learned: "default"},
		Entry{Name: v1alpha1.SafetyNode, What: "DHCPv6 replies", Protocol: "udp", First: 546, Last: 546,
			Sources: []Source{{linkLocal, "link-local"}}, Learned: "default"},
		Entry{Name: v1alpha1.SafetyNode, What: "neighbour discovery and router advertisements", Protocol: "icmpv6",
			First: 133, Last: 137, Sources: everywhere, Learned: "default"})
	for _, t := range []struct {
		proto       string
		first, last uint16
		what        string
	}{
		{"udp", 8472, 8472, "VXLAN (flannel, Cilium)"},
		{"udp", 4789, 4789, "VXLAN (Calico, standard)"},
		{"udp", 6081, 6081, "Geneve"},
		{"tcp", 179, 179, "BGP"},
		{"udp", 51820, 51821, "WireGuard (Calico)"},
		{"udp", 51871, 51871, "WireGuard (Cilium)"},
	} {
		entries = append(entries, Entry{Name: v1alpha1.SafetyNode, What: t.what + " between nodes", Protocol: t.proto,
			First: t.first, Last: t.last, Sources: nodes, Learned: "default"})
	}
	for i := range entries {
		entries[i].Overridable = overridable(entries[i].Name)
	}
	return entries, warnings
}

// loopbackAndSelf is loopback and the node's own addresses.
func loopbackAndSelf(n *Node) []Source {
	out := prefixSources(loopback, "loopback")
	for _, a := range n.Addresses {
		out = append(out, Source{netip.PrefixFrom(a, a.BitLen()), "this node"})
	}
	return out
}

// prefixSources turns prefixes into sources.
func prefixSources(list []netip.Prefix, from string) []Source {
	out := make([]Source, 0, len(list))
	for _, p := range list {
		out = append(out, Source{p.Masked(), from})
	}
	return out
}

// cidrSources turns the CIDRs FirewallConfig holds (validation checked them) into sources.
func cidrSources(list []string, from string) []Source {
	var out []Source
	for _, s := range list {
		if p, err := v1alpha1.ParseCIDR(s); err == nil {
			out = append(out, Source{p.Masked(), from})
		}
	}
	return out
}

// join is the sources of every list, each prefix once (the first list that names it says where it came from).
func join(lists ...[]Source) []Source {
	var out []Source
	seen := map[netip.Prefix]bool{}
	for _, l := range lists {
		for _, s := range l {
			if !seen[s.Prefix] {
				seen[s.Prefix] = true
				out = append(out, s)
			}
		}
	}
	return out
}
