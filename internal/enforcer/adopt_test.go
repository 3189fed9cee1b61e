package enforcer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

// Pods the plugin recorded before the enforcer could guard them are adopted: an unprotected pod is attached and
// tagged, a pod tagged 0 is re-tagged when its namespace appears, and a pod whose veth is gone is forgotten.
func TestReconcileAdoptsRetagsAndForgets(t *testing.T) {
	root, dp, e := newTestEnforcer(t)
	closed := &v1alpha1.FirewallConfig{ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: v1alpha1.FirewallConfigSpec{DefaultEgress: v1alpha1.ActionDeny}}
	if err := e.Apply(State{Config: closed, Namespaces: []v1alpha1.Namespace{namespace("web")}}); err != nil {
		t.Fatal(err)
	}
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	testutil.Listen(t, pl.Host, "198.51.100.1:80")
	reach := func() bool { return testutil.Exchange(pl.Pod, "198.51.100.1:80", time.Second) == nil }
	// a precondition, not the point: on a loaded machine the first exchange (ARP, the listener) may be slow
	if !poll(10*time.Second, reach) {
		t.Fatal("baseline: the unprotected pod cannot reach the world")
	}

	store := endpoint.Store{Dir: t.TempDir()}
	early := &endpoint.Record{Network: "net", ContainerID: "early", IfName: "eth0", Namespace: "web", Pod: "early",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}}
	gone := &endpoint.Record{Network: "net", ContainerID: "gone", IfName: "eth0", Namespace: "web", Pod: "gone",
		HostIfname: "vethgone", HostIfindex: 99999, Addresses: []string{"10.250.0.3"}}
	gone.AttachMode = bpf.ModeTCX
	for _, r := range []*endpoint.Record{early, gone} {
		if err := store.Save(r); err != nil {
			t.Fatal(err)
		}
	}
	reconcile := func() {
		t.Helper()
		if err := pl.Host.Do(func(ns.NetNS) error { return e.Reconcile(store, root) }); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
	}
	reconcile()
	if _, ok, _ := store.Load(podKey("gone")); ok {
		t.Errorf("the record of a pod whose veth is gone survived")
	}
	rec, ok, _ := store.Load(podKey("early"))
	web := e.Identities()["web"]
	if !ok || rec.AttachMode == "" || rec.Identity != web { // the default mode: staged in clsact, the mover's next
		t.Fatalf("adopted record %+v (%v), want attached with identity %d", rec, ok, web)
	}
	if ep, ok, _ := dp.LookupEndpoint(uint32(pl.HostIfindex)); !ok || ep.Identity != web {
		t.Errorf("endpoint of the adopted pod: %+v (%v)", ep, ok)
	}
	if reach() {
		t.Errorf("the adopted pod still reaches the world, whose default is Deny")
	}

	// the pod's namespace changes to one the enforcer does not know yet: identity 0 until it appears
	rec.Namespace = "late"
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	reconcile()
	if ep, _, _ := dp.LookupEndpoint(uint32(pl.HostIfindex)); ep.Identity != 0 {
		t.Errorf("endpoint of a namespace without identity: identity %d, want 0", ep.Identity)
	}
	before, _ := dp.Config()
	if err := e.Apply(State{Config: closed, Namespaces: []v1alpha1.Namespace{namespace("web"), namespace("late")}}); err != nil {
		t.Fatal(err)
	}
	reconcile()
	late := e.Identities()["late"]
	if ep, _, _ := dp.LookupEndpoint(uint32(pl.HostIfindex)); late == 0 || ep.Identity != late {
		t.Errorf("re-tagged endpoint identity %d, want %d", ep.Identity, late)
	}
	if after, _ := dp.Config(); after.Generation <= before.Generation {
		t.Errorf("generation %d -> %d: flows of a re-tagged pod must be decided again", before.Generation, after.Generation)
	}
	if err := pl.Host.Do(func(ns.NetNS) error { return forget(store, root, "early") }); err != nil {
		t.Fatal(err)
	}
}

// podKey names a test pod's interface: eth0 of a container in network net.
func podKey(containerID string) endpoint.Key {
	return endpoint.Key{Network: "net", ContainerID: containerID, IfName: "eth0"}
}

// guard is what the plugin's ADD does for a recorded test pod: tag it and attach its programs with tcx links (as
// the default mode leaves them once moved), pinned under root.
func guard(dp *bpf.Datapath, rec *endpoint.Record, identity uint32, root string) error {
	_, err := endpoint.Lifecycle{PinRoot: root}.Guard(dp, rec, identity, bpf.ModeTCX)
	return err
}

// forget is the plugin's DEL of a test pod.
func forget(store endpoint.Store, root, containerID string) error {
	return endpoint.Lifecycle{Store: store, PinRoot: root}.Forget(podKey(containerID))
}
