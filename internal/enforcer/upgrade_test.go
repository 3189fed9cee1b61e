package enforcer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

// A pod whose hooks run another build's programs (here: programs that pass everything) gets this build's on
// the next reconcile, swapped in place: an allowed stream running through the swap goes on, and what the policy
// denies is denied from then on. A second reconcile changes nothing.
func TestReconcileUpgradesProgramsInPlace(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.ModeTCX, bpf.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) {
			root, dp, e := newTestEnforcer(t)
			deny80 := v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-80"},
				Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: &metav1.LabelSelector{},
					Egress: []v1alpha1.Rule{{Action: v1alpha1.ActionDeny, Ports: []v1alpha1.Port{{Protocol: "TCP", Port: ptr(80)}}}}}}
			if err := e.Apply(State{Policies: []v1alpha1.FirewallPolicy{deny80}, Namespaces: []v1alpha1.Namespace{namespace("web")}}); err != nil {
				t.Fatal(err)
			}
			web := e.Identities()["web"]
			pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
				[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
			testutil.Listen(t, pl.Host, "198.51.100.1:80")

			old := testutil.PassProgram(t, "old_build")
			rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web", Pod: "p",
				HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}, Identity: web}
			att, err := bpf.NewAttacher(mode)
			if err != nil {
				t.Fatal(err)
			}
			if err := pl.Host.Do(func(ns.NetNS) error {
				a, err := att.Attach(pl.HostIfindex, old, old)
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
			if err := dp.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
				t.Fatal(err)
			}
			store := endpoint.Store{Dir: t.TempDir()}
			if err := store.Save(rec); err != nil {
				t.Fatal(err)
			}
			defer pl.Host.Do(func(ns.NetNS) error { return forget(store, root, "c1") })
			reach80 := func() bool { return testutil.Exchange(pl.Pod, "198.51.100.1:80", time.Second) == nil }
			// a precondition, not the point: on a loaded machine the first exchange (ARP, the listener) may be slow
			if !poll(10*time.Second, reach80) {
				t.Fatal("the old programs pass everything, yet port 80 is unreachable")
			}

			stream := testutil.StreamEcho(t, pl, "198.51.100.1:443")
			// streamed waits for n more exchanges than there were, or for the stream to end
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
			before := stream.Exchanged()
			reconcile := func() {
				t.Helper()
				if err := pl.Host.Do(func(ns.NetNS) error { return e.Reconcile(store, root) }); err != nil {
					t.Fatalf("reconcile: %v", err)
				}
			}
			reconcile()
			streamed(5)
			if exchanged, err := stream.Stop(); err != nil || exchanged < before+5 {
				t.Errorf("the allowed stream through the upgrade: %d exchanges (%d before it), then %v", exchanged, before, err)
			}
			if reach80() {
				t.Errorf("after the upgrade the pod still reaches port 80, which the policy denies")
			}
			ids := hookPrograms(t, pl, rec)
			want := []ebpf.ProgramID{testutil.ProgramID(t, dp.FromPod), testutil.ProgramID(t, dp.ToPod)}
			if len(ids) != 2 || ids[0] != want[0] || ids[1] != want[1] {
				t.Errorf("hooks run programs %v, want this build's %v", ids, want)
			}
			reconcile()
			if again := hookPrograms(t, pl, rec); len(again) != 2 || again[0] != ids[0] || again[1] != ids[1] {
				t.Errorf("a second reconcile changed the programs: %v -> %v", ids, again)
			}
		})
	}
}

func ptr(v int32) *int32 { return &v }

// hookPrograms is what runs on a pod's two hooks, ingress (from pod) first, as the kernel reports it: the
// device's tcx programs, or its clsact filters at Moat's handle.
func hookPrograms(t *testing.T, pl *testutil.PodLink, r *endpoint.Record) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	err := pl.Host.Do(func(ns.NetNS) error {
		if r.AttachMode == bpf.ModeTCX {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				q, err := link.QueryPrograms(link.QueryOptions{Target: r.HostIfindex, Attach: at})
				if err != nil {
					return err
				}
				for _, p := range q.Programs {
					ids = append(ids, p.ID)
				}
			}
			return nil
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: r.HostIfindex}}, parent)
			if err != nil {
				return err
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && f.Attrs().Handle == bpf.ClsactHandle {
					ids = append(ids, ebpf.ProgramID(bf.Id))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}
