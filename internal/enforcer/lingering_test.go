package enforcer

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

// openDefaultsYAML leaves the cluster defaults open (world egress allowed), so a pod that fell back to identity 0
// would reach what its namespace's policy denies.
const openDefaultsYAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {defaultEgress: Allow}
`

const webNamespaceYAML = `apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {moat.dev/zone: web}}
`

// webPolicyYAML allows the given ports to 198.51.100.0/24 and denies the rest of it, for namespaces in zone web.
func webPolicyYAML(ports ...string) string {
	return policyYAML(ports...) + "  - action: Deny\n    to: [{cidr: 198.51.100.0/24}]\n"
}

// A namespace deleted under a running pod (its document removed from the policy folder): the pod keeps its
// identity and its namespace's policy, never the open cluster defaults; its identity is withdrawn at once, goes to
// no other namespace while the pod lives, comes back with its namespace, survives an enforcer restart, and is
// released once the pod is gone.
func TestDeletedNamespaceKeepsItsPodsIdentity(t *testing.T) {
	root, dp, e := newTestEnforcer(t)
	log := logrus.NewEntry(logrus.New())
	dir := t.TempDir()
	write(t, dir, "config.yaml", openDefaultsYAML)
	write(t, dir, "web.yaml", webNamespaceYAML)
	write(t, dir, "policy.yaml", webPolicyYAML("443"))
	folder := &Folder{Dir: dir, Log: log}
	store := endpoint.Store{Dir: t.TempDir()}

	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	for _, addr := range []string{"198.51.100.1:443", "198.51.100.1:80"} {
		testutil.Listen(t, pl.Host, addr)
	}
	reach := func(addr string) bool { return testutil.Exchange(pl.Pod, addr, time.Second) == nil }
	// what the enforcer does after every change of its source: apply, then reconcile the recorded endpoints
	sync := func(e *Enforcer) {
		t.Helper()
		s, err := folder.Load()
		if err != nil || len(s.Problems) > 0 {
			t.Fatalf("load the folder: %v %v", err, s.Problems)
		}
		if err := e.Apply(s); err != nil {
			t.Fatalf("apply: %v", err)
		}
		if err := pl.Host.Do(func(ns.NetNS) error { return e.Reconcile(store, root) }); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
	}
	sync(e)
	web := e.Identities()["web"]
	rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web", Pod: "client",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}}
	if err := pl.Host.Do(func(ns.NetNS) error { return guard(dp, rec, web, root) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pl.Host.Do(func(ns.NetNS) error { return forget(store, root, "c1") }) })
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	tagged := func() uint32 {
		t.Helper()
		ep, ok, err := dp.LookupEndpoint(uint32(pl.HostIfindex))
		if err != nil || !ok {
			t.Fatalf("the pod's endpoint entry: %v %v", ok, err)
		}
		return ep.Identity
	}
	// on a loaded machine the first exchange (ARP, the listener) may be slow
	if !poll(10*time.Second, func() bool { return reach("198.51.100.1:443") }) || reach("198.51.100.1:80") {
		t.Fatalf("baseline: 443 %v, 80 %v; want only 443", reach("198.51.100.1:443"), reach("198.51.100.1:80"))
	}

	// the namespace goes while the pod runs
	write(t, dir, "web.yaml", "")
	sync(e)
	if _, ok, _ := dp.NamespaceIdentity("web"); ok {
		t.Errorf("the identity of deleted namespace web is still published: new pods could take it")
	}
	if got := tagged(); got != web {
		t.Errorf("the pod of deleted namespace web is tagged %d, want its identity %d kept (0 = open cluster defaults)", got, web)
	}
	if !reach("198.51.100.1:443") || reach("198.51.100.1:80") {
		t.Errorf("after its namespace went: 443 %v, 80 %v; want its policy in force (only 443), not the open defaults",
			reach("198.51.100.1:443"), reach("198.51.100.1:80"))
	}
	if saved, ok, _ := store.Load(podKey("c1")); !ok || saved.Identity != web {
		t.Errorf("record after reconcile: %+v, want identity %d", saved, web)
	}

	// policy goes on applying to it, through its namespace's last labels
	write(t, dir, "policy.yaml", webPolicyYAML("443", "80"))
	sync(e)
	if !poll(5*time.Second, func() bool { return reach("198.51.100.1:80") }) {
		t.Errorf("a policy edit did not reach the pod of a deleted namespace: 80 still denied")
	}
	write(t, dir, "policy.yaml", webPolicyYAML("443"))
	sync(e)
	if !poll(5*time.Second, func() bool { return !reach("198.51.100.1:80") }) {
		t.Errorf("a policy edit did not reach the pod of a deleted namespace: 80 still allowed")
	}

	// no other namespace gets its number while the pod holds it
	write(t, dir, "other.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n")
	sync(e)
	if other := e.Identities()["other"]; other == 0 || other == web {
		t.Errorf("namespace other got identity %d; %d is held by a pod of deleted namespace web", other, web)
	}

	// the namespace comes back: its identity with it
	write(t, dir, "web.yaml", webNamespaceYAML)
	sync(e)
	if got, ok, _ := dp.NamespaceIdentity("web"); !ok || got != web || tagged() != web {
		t.Errorf("namespace web back: published %d (%v), pod tagged %d; want %d for both", got, ok, tagged(), web)
	}

	// gone again, then the enforcer restarts: the pod's identity and its policy survive
	write(t, dir, "web.yaml", "")
	sync(e)
	e2, err := New(dp, log)
	if err != nil {
		t.Fatal(err)
	}
	sync(e2)
	if got := tagged(); got != web {
		t.Errorf("after an enforcer restart, the pod of deleted namespace web is tagged %d, want %d", got, web)
	}
	if !reach("198.51.100.1:443") || reach("198.51.100.1:80") {
		t.Errorf("after an enforcer restart: 443 %v, 80 %v; want only 443", reach("198.51.100.1:443"), reach("198.51.100.1:80"))
	}
	write(t, dir, "late.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n")
	sync(e2)
	if late := e2.Identities()["late"]; late == 0 || late == web {
		t.Errorf("after a restart, namespace late got identity %d; %d is held by a pod of deleted namespace web", late, web)
	}

	// the pod ends: the identity is released and its policy slot emptied
	if err := pl.Host.Do(func(ns.NetNS) error { return forget(store, root, "c1") }); err != nil {
		t.Fatal(err)
	}
	if err := pl.Host.Do(func(ns.NetNS) error { return e2.Reconcile(store, root) }); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if _, err := dp.PolicyMapID(web); err == nil {
		t.Errorf("identity %d kept its policy slot after its last pod ended", web)
	}
	write(t, dir, "new.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: new}\n")
	sync(e2)
	if got := e2.Identities()["new"]; got != web {
		t.Errorf("namespace new got identity %d; %d, released, is the lowest free one", got, web)
	}
}

// A namespace deleted while its pods still run on other nodes: the source still lists their addresses, so they
// keep the namespace's identity here (rules by namespace on this node go on matching them), the identity goes to
// no other namespace, and it is released when the source no longer lists them.
func TestDeletedNamespaceKeepsRemotePodsIdentity(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	remote := netip.MustParsePrefix("10.9.0.5/32")
	pods := []Address{{Prefix: remote, Class: bpf.ClassPod, Namespace: "web"}}
	identityOf := func() uint32 {
		t.Helper()
		v, ok := ipcacheEntry(t, dp, remote)
		if !ok {
			return 0
		}
		return v.Identity
	}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web"), namespace("other")}, Addresses: pods}); err != nil {
		t.Fatal(err)
	}
	web := e.Identities()["web"]
	if web == 0 || identityOf() != web {
		t.Fatalf("the remote pod carries identity %d, want web's %d", identityOf(), web)
	}
	// web is deleted; its pod on another node is still listed
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("other"), namespace("third")}, Addresses: pods}); err != nil {
		t.Fatal(err)
	}
	if got := identityOf(); got != web {
		t.Errorf("after the namespace went: the remote pod carries identity %d, want web's %d still", got, web)
	}
	if id := e.Identities()["third"]; id == web {
		t.Errorf("namespace third got identity %d, which a pod of web still holds", id)
	}
	if _, err := dp.PolicyMapID(web); err != nil {
		t.Errorf("web's policy slot is gone while its pod runs: %v", err)
	}
	// the pod is gone too
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("other"), namespace("third")}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := ipcacheEntry(t, dp, remote); ok {
		t.Errorf("the remote pod's address is still in the ipcache")
	}
	if _, err := dp.PolicyMapID(web); err == nil {
		t.Errorf("web's policy slot outlived its last pod")
	}
}

func ipcacheEntry(t *testing.T, dp *bpf.Datapath, p netip.Prefix) (bpf.IPCacheValue, bool) {
	t.Helper()
	all, err := dp.IPCacheEntries()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := all[p]
	return v, ok
}

// A whole-state apply in which no namespace's identity and no configured range changed writes only the addresses
// the source says changed (State.AddressChanges): what it did not name is not looked at, so a policy change costs
// the same however many pods the cluster has. A new namespace, or a source that cannot tell, writes them all.
func TestApplyWritesOnlyTheAddressesThatChanged(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	a := netip.MustParsePrefix("10.9.0.5/32")
	b := netip.MustParsePrefix("10.9.0.6/32")
	c := netip.MustParsePrefix("10.9.0.7/32")
	s := State{Namespaces: []v1alpha1.Namespace{namespace("web"), namespace("api")},
		Addresses: []Address{{Prefix: a, Class: bpf.ClassPod, Namespace: "web"}, {Prefix: b, Class: bpf.ClassPod, Namespace: "web"}}}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	web, api := e.Identities()["web"], e.Identities()["api"]
	identityOf := func(p netip.Prefix) uint32 {
		t.Helper()
		v, _ := ipcacheEntry(t, dp, p)
		return v.Identity
	}
	// the list says a moved to api (a change the source did not name: it tells what the enforcer has not yet
	// been given, and a's was given already, here by pretending) and c is new (named)
	next := s
	next.Addresses = []Address{{Prefix: a, Class: bpf.ClassPod, Namespace: "api"}, {Prefix: b, Class: bpf.ClassPod, Namespace: "web"},
		{Prefix: c, Class: bpf.ClassPod, Namespace: "web"}}
	next.AddressChanges = map[netip.Prefix]*Address{c: &next.Addresses[2]}
	next.Config = &v1alpha1.FirewallConfig{} // a change that compiles policy again
	if err := e.Apply(next); err != nil {
		t.Fatal(err)
	}
	if got := identityOf(c); got != web {
		t.Errorf("the address the source named as changed carries identity %d, want web's %d", got, web)
	}
	if got := identityOf(a); got != web {
		t.Errorf("an apply with the address changes given looked at an address it did not name: %d, want still %d", got, web)
	}
	// the source cannot tell what changed: every address is written
	next.AddressChanges = nil
	if err := e.Apply(next); err != nil {
		t.Fatal(err)
	}
	if got := identityOf(a); got != api {
		t.Errorf("an apply without address changes did not write every address: a carries %d, want api's %d", got, api)
	}
	// a pod listed before its namespace is known carries no identity; the namespace's arrival writes its
	// addresses, and only the addresses of namespaces whose identity changed
	d := netip.MustParsePrefix("10.9.0.8/32")
	next.Addresses = append(next.Addresses, Address{Prefix: d, Class: bpf.ClassPod, Namespace: "db"})
	next.AddressChanges = map[netip.Prefix]*Address{d: &next.Addresses[3]}
	if err := e.Apply(next); err != nil {
		t.Fatal(err)
	}
	if got := identityOf(d); got != 0 {
		t.Errorf("a pod of a namespace not known yet carries identity %d, want none", got)
	}
	next.Addresses[1].Namespace = "api" // not named: looked at only if web's identity changed
	next.Namespaces = append(slices.Clone(next.Namespaces), namespace("db"))
	next.AddressChanges = map[netip.Prefix]*Address{}
	if err := e.Apply(next); err != nil {
		t.Fatal(err)
	}
	if db := e.Identities()["db"]; db == 0 || identityOf(d) != db {
		t.Errorf("when its namespace came, the pod's address took identity %d, want db's %d", identityOf(d), db)
	}
	if got := identityOf(b); got != web {
		t.Errorf("a new namespace rewrote an address of another namespace: b carries %d, want still web's %d", got, web)
	}
}

// The host's own address inside its pod range (the bridge's gateway, from which the kubelet probes pods and
// portmap hairpins hostPort connections) is decided as the node, not as a pod of no known namespace, which every
// rule by namespace denies; the watch picks it up when the bridge gets it, after the first apply.
func TestHostAddressesAreTheNodes(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	podRange := netip.MustParsePrefix("10.244.0.0/24")
	gateway := netip.MustParsePrefix("10.244.0.1/32")
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web")},
		Addresses: []Address{{Prefix: podRange, Class: bpf.ClassPod}}}); err != nil {
		t.Fatal(err)
	}
	if v, ok := ipcacheEntry(t, dp, podRange); !ok || v.Identity != bpf.IdentityUnknownPod {
		t.Fatalf("the node's pod range: %+v %v, want unknown pod", v, ok)
	}
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.244.0.2/24")}, []netip.Prefix{
		netip.MustParsePrefix("10.244.0.1/24")})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pl.Host.Do(func(ns.NetNS) error { return e.WatchHostAddresses(ctx) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	if !waitFor(func() bool {
		v, ok := ipcacheEntry(t, dp, gateway)
		return ok && bpf.Class(v.Class) == bpf.ClassNode
	}) {
		v, ok := ipcacheEntry(t, dp, gateway)
		t.Fatalf("the host's gateway address in the pod range: %+v %v, want the node's class", v, ok)
	}
	// an address the host gets later is picked up too
	late := netip.MustParsePrefix("10.244.0.254/24")
	if err := pl.Host.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(pl.HostIfindex)
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(late)})
	}); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool {
		v, ok := ipcacheEntry(t, dp, netip.PrefixFrom(late.Addr(), 32))
		return ok && bpf.Class(v.Class) == bpf.ClassNode
	}) {
		t.Errorf("an address the host got later is not the node's")
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
