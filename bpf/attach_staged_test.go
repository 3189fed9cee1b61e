package bpf_test

import (
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// The default mode on a device with no tcx program: Moat's clsact filters, first on both hooks and recorded for
// tcx; the move attaches tcx links at the head, and detaching the staged attachment then leaves no filter or
// qdisc of Moat's, while another tool's filter and the qdisc it shares stay. At every step both hooks hold Moat's
// programs (Check).
func TestStagedAttachMovesToTCX(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	other := testutil.PassProgram(t, "other_tool")
	for _, withOther := range []bool{false, true} {
		name := "alone"
		if withOther {
			name = "beside another tool's clsact filter"
		}
		t.Run(name, func(t *testing.T) {
			n, ifindex := inDummyNS(t)
			err := n.Do(func(ns.NetNS) error {
				if withOther {
					addOtherFilter(t, ifindex, other)
				}
				att, err := bpf.NewAttacher("")
				if err != nil {
					return err
				}
				staged, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = n.Do(func(ns.NetNS) error { return staged.Detach() }) })
				if rec := staged.Record(); staged.Mode() != bpf.ModeClsact || !rec.MoveToTCX || rec.CreatedQdisc == withOther {
					t.Errorf("staged attachment %s %+v, want clsact staged for tcx (qdisc created: %v)", staged.Mode(), rec, !withOther)
				}
				if n, err := bpf.TCXPrograms(ifindex); err != nil || n != 0 {
					t.Errorf("tcx programs while staged: %d, %v; want none, so nothing runs before Moat", n, err)
				}
				requireFiltersFirst(t, ifindex, withOther)
				if err := staged.Check(dp.FromPod, dp.ToPod); err != nil {
					t.Errorf("check while staged: %v", err)
				}

				links, err := bpf.MoveToTCX(staged, dp.FromPod, dp.ToPod)
				if err != nil {
					t.Fatal(err)
				}
				dir := filepath.Join(dp.Root, "endpoints", "net", "c-staged")
				if err := links.Pin(dir); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = n.Do(func(ns.NetNS) error { return links.Detach() }) })
				for name, a := range map[string]bpf.Attachment{"filters": staged, "links": links} {
					if err := a.Check(dp.FromPod, dp.ToPod); err != nil {
						t.Errorf("check of the %s while both are in place: %v", name, err)
					}
				}
				if err := staged.Detach(); err != nil {
					t.Fatal(err)
				}
				hasQdisc, filters := clsactState(t, ifindex)
				if hasQdisc != withOther || len(filters[netlink.HANDLE_MIN_INGRESS])+len(filters[netlink.HANDLE_MIN_EGRESS]) != map[bool]int{false: 0, true: 2}[withOther] {
					t.Errorf("after the move: clsact qdisc %v, filters %v; want only another tool's", hasQdisc, filters)
				}
				if links.Mode() != bpf.ModeTCX || links.Record().MoveToTCX {
					t.Errorf("moved attachment %s %+v, want tcx", links.Mode(), links.Record())
				}
				if err := links.Check(dp.FromPod, dp.ToPod); err != nil {
					t.Errorf("check after the move: %v", err)
				}
				requireTCXHead(t, dp, ifindex)
				if _, err := bpf.MoveToTCX(links, dp.FromPod, dp.ToPod); err == nil {
					t.Error("moving a tcx attachment again succeeded, want it refused")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The default mode on a device that already has a tcx program attaches tcx links at the head at once: a clsact
// filter would run after that program.
func TestStagedAttachUsesTCXBesideTCX(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	other := testutil.PassProgram(t, "other_tool")
	n, ifindex := inDummyNS(t)
	err := n.Do(func(ns.NetNS) error {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: other, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		t.Cleanup(func() { l.Close() })
		att, err := bpf.NewAttacher("")
		if err != nil {
			return err
		}
		a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Detach()
		if a.Mode() != bpf.ModeTCX || a.Record().MoveToTCX {
			t.Errorf("attachment %s %+v beside a tcx program, want tcx", a.Mode(), a.Record())
		}
		if hasQdisc, _ := clsactState(t, ifindex); hasQdisc {
			t.Error("a clsact qdisc was added beside a tcx program")
		}
		requireTCXHead(t, dp, ifindex)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A device that goes takes its tcx links with it: a pinned link then names no device (Check: not attached) and
// unpinning it waits for nothing. DEL's Release relies on this.
func TestTCXLinksGoWithTheDevice(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	n, ifindex := inDummyNS(t)
	err := n.Do(func(ns.NetNS) error {
		att, err := bpf.NewAttacher(bpf.ModeTCX)
		if err != nil {
			return err
		}
		a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
		if err != nil {
			return err
		}
		dir := filepath.Join(dp.Root, "released", "net", "c-gone-1")
		if err := a.Pin(dir); err != nil {
			return err
		}
		t.Cleanup(func() { _ = a.Detach() })
		a.Close()
		l, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		if err := netlink.LinkDel(l); err != nil {
			return err
		}
		again, err := bpf.OpenAttachment(bpf.AttachmentRecord{AttachMode: bpf.ModeTCX}, 0, dir)
		if err != nil {
			return err
		}
		defer again.Close()
		if again.Ifindex() != 0 {
			t.Errorf("a link whose device is gone names ifindex %d, want 0", again.Ifindex())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// addOtherFilter hangs another tool's direct-action filter at priority 5 on both hooks, with the clsact qdisc.
func addOtherFilter(t *testing.T, ifindex int, prog *ebpf.Program) {
	t.Helper()
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0),
		Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := netlink.QdiscAdd(q); err != nil {
		t.Fatal(err)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1,
			Priority: 5, Protocol: unix.ETH_P_ALL}, Fd: prog.FD(), Name: "other_tool", DirectAction: true}
		if err := netlink.FilterAdd(f); err != nil {
			t.Fatal(err)
		}
	}
}

// requireFiltersFirst fails unless Moat's filter is the first of both hooks (and another tool's follows it).
func requireFiltersFirst(t *testing.T, ifindex int, withOther bool) {
	t.Helper()
	hasQdisc, filters := clsactState(t, ifindex)
	want := []uint16{bpf.ClsactPriority}
	if withOther {
		want = append(want, 5)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		got := filters[parent]
		if !hasQdisc || len(got) != len(want) || got[0] != bpf.ClsactPriority {
			t.Errorf("filters of hook %#x: priorities %v, want %v", parent, got, want)
		}
	}
}

// requireTCXHead fails unless the first tcx program of both hooks runs the datapath's code.
func requireTCXHead(t *testing.T, dp *bpf.Datapath, ifindex int) {
	t.Helper()
	for i, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err != nil || len(q.Programs) == 0 {
			t.Errorf("%v: %+v, %v; want Moat's program first", at, q, err)
			continue
		}
		want := []*ebpf.Program{dp.FromPod, dp.ToPod}[i]
		if id := testutil.ProgramID(t, want); q.Programs[0].ID != id {
			t.Errorf("%v: program %d first, want Moat's %d", at, q.Programs[0].ID, id)
		}
	}
}
