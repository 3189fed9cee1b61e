package main

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/testutil"
)

// Churn: 1,000 ADD/DEL cycles of moat on one pod interface leave no endpoint entry, ipcache entry, record, pin,
// tcx link or qdisc behind. Moat alone runs (the veth stays), so the cycles measure Moat's own bookkeeping.
func TestChurnLeavesNothing(t *testing.T) {
	cycles := 1000
	if testing.Short() {
		cycles = 100
	}
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")}, nil)
	n := newNodeIn(t, pl.Host, true)
	before := n.ipcacheEntries(t)
	stdin := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "moattest", "type": "moat", "pinRoot": %q, "endpointDir": %q,
		"prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": %q}],
		"ips": [{"address": "10.250.0.2/24", "interface": 0}]}}`, n.pinRoot, filepath.Join(n.state, "endpoints"), pl.Pod.Path())
	for i := 0; i < cycles; i++ {
		for _, cmd := range []string{"ADD", "DEL"} {
			env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": fmt.Sprintf("churn-%d", i),
				"CNI_NETNS": pl.Pod.Path(), "CNI_IFNAME": "eth0", "CNI_PATH": binDir,
				"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + testNamespace + ";K8S_POD_NAME=churn"}
			if code, out := n.run(t, invocation{env: env, stdin: stdin}); code != 0 {
				t.Fatalf("cycle %d %s: code %d: %s", i, cmd, code, out)
			}
		}
	}
	n.requireClean(t)
	if after := n.ipcacheEntries(t); after != before {
		t.Errorf("ipcache entries %d -> %d", before, after)
	}
	n.requireNoLinks(t, pl.HostIfindex)
}

// requireNoLinks fails when tcx programs or a clsact qdisc are left on a host veth of the node.
func (n *node) requireNoLinks(t *testing.T, ifindex int) {
	t.Helper()
	err := n.host.Do(func(ns.NetNS) error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			if len(q.Programs) != 0 {
				t.Errorf("%d tcx programs still on the host veth (%v)", len(q.Programs), at)
			}
		}
		l, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return nil // gone, and everything on it
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Type() == "clsact" {
				t.Errorf("a clsact qdisc is left on the host veth")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
