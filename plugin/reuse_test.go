package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/moatfw/moat/bpf"
)

const (
	otherNamespace = "billing"
	otherIdentity  = 22
	reusedAddr     = "10.251.0.10"
)

// shimConflist is a bridge network whose IPAM is moat-ipam over host-local with a single address, so every pod
// gets the same one; with moat false, the chain lacks moat (a runtime that crashed before moat's DEL ran).
func (n *node) shimConflist(withMoat bool) *libcni.NetworkConfigList {
	n.t.Helper()
	moat := ""
	if withMoat {
		moat = fmt.Sprintf(`, {"type": "moat", "pinRoot": %q, "endpointDir": %q}`, n.pinRoot, filepath.Join(n.state, "endpoints"))
	}
	raw := fmt.Sprintf(`{
  "cniVersion": "1.1.0", "name": "moattest",
  "plugins": [
    {"type": "bridge", "bridge": "moatbr0", "isGateway": true,
     "ipam": {"type": "moat-ipam", "pinRoot": %q, "endpointDir": %q,
              "delegate": {"type": "host-local", "dataDir": %q,
                           "ranges": [[{"subnet": "10.251.0.0/24", "rangeStart": %q, "rangeEnd": %q}]]}}}%s
  ]}`, n.pinRoot, filepath.Join(n.state, "endpoints"), filepath.Join(n.state, "ipam"), reusedAddr, reusedAddr, moat)
	list, err := libcni.ConfListFromBytes([]byte(raw))
	if err != nil {
		n.t.Fatal(err)
	}
	return list
}

// IP reuse: pod A of one namespace has the address and goes; pod B of another namespace gets the same address.
// Whatever the order the runtime produces, B's traffic is decided as B's namespace's: its endpoint entry and the
// address's ipcache entry carry B's identity, and nothing of A is left.
func TestAddressReuseAcrossNamespaces(t *testing.T) {
	ctx := context.Background()
	orders := []struct {
		name string
		// between A's ADD and B's ADD
		release func(n *node, a *pod)
	}{
		{"A deleted through the whole chain", func(n *node, a *pod) {
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, n.shimConflist(true), a.rt) }); err != nil {
				t.Fatalf("DEL A: %v", err)
			}
		}},
		{"moat's DEL of A never ran, the IPAM's did", func(n *node, a *pod) {
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, n.shimConflist(false), a.rt) }); err != nil {
				t.Fatalf("DEL A without moat: %v", err)
			}
		}},
		{"the allocator freed A's address behind Moat's back", func(n *node, a *pod) {
			lease := filepath.Join(n.state, "ipam", "moattest", reusedAddr)
			if err := os.Remove(lease); err != nil {
				t.Fatalf("remove host-local's lease: %v", err)
			}
		}},
		{"B's ADD fails while A holds the address, then A goes", func(n *node, a *pod) {
			early := n.podIn(otherNamespace, "early")
			if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, n.shimConflist(true), early.rt); return err }); err == nil {
				t.Fatalf("a second pod got the only address while A holds it")
			}
			if recs, _ := n.store().List(""); len(recs) != 1 {
				t.Errorf("after the failed ADD: %d records, want A's alone", len(recs))
			}
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, n.shimConflist(true), a.rt) }); err != nil {
				t.Fatalf("DEL A: %v", err)
			}
		}},
	}
	for _, o := range orders {
		t.Run(o.name, func(t *testing.T) {
			n := newNode(t, true)
			t.Cleanup(func() { _ = n.inHost(deleteBridge) })
			if err := n.dp.SetNamespaceIdentity(otherNamespace, otherIdentity); err != nil {
				t.Fatal(err)
			}
			a, b := n.podIn(testNamespace, "a"), n.podIn(otherNamespace, "b")
			if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, n.shimConflist(true), a.rt); return err }); err != nil {
				t.Fatalf("ADD A: %v", err)
			}
			n.requireAddress(t, testIdentity)
			o.release(n, a)
			if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, n.shimConflist(true), b.rt); return err }); err != nil {
				t.Fatalf("ADD B: %v", err)
			}
			n.requireAddress(t, otherIdentity)
			recs, _ := n.store().List("")
			if len(recs) != 1 || recs[0].ContainerID != b.rt.ContainerID {
				t.Errorf("records after B's ADD: %d (%v), want B's alone", len(recs), recs)
			}
			if eps, _ := n.dp.Endpoints(); len(eps) != 1 {
				t.Errorf("%d endpoint entries, want B's alone", len(eps))
			}
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, n.shimConflist(true), b.rt) }); err != nil {
				t.Fatalf("DEL B: %v", err)
			}
			n.requireClean(t)
		})
	}
}

// requireAddress checks that the reused address is a pod of identity in the ipcache and in the endpoint that
// holds it.
func (n *node) requireAddress(t *testing.T, identity uint32) {
	t.Helper()
	var v bpf.IPCacheValue
	k := bpf.NewIPCacheKey(netip.MustParsePrefix(reusedAddr + "/32"))
	if err := n.dp.IPCacheMap().Lookup(&k, &v); err != nil || v.Identity != identity || bpf.Class(v.Class) != bpf.ClassPod {
		t.Errorf("ipcache of %s: %+v (%v), want a pod of identity %d", reusedAddr, v, err, identity)
	}
	eps, _ := n.dp.Endpoints()
	found := false
	for _, ep := range eps {
		for _, a := range ep.Addrs() {
			if a.String() == reusedAddr {
				found = true
				if ep.Identity != identity {
					t.Errorf("the endpoint holding %s carries identity %d, want %d", reusedAddr, ep.Identity, identity)
				}
			}
		}
	}
	if !found {
		t.Errorf("no endpoint holds %s", reusedAddr)
	}
}

// moat-ipam's own STATUS and GC pass through to the delegate; a config without a delegate is refused.
func TestIPAMShimDirect(t *testing.T) {
	n := newNode(t, true)
	shim := func(command, ipam string) (uint, string) {
		stdin := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "moattest", "type": "bridge", "ipam": %s,
			"cni.dev/valid-attachments": []}`, ipam)
		return n.runBinary(t, "moat-ipam", invocation{env: map[string]string{"CNI_COMMAND": command, "CNI_PATH": binDir}, stdin: stdin})
	}
	good := fmt.Sprintf(`{"type": "moat-ipam", "pinRoot": %q, "endpointDir": %q, "delegate": {"type": "host-local",
		"dataDir": %q, "ranges": [[{"subnet": "10.251.0.0/24"}]]}}`, n.pinRoot, filepath.Join(n.state, "endpoints"),
		filepath.Join(n.state, "ipam"))
	for _, cmd := range []string{"STATUS", "GC"} {
		if code, out := shim(cmd, good); code != 0 {
			t.Errorf("%s: code %d: %s", cmd, code, out)
		}
	}
	if code, _ := shim("STATUS", `{"type": "moat-ipam"}`); code != 7 {
		t.Errorf("STATUS without a delegate: code %d, want 7", code)
	}
	if code, _ := shim("STATUS", `{"type": "moat-ipam", "delegate": {"type": "moat-ipam"}}`); code != 7 {
		t.Errorf("a delegate of moat-ipam itself: code %d, want 7", code)
	}
}
