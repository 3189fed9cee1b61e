package bpf_test

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// inDummyNS gives a test a device (one end of a veth) in a namespace of its own.
func inDummyNS(t *testing.T) (ns.NetNS, int) {
	t.Helper()
	n := testutil.NewNS(t)
	var ifindex int
	err := n.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "dummy0"}, PeerName: "dummy1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("dummy0")
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, ifindex
}

func TestTCXAtHeadAndGoodNeighbour(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	other := testutil.PassProgram(t, "other_tool")
	n, ifindex := inDummyNS(t)
	err := n.Do(func(ns.NetNS) error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: other, Attach: at})
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
		}
		att, err := bpf.NewAttacher(bpf.ModeTCX)
		if err != nil {
			return err
		}
		a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
		if err != nil {
			return err
		}
		for at, moat := range map[ebpf.AttachType]*ebpf.Program{ebpf.AttachTCXIngress: dp.FromPod, ebpf.AttachTCXEgress: dp.ToPod} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			if len(q.Programs) != 2 || q.Programs[0].ID != testutil.ProgramID(t, moat) || q.Programs[1].ID != testutil.ProgramID(t, other) {
				t.Errorf("%v: programs %+v, want Moat's first, then the other tool's", at, q.Programs)
			}
		}
		// pinned links survive this process's handles and are found again by their pins
		dir := filepath.Join(dp.Root, "endpoints", "net", "container")
		if err := a.Pin(dir); err != nil {
			return err
		}
		a.Close()
		again, err := bpf.OpenAttachment(a.Record(), 0, dir)
		if err != nil {
			return err
		}
		if again.Ifindex() != ifindex {
			t.Errorf("reopened attachment on ifindex %d, want %d", again.Ifindex(), ifindex)
		}
		if err := again.Detach(); err != nil {
			return err
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			if len(q.Programs) != 1 || q.Programs[0].ID != testutil.ProgramID(t, other) {
				t.Errorf("%v after detach: programs %+v, want only the other tool's", at, q.Programs)
			}
		}
		if _, err := bpf.OpenAttachment(a.Record(), ifindex, dir); !errors.Is(err, bpf.ErrNotAttached) {
			t.Errorf("reopening the links after detach: %v, want them gone", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func clsactState(t *testing.T, ifindex int) (hasQdisc bool, filters map[uint32][]uint16) {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := netlink.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			hasQdisc = true
		}
	}
	filters = map[uint32][]uint16{}
	if !hasQdisc {
		return
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := netlink.FilterList(l, parent)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fs {
			filters[parent] = append(filters[parent], f.Attrs().Priority)
		}
	}
	return
}

func TestClsactGoodNeighbour(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	other := testutil.PassProgram(t, "other_tool")
	att, _ := bpf.NewAttacher(bpf.ModeClsact)

	t.Run("qdisc and filter of another tool stay", func(t *testing.T) {
		n, ifindex := inDummyNS(t)
		err := n.Do(func(ns.NetNS) error {
			q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
				Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
			if err := netlink.QdiscAdd(q); err != nil {
				return err
			}
			f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
				Handle: 1, Priority: 5, Protocol: unix.ETH_P_ALL}, Fd: other.FD(), Name: "other_tool", DirectAction: true}
			if err := netlink.FilterAdd(f); err != nil {
				return err
			}
			a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
			if err != nil {
				return err
			}
			if a.Record().CreatedQdisc {
				t.Errorf("Moat claims a qdisc it did not create")
			}
			_, filters := clsactState(t, ifindex)
			if got := filters[netlink.HANDLE_MIN_INGRESS]; len(got) != 2 || got[0] != bpf.ClsactPriority {
				t.Errorf("ingress filters by priority %v, want Moat's (1) first, then the other tool's", got)
			}
			if err := a.Detach(); err != nil {
				return err
			}
			has, filters := clsactState(t, ifindex)
			if !has || len(filters[netlink.HANDLE_MIN_INGRESS]) != 1 || filters[netlink.HANDLE_MIN_INGRESS][0] != 5 ||
				len(filters[netlink.HANDLE_MIN_EGRESS]) != 0 {
				t.Errorf("after detach: qdisc %v filters %v, want the other tool's qdisc and filter only", has, filters)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("qdisc Moat created goes when empty", func(t *testing.T) {
		n, ifindex := inDummyNS(t)
		err := n.Do(func(ns.NetNS) error {
			a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
			if err != nil {
				return err
			}
			if !a.Record().CreatedQdisc {
				t.Errorf("Moat created the clsact qdisc but did not record it")
			}
			if err := a.Detach(); err != nil {
				return err
			}
			if has, _ := clsactState(t, ifindex); has {
				t.Errorf("clsact qdisc Moat created is still there after detach")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("qdisc Moat created stays while another tool uses it", func(t *testing.T) {
		n, ifindex := inDummyNS(t)
		err := n.Do(func(ns.NetNS) error {
			a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
			if err != nil {
				return err
			}
			f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_EGRESS,
				Handle: 1, Priority: 9, Protocol: unix.ETH_P_ALL}, Fd: other.FD(), Name: "other_tool", DirectAction: true}
			if err := netlink.FilterAdd(f); err != nil {
				return err
			}
			if _, err := att.Attach(ifindex, dp.FromPod, dp.ToPod); err == nil {
				t.Errorf("second attach on the same device succeeded, want a clear refusal")
			}
			if err := a.Detach(); err != nil {
				return err
			}
			has, filters := clsactState(t, ifindex)
			if !has || len(filters[netlink.HANDLE_MIN_EGRESS]) != 1 || len(filters[netlink.HANDLE_MIN_INGRESS]) != 0 {
				t.Errorf("after detach: qdisc %v filters %v, want the qdisc with the other tool's filter", has, filters)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkAttach measures how long attaching both programs to a fresh veth takes, by mode: the part of a pod's
// ADD that holds RTNL. It reports the median and p99 of b.N attaches; tcx waits for an RCU grace period per hook.
func BenchmarkAttach(b *testing.B) {
	dp := loadDatapath(b, bpf.Options{})
	for _, mode := range []bpf.AttachMode{"", bpf.ModeTCX, bpf.ModeClsact} {
		name := string(mode)
		if mode == "" {
			name = "default" // staged: clsact on a fresh veth
		}
		b.Run("mode="+name, func(b *testing.B) {
			att, err := bpf.NewAttacher(mode)
			if err != nil {
				b.Fatal(err)
			}
			n := testutil.NewNS(b)
			took := make([]time.Duration, 0, b.N)
			err = n.Do(func(ns.NetNS) error {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bench0"}, PeerName: "bench1"}); err != nil {
						return err
					}
					l, err := netlink.LinkByName("bench0")
					if err != nil {
						return err
					}
					b.StartTimer()
					start := time.Now()
					a, err := att.Attach(l.Attrs().Index, dp.FromPod, dp.ToPod)
					took = append(took, time.Since(start))
					b.StopTimer()
					if err != nil {
						return err
					}
					if err := a.Detach(); err != nil {
						return err
					}
					if err := netlink.LinkDel(l); err != nil {
						return err
					}
					b.StartTimer()
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// tcx programs run before clsact filters: attaching in clsact mode to a device that has one is refused, and
// leaves no qdisc or filter behind.
func TestClsactRefusesDeviceWithTCX(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	other := testutil.PassProgram(t, "other_tool")
	n, ifindex := inDummyNS(t)
	err := n.Do(func(ns.NetNS) error {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: other, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		defer l.Close()
		att, err := bpf.NewAttacher(bpf.ModeClsact)
		if err != nil {
			return err
		}
		a, err := att.Attach(ifindex, dp.FromPod, dp.ToPod)
		if err == nil {
			_ = a.Detach()
			t.Error("clsact attach to a device with a tcx program succeeded, want it refused")
		} else if !strings.Contains(err.Error(), "tcx") {
			t.Errorf("refusal %q does not name tcx", err)
		}
		if hasQdisc, filters := clsactState(t, ifindex); hasQdisc || len(filters) != 0 {
			t.Errorf("after the refusal: clsact qdisc %v, filters %v; want none", hasQdisc, filters)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Check is the one answer to "is this pod guarded?", the same for both modes: both hooks in place running the
// datapath's code; another build's code (ErrOtherPrograms) until Upgrade swaps it; a hook removed behind Moat's
// back, or a device that is gone, is not attached (ErrNotAttached). An attachment taken up again from its record
// answers the same.
func TestAttachmentCheck(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	old := testutil.PassProgram(t, "old_build")
	for _, mode := range []bpf.AttachMode{bpf.ModeTCX, bpf.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) {
			n, ifindex := inDummyNS(t)
			err := n.Do(func(ns.NetNS) error {
				att, err := bpf.NewAttacher(mode)
				if err != nil {
					return err
				}
				a, err := att.Attach(ifindex, old, old)
				if err != nil {
					return err
				}
				dir := filepath.Join(dp.Root, "endpoints", "net", "c-"+string(mode))
				if err := a.Pin(dir); err != nil {
					return err
				}
				t.Cleanup(func() { _ = n.Do(func(ns.NetNS) error { return a.Detach() }) })
				if err := a.Check(dp.FromPod, dp.ToPod); !errors.Is(err, bpf.ErrOtherPrograms) {
					t.Errorf("another build's programs: %v, want ErrOtherPrograms", err)
				}
				if changed, err := a.Upgrade(dp.FromPod, dp.ToPod); err != nil || changed != 2 {
					t.Errorf("upgrade: %d hooks, %v; want 2", changed, err)
				}
				again, err := bpf.OpenAttachment(a.Record(), ifindex, dir)
				if err != nil {
					return err
				}
				defer again.Close()
				for name, x := range map[string]bpf.Attachment{"made": a, "taken up": again} {
					if err := x.Check(dp.FromPod, dp.ToPod); err != nil {
						t.Errorf("%s after the upgrade: %v", name, err)
					}
				}
				if changed, err := again.Upgrade(dp.FromPod, dp.ToPod); err != nil || changed != 0 {
					t.Errorf("a second upgrade: %d hooks, %v; want none", changed, err)
				}
				// another hand takes Moat's egress program off
				removeEgress(t, mode, ifindex)
				if err := again.Check(dp.FromPod, dp.ToPod); !errors.Is(err, bpf.ErrNotAttached) || !strings.Contains(err.Error(), "egress") {
					t.Errorf("without the egress hook: %v, want ErrNotAttached naming egress", err)
				}
				if _, err := again.Upgrade(dp.FromPod, dp.ToPod); !errors.Is(err, bpf.ErrNotAttached) {
					t.Errorf("upgrade without the egress hook: %v, want ErrNotAttached", err)
				}
				l, err := netlink.LinkByIndex(ifindex)
				if err != nil {
					return err
				}
				if err := netlink.LinkDel(l); err != nil {
					return err
				}
				if err := again.Check(dp.FromPod, dp.ToPod); !errors.Is(err, bpf.ErrNotAttached) {
					t.Errorf("with the device gone: %v, want ErrNotAttached", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := bpf.OpenAttachment(bpf.AttachmentRecord{}, 1, ""); !errors.Is(err, bpf.ErrNotAttached) {
		t.Errorf("a record of no attachment: %v, want ErrNotAttached", err)
	}
}

// removeEgress takes the program off a device's egress hook as another tool would: the tcx link detached by its
// ID, or the clsact filter deleted.
func removeEgress(t *testing.T, mode bpf.AttachMode, ifindex int) {
	t.Helper()
	if mode == bpf.ModeTCX {
		q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXEgress})
		if err != nil || len(q.Programs) != 1 {
			t.Fatalf("egress programs %+v, %v; want one", q, err)
		}
		id, ok := q.Programs[0].LinkID()
		if !ok {
			t.Fatal("the egress program has no link")
		}
		l, err := link.NewFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Detach(); err != nil {
			t.Fatal(err)
		}
		return
	}
	fs, err := netlink.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_EGRESS)
	if err != nil || len(fs) != 1 {
		t.Fatalf("egress filters %v, %v; want one", fs, err)
	}
	if err := netlink.FilterDel(fs[0]); err != nil {
		t.Fatal(err)
	}
}
