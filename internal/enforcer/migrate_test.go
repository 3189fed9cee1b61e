package enforcer

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

// An upgrade across map layouts under traffic: a pod runs the previous layout's programs and maps with an allowed
// stream open and a policy that denies world traffic in (only replies pass); the new build's enforcer migrates the
// maps, applies, and at its reconcile swaps the pod's programs and commits. The stream goes on through all of it
// (its conntrack entry came along), port 80 stays denied, and the old maps are gone from the pin root.
func TestMigrationUnderTraffic(t *testing.T) {
	root := testutil.PinRoot(t)
	old, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.NewEntry(logrus.New())
	eOld, err := New(old, log)
	if err != nil {
		t.Fatal(err)
	}
	policies := []v1alpha1.FirewallPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "lockdown"},
		Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: &metav1.LabelSelector{},
			Egress:  []v1alpha1.Rule{{Action: v1alpha1.ActionDeny, Ports: []v1alpha1.Port{{Protocol: "TCP", Port: ptr(80)}}}},
			Ingress: []v1alpha1.Rule{{Action: v1alpha1.ActionDeny, From: []v1alpha1.Peer{{CIDR: "0.0.0.0/0"}}}}}}}
	state := State{Policies: policies, Namespaces: []v1alpha1.Namespace{namespace("web")}}
	if err := eOld.Apply(state); err != nil {
		t.Fatal(err)
	}
	web := eOld.Identities()["web"]
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	testutil.Listen(t, pl.Host, "198.51.100.1:80")
	rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web", Pod: "p",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}, Identity: web}
	att, err := bpf.NewAttacher(bpf.ModeTCX)
	if err != nil {
		t.Fatal(err)
	}
	if err := pl.Host.Do(func(ns.NetNS) error {
		a, err := att.Attach(pl.HostIfindex, old.FromPod, old.ToPod)
		if err != nil {
			return err
		}
		rec.AttachmentRecord = a.Record()
		if err := a.Pin(rec.Key().LinkDir(root)); err != nil {
			return err
		}
		return a.Close()
	}); err != nil {
		t.Fatal(err)
	}
	ep, _ := bpf.NewEndpoint(web, bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr("10.250.0.2")})
	if err := old.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
		t.Fatal(err)
	}
	store := endpoint.Store{Dir: t.TempDir()}
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	defer pl.Host.Do(func(ns.NetNS) error { return forget(store, root, "c1") })
	stream := testutil.StreamEcho(t, pl, "198.51.100.1:443")
	streamed := func(n int64) {
		want := stream.Exchanged() + n
		waitFor(func() bool {
			select {
			case <-stream.Ended():
				return true
			default:
				return stream.Exchanged() >= want
			}
		})
	}
	streamed(5)
	reach80 := func() bool { return testutil.Exchange(pl.Pod, "198.51.100.1:80", time.Second) == nil }
	if reach80() {
		t.Fatal("the old build lets the pod reach port 80, which the policy denies")
	}

	// the old build's enforcer stops; its maps say they are of the layout before this build's
	cfg, err := ebpf.LoadPinnedMap(filepath.Join(root, "config"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var c bpf.Config
	if err := cfg.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	c.LayoutVersion = bpf.LayoutVersion - 1
	if err := cfg.Put(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	cfg.Close()
	oldIDs := []ebpf.ProgramID{testutil.ProgramID(t, old.FromPod), testutil.ProgramID(t, old.ToPod)}
	old.Close()

	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatalf("the new build's load: %v", err)
	}
	defer dp.Close()
	if _, ok := dp.Migrating(); !ok {
		t.Fatal("the new build does not migrate the previous layout's maps")
	}
	e, err := New(dp, log)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Identities()["web"]; got != web {
		t.Errorf("the new build's identity of web is %d, the pods carry %d", got, web)
	}
	if err := e.Apply(state); err != nil {
		t.Fatal(err)
	}
	before := stream.Exchanged()
	streamed(5)
	if err := pl.Host.Do(func(ns.NetNS) error { return e.Reconcile(store, root) }); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	streamed(5)
	if exchanged, err := stream.Stop(); err != nil || exchanged < before+10 {
		t.Errorf("the allowed stream through the migration: %d exchanges (%d before it), then %v", exchanged, before, err)
	}
	if reach80() {
		t.Errorf("after the migration the pod reaches port 80, which the policy denies")
	}
	ids := hookPrograms(t, pl, rec)
	want := []ebpf.ProgramID{testutil.ProgramID(t, dp.FromPod), testutil.ProgramID(t, dp.ToPod)}
	if len(ids) != 2 || ids[0] != want[0] || ids[1] != want[1] || ids[0] == oldIDs[0] {
		t.Errorf("the pod's hooks run %v, want the new build's %v (the old ones were %v)", ids, want, oldIDs)
	}
	if _, ok := dp.Migrating(); ok {
		t.Errorf("the reconcile that moved every pod did not commit the migration")
	}
	if _, err := os.Stat(filepath.Join(root, bpf.StageDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stage outlived the commit: %v", err)
	}
	if got, err := dp.Config(); err != nil || got.MigratedFrom != bpf.LayoutVersion-1 {
		t.Errorf("config after the commit: %+v %v", got, err)
	}
}
