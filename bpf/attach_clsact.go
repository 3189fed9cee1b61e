package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Priority and handle of Moat's clsact filters: priority 1 runs first.
const (
	ClsactPriority = 1
	ClsactHandle   = 0x4d4f // "MO"
)

// ClsactFilter records one filter Moat added under clsact.
type ClsactFilter struct {
	Parent   uint32 // netlink.HANDLE_MIN_INGRESS or HANDLE_MIN_EGRESS
	Priority uint16
	Handle   uint32
}

// clsactAttachment is what Moat added under a device's clsact qdisc, so Detach removes exactly that.
type clsactAttachment struct {
	ifindex      int
	filters      []ClsactFilter
	createdQdisc bool
	moveToTCX    bool // staged by the default mode: the enforcer moves it to tcx
}

func (h hook) clsactParent() uint32 {
	if h == ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// filterName names Moat's filter on a hook; the prefix moat_ tells Moat's filters from other tools'.
func (h hook) filterName() string {
	if h == ingress {
		return "moat_from_pod"
	}
	return "moat_to_pod"
}

type clsactAttacher struct{}

func (clsactAttacher) Mode() AttachMode { return ModeClsact }

func (clsactAttacher) Attach(ifindex int, fromPod, toPod *ebpf.Program) (Attachment, error) {
	a := &clsactAttachment{ifindex: ifindex}
	// tcx programs run before every clsact filter: one that redirects or drops would decide packets Moat never
	// saw, so a device that has any is refused (a kernel without tcx has none).
	for _, h := range []hook{ingress, egress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: h.tcx()})
		if err == nil && len(res.Programs) > 0 {
			return nil, fmt.Errorf("ifindex %d has %d tcx program(s) on %s, which would run before Moat's clsact "+
				"filters: attach with tcx instead (conflist attachMode tcx): %w", ifindex, len(res.Programs), h, errHasTCX)
		}
	}
	dev, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("find ifindex %d: %w", ifindex, err)
	}
	name := dev.Attrs().Name
	if !hasClsact(dev) {
		if err := netlink.QdiscAdd(clsactQdisc(ifindex)); err != nil {
			return nil, fmt.Errorf("add clsact qdisc to %s: %w", name, err)
		}
		a.createdQdisc = true
	}
	for h, prog := range [2]*ebpf.Program{fromPod, toPod} {
		parent := hook(h).clsactParent()
		existing, err := netlink.FilterList(dev, parent)
		if err != nil {
			_ = a.Detach()
			return nil, fmt.Errorf("list filters of %s: %w", name, err)
		}
		for _, f := range existing {
			at := f.Attrs()
			if at.Priority == ClsactPriority && at.Handle == ClsactHandle {
				_ = a.Detach()
				return nil, fmt.Errorf("%s already holds a filter at priority %d handle %#x: remove the stale "+
					"Moat filter or the tool that took its place", name, ClsactPriority, ClsactHandle)
			}
		}
		rec := ClsactFilter{Parent: parent, Priority: ClsactPriority, Handle: ClsactHandle}
		if err := netlink.FilterAdd(rec.bpfFilter(ifindex, hook(h), prog)); err != nil {
			_ = a.Detach()
			return nil, fmt.Errorf("add clsact filter to %s: %w", name, err)
		}
		a.filters = append(a.filters, rec)
	}
	return a, nil
}

func clsactQdisc(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
}

// bpfFilter is the direct-action filter the record names, running prog on hook h.
func (rec ClsactFilter) bpfFilter(ifindex int, h hook, prog *ebpf.Program) *netlink.BpfFilter {
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: rec.Parent,
		Handle: rec.Handle, Priority: rec.Priority, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: h.filterName(), DirectAction: true}
}

func (a *clsactAttachment) Mode() AttachMode { return ModeClsact }

func (a *clsactAttachment) Ifindex() int { return a.ifindex }

func (a *clsactAttachment) Record() AttachmentRecord {
	return AttachmentRecord{AttachMode: ModeClsact, Filters: a.filters, CreatedQdisc: a.createdQdisc,
		MoveToTCX: a.moveToTCX}
}

// Pin: the filters live on the device, and their record is the endpoint record.
func (a *clsactAttachment) Pin(string) error { return nil }

func (a *clsactAttachment) Check(fromPod, toPod *ebpf.Program) error {
	return check(a, a.ifindex, fromPod, toPod)
}

func (a *clsactAttachment) Upgrade(fromPod, toPod *ebpf.Program) (int, error) {
	return upgrade(a, a.ifindex, fromPod, toPod)
}

// device is the attachment's device; nil when it is gone (and its filters with it).
func (a *clsactAttachment) device() (netlink.Link, error) {
	dev, err := netlink.LinkByIndex(a.ifindex)
	var gone netlink.LinkNotFoundError
	if errors.As(err, &gone) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find ifindex %d: %w", a.ifindex, err)
	}
	return dev, nil
}

// ours finds the filter a record names on the device, if it is still Moat's.
func (rec ClsactFilter) ours(dev netlink.Link) (*netlink.BpfFilter, error) {
	filters, err := netlink.FilterList(dev, rec.Parent)
	if err != nil {
		return nil, fmt.Errorf("list filters of %s: %w", dev.Attrs().Name, err)
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		at := f.Attrs()
		if ok && at.Priority == rec.Priority && at.Handle == rec.Handle && strings.HasPrefix(bf.Name, "moat_") {
			return bf, nil
		}
	}
	return nil, nil
}

// recorded is the record of the filter on hook h; ok is false when Moat recorded none there.
func (a *clsactAttachment) recorded(h hook) (ClsactFilter, bool) {
	for _, rec := range a.filters {
		if rec.Parent == h.clsactParent() {
			return rec, true
		}
	}
	return ClsactFilter{}, false
}

func (a *clsactAttachment) running() ([2]ebpf.ProgramID, error) {
	var ids [2]ebpf.ProgramID
	dev, err := a.device()
	if dev == nil {
		return ids, err
	}
	for _, h := range []hook{ingress, egress} {
		rec, ok := a.recorded(h)
		if !ok {
			continue
		}
		bf, err := rec.ours(dev)
		if err != nil {
			return ids, err
		}
		if bf != nil {
			ids[h] = ebpf.ProgramID(bf.Id)
		}
	}
	return ids, nil
}

func (a *clsactAttachment) replace(h hook, prog *ebpf.Program) error {
	rec, ok := a.recorded(h)
	if !ok {
		return fmt.Errorf("no %s filter recorded: %w", h, ErrNotAttached)
	}
	if err := netlink.FilterReplace(rec.bpfFilter(a.ifindex, h, prog)); err != nil {
		return fmt.Errorf("replace clsact filter on ifindex %d: %w", a.ifindex, err)
	}
	return nil
}

// Close: there are no handles to let go of.
func (a *clsactAttachment) Close() error { return nil }

func (a *clsactAttachment) Detach() error {
	dev, err := a.device()
	if dev == nil {
		return err // a device that is gone took its qdisc with it
	}
	var errs []error
	for _, rec := range a.filters {
		bf, err := rec.ours(dev)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if bf == nil {
			continue
		}
		if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete clsact filter: %w", err))
		}
	}
	a.filters = nil
	if a.createdQdisc {
		remaining := 0
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(dev, parent)
			if err == nil {
				remaining += len(fs)
			}
		}
		if remaining == 0 && hasClsact(dev) { // a device moved between namespaces loses its clsact qdisc
			if err := netlink.QdiscDel(clsactQdisc(a.ifindex)); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete clsact qdisc: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// hasClsact reports whether the device has a clsact qdisc.
func hasClsact(dev netlink.Link) bool {
	qdiscs, err := netlink.QdiscList(dev)
	if err != nil {
		return true // let the delete say what is wrong
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}
