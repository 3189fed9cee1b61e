package hostfw

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

var (
	cpAddr     = netip.MustParseAddr("10.0.0.1")
	cpAddr6    = netip.MustParseAddr("fd00:250::1")
	workerAddr = netip.MustParseAddr("10.0.0.2")
	cluster    = []Node{
		{Name: "cp", Addresses: []netip.Addr{cpAddr, cpAddr6}, ControlPlane: true, KubeletPort: 10251},
		{Name: "worker", Addresses: []netip.Addr{workerAddr}},
	}
)

// entry finds the entry of a name whose description starts with what, or fails.
func entry(t *testing.T, entries []Entry, name v1alpha1.SafetyEntry, what string) Entry {
	t.Helper()
	for _, e := range entries {
		if e.Name == name && strings.HasPrefix(e.What, what) {
			return e
		}
	}
	t.Fatalf("no %s entry %q in %+v", name, what, entries)
	return Entry{}
}

func has(entries []Entry, name v1alpha1.SafetyEntry) bool {
	for _, e := range entries {
		if e.Name == name {
			return true
		}
	}
	return false
}

func sources(e Entry) string {
	var out []string
	for _, s := range e.Sources {
		out = append(out, s.Prefix.String())
	}
	return strings.Join(out, " ")
}

// A control-plane node keeps its API server on the port the kubernetes Service's endpoints say, open to the nodes
// and the admins only; etcd to the API servers and control-plane nodes (and itself); the scheduler and the
// controller manager to itself; the kubelet, on the port its Node status says, to the control plane, the nodes
// and the pod ranges; SSH to nodes and admins; and what a node needs to stay one. A worker has no control plane
// to keep open. Only the entries FirewallConfig lists as overrides may be taken over by a rule.
func TestDeriveControlPlaneAndWorker(t *testing.T) {
	cfg := &v1alpha1.HostFirewallConfig{AdminCIDRs: []string{"198.51.100.0/24"}, Overrides: []v1alpha1.SafetyEntry{v1alpha1.SafetyKubelet}}
	in := Input{Node: "cp", Nodes: cluster, APIServers: []netip.AddrPort{netip.AddrPortFrom(cpAddr, 16443)},
		PodRanges: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Config: cfg}
	entries, warnings := Derive(in)
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	for _, c := range []struct {
		name        v1alpha1.SafetyEntry
		what, ports string
		sources     string
		learned     string
		overridable bool
		from        []string // where some of the sources came from
	}{
		{v1alpha1.SafetyAPIServer, "the API server", "tcp/16443", "10.0.0.1/32 fd00:250::1/128 10.0.0.2/32 198.51.100.0/24", "kubernetes endpoints", false,
			[]string{"10.0.0.1/32 node cp", "fd00:250::1/128 node cp", "198.51.100.0/24 adminCIDRs"}},
		{v1alpha1.SafetyEtcd, "etcd's clients", "tcp/2379", "10.0.0.1/32 fd00:250::1/128 127.0.0.0/8 ::1/128", "default", false,
			[]string{"10.0.0.1/32 kubernetes endpoints", "fd00:250::1/128 control-plane node cp", "::1/128 loopback"}},
		{v1alpha1.SafetyEtcd, "etcd's peers", "tcp/2380", "10.0.0.1/32 fd00:250::1/128 127.0.0.0/8 ::1/128", "default", false, nil},
		{v1alpha1.SafetyScheduler, "the scheduler", "tcp/10259", "127.0.0.0/8 ::1/128 10.0.0.1/32 fd00:250::1/128", "default", false, nil},
		{v1alpha1.SafetyControllerManager, "the controller manager", "tcp/10257", "127.0.0.0/8 ::1/128 10.0.0.1/32 fd00:250::1/128", "default", false, nil},
		{v1alpha1.SafetyKubelet, "the kubelet", "tcp/10251", "10.0.0.1/32 fd00:250::1/128 10.0.0.2/32 10.244.0.0/16", "Node status", true, nil},
		{v1alpha1.SafetySSH, "SSH", "tcp/22", "10.0.0.1/32 fd00:250::1/128 10.0.0.2/32 198.51.100.0/24", "default", false, nil},
		{v1alpha1.SafetyNode, "VXLAN (flannel", "udp/8472", "10.0.0.1/32 fd00:250::1/128 10.0.0.2/32", "default", false, nil},
		{v1alpha1.SafetyNode, "DHCP replies", "udp/68", "0.0.0.0/0 ::/0", "default", false, nil},
		{v1alpha1.SafetyNode, "neighbour discovery", "icmpv6/133-137", "0.0.0.0/0 ::/0", "default", false, nil},
	} {
		e := entry(t, entries, c.name, c.what)
		if e.Ports() != c.ports || sources(e) != c.sources || e.Learned != c.learned || e.Overridable != c.overridable {
			t.Errorf("%s %s: %s from %s (learned: %s, overridable %t); want %s from %s (%s, %t)", c.name, c.what, e.Ports(),
				sources(e), e.Learned, e.Overridable, c.ports, c.sources, c.learned, c.overridable)
		}
		var from []string
		for _, src := range e.Sources {
			from = append(from, src.Prefix.String()+" "+src.From)
		}
		for _, f := range c.from {
			if !slices.Contains(from, f) {
				t.Errorf("%s %s: sources %q lack %q", c.name, c.what, from, f)
			}
		}
	}

	in.Node = "worker"
	entries, _ = Derive(in)
	for _, name := range []v1alpha1.SafetyEntry{v1alpha1.SafetyAPIServer, v1alpha1.SafetyEtcd, v1alpha1.SafetyScheduler, v1alpha1.SafetyControllerManager} {
		if has(entries, name) {
			t.Errorf("the worker keeps %s open", name)
		}
	}
	if e := entry(t, entries, v1alpha1.SafetyKubelet, "the kubelet"); e.Ports() != "tcp/10250" || e.Learned != "default" {
		t.Errorf("the worker's kubelet: %s (%s), want the default port", e.Ports(), e.Learned)
	}
}

// What FirewallConfig sets replaces what is learned: etcd's peers and the control plane's ports. Without
// adminCIDRs the API server and SSH answer everybody, and a warning says so; without the kubernetes Service's
// endpoints a control-plane node keeps the default port; a node not in the cluster's list is warned about.
func TestDeriveConfigAndGaps(t *testing.T) {
	port := func(n int32) *int32 { return &n }
	cfg := &v1alpha1.HostFirewallConfig{EtcdPeers: []string{"10.9.0.0/24"},
		Ports: &v1alpha1.ControlPlanePorts{EtcdClient: port(12379), Scheduler: port(20259)}}
	entries, warnings := Derive(Input{Node: "cp", Nodes: cluster, Config: cfg})
	if e := entry(t, entries, v1alpha1.SafetyEtcd, "etcd's clients"); e.Ports() != "tcp/12379" || e.Learned != "FirewallConfig" ||
		sources(e) != "10.9.0.0/24 127.0.0.0/8 ::1/128 10.0.0.1/32 fd00:250::1/128" {
		t.Errorf("etcd: %s from %s (%s)", e.Ports(), sources(e), e.Learned)
	}
	if e := entry(t, entries, v1alpha1.SafetyEtcd, "etcd's peers"); e.Ports() != "tcp/2380" || e.Learned != "default" {
		t.Errorf("etcd's peers, their port not set: %s (%s)", e.Ports(), e.Learned)
	}
	if e := entry(t, entries, v1alpha1.SafetyScheduler, "the scheduler"); e.Ports() != "tcp/20259" {
		t.Errorf("the scheduler: %s", e.Ports())
	}
	api := entry(t, entries, v1alpha1.SafetyAPIServer, "the API server")
	if api.Ports() != "tcp/6443" || api.Learned != "default" || !strings.Contains(sources(api), "0.0.0.0/0 ::/0") {
		t.Errorf("the API server with nothing learned: %s from %s (%s)", api.Ports(), sources(api), api.Learned)
	}
	if w := strings.Join(warnings, "\n"); !strings.Contains(w, "adminCIDRs is not set") || !strings.Contains(w, "no endpoints") {
		t.Errorf("warnings: %v", warnings)
	}
	if _, warnings := Derive(Input{Node: "elsewhere", Nodes: cluster}); !strings.Contains(strings.Join(warnings, "\n"), "elsewhere is not among") {
		t.Errorf("an unknown node: %v", warnings)
	}
}
