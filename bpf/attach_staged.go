package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// The default attach mode, staged.
//
// A tcx attach inserts into the device's bpf_mprog entry, which swaps the entry's two halves and waits for an RCU
// grace period (tcx_entry_sync) per hook, under the RTNL lock; so at pod churn every pod's network setup on the
// node queues behind those waits. A cls_bpf filter insertion waits for no full grace period (mini_qdisc_pair_swap
// waits an expedited one at most, and only when the same half was swapped in less than a grace period ago), and
// an in-place replacement of a tcx program (a link update) waits for none. So the default mode:
//   - on a host veth that has no tcx program, adds Moat's clsact filters at priority 1 at ADD, ahead of every other
//     filter: nothing runs before Moat on either hook at that moment. The record says MoveToTCX, and the enforcer
//     later attaches tcx links at the head of both hooks and then removes the filters (MoveToTCX), off the pod's
//     critical path. Meanwhile, a tcx program that another tool attaches to the veth would run before Moat (tcx
//     runs before clsact); once moved, only a program inserted deliberately at the head can, as with tcx at ADD.
//   - on a host veth that already has tcx programs, attaches tcx links at the head at ADD (a clsact filter would run
//     after those programs), paying the grace periods;
//   - on a kernel without tcx, adds the clsact filters for good.
//
// Moat's programs hand a packet on with TCX_NEXT, which is TC_ACT_UNSPEC: in tcx the next program runs (then the
// clsact filters), and in a direct-action cls_bpf filter the next filter runs, so a primary CNI's programs run
// after Moat's allow in both places, and while both Moat's tcx link and its filter are on a hook (the moment of the
// move) a packet Moat allows is decided again by the same code and maps.
type stagedAttacher struct{}

// Mode is empty: each Attachment records the mode it got.
func (stagedAttacher) Mode() AttachMode { return "" }

func (stagedAttacher) Attach(ifindex int, fromPod, toPod *ebpf.Program) (Attachment, error) {
	a, err := clsactAttacher{}.Attach(ifindex, fromPod, toPod)
	if errors.Is(err, errHasTCX) {
		return tcxAttacher{}.Attach(ifindex, fromPod, toPod)
	}
	if err != nil {
		return nil, err
	}
	if _, err := TCXPrograms(ifindex); err == nil {
		a.(*clsactAttachment).moveToTCX = true // the kernel has tcx: the enforcer moves it there
	}
	return a, nil
}

// errHasTCX is the clsact attacher's refusal of a device that has tcx programs.
var errHasTCX = errors.New("the device has tcx programs")

// TCXPrograms counts the tcx programs on both hooks of device ifindex, whoever attached them. It fails on a
// kernel without tcx.
func TCXPrograms(ifindex int) (int, error) {
	n := 0
	for _, h := range []hook{ingress, egress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.tcx()})
		if err != nil {
			return 0, fmt.Errorf("query the tcx programs of ifindex %d: %w", ifindex, err)
		}
		n += len(res.Programs)
	}
	return n, nil
}

// MoveToTCX begins the move of a staged attachment (a clsact one whose record says MoveToTCX) to tcx: it attaches
// fromPod and toPod with tcx links at the head of both hooks of its device and returns them, not pinned. The
// filters stay: the caller pins and records the links, then detaches staged, so at no moment does a hook hold
// none of Moat's programs. This is where the grace periods are paid, by the enforcer rather than by a pod's ADD.
func MoveToTCX(staged Attachment, fromPod, toPod *ebpf.Program) (Attachment, error) {
	if !staged.Record().MoveToTCX {
		return nil, fmt.Errorf("ifindex %d: a %s attachment that is not staged for tcx", staged.Ifindex(), staged.Mode())
	}
	return tcxAttacher{}.Attach(staged.Ifindex(), fromPod, toPod)
}
