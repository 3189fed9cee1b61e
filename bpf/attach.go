package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode says how the programs hang on a host veth.
type AttachMode string

const (
	// ModeTCX attaches with tcx links at the head of each hook (Linux 6.6 and later).
	ModeTCX AttachMode = "tcx"
	// ModeClsact attaches direct-action cls_bpf filters under a clsact qdisc, for kernels without tcx.
	ModeClsact AttachMode = "clsact"
)

// Priority and handle of Moat's clsact filters: priority 1 runs first.
const (
	ClsactPriority = 1
	ClsactHandle   = 0x4d4f // "MO"
)

// Attacher puts the from-pod and to-pod programs on a host veth. Both modes leave alone every program, filter and
// qdisc that Moat did not create.
type Attacher interface {
	Mode() AttachMode
	Attach(ifindex int, fromPod, toPod *ebpf.Program) (*Attachment, error)
}

// Attachment is Moat's hold on one host veth.
type Attachment struct {
	Mode    AttachMode
	Ifindex int
	// tcx
	links []link.Link
	// clsact: what Moat added, so Detach removes exactly that
	Filters       []ClsactFilter
	CreatedQdisc  bool
	pinnedLinkDir string
}

// ClsactFilter records one filter Moat added under clsact.
type ClsactFilter struct {
	Parent   uint32 // netlink.HANDLE_MIN_INGRESS or HANDLE_MIN_EGRESS
	Priority uint16
	Handle   uint32
}

// NewAttacher returns the attacher of a mode; the empty mode tries tcx on every attach and falls back to clsact
// where the kernel lacks tcx (cilium/ebpf answers ErrNotSupported from its feature probe). Attachment.Mode says
// which one was used.
func NewAttacher(mode AttachMode) (Attacher, error) {
	if err := CheckAttachMode(mode); err != nil {
		return nil, err
	}
	switch mode {
	case ModeTCX:
		return tcxAttacher{}, nil
	case ModeClsact:
		return clsactAttacher{}, nil
	}
	return autoAttacher{}, nil
}

// CheckAttachMode accepts the attach modes a configuration may name: tcx, clsact, or empty (tcx where the kernel
// has it, clsact where not).
func CheckAttachMode(mode AttachMode) error {
	switch mode {
	case "", ModeTCX, ModeClsact:
		return nil
	}
	return fmt.Errorf("%q is not an attach mode: want %s or %s", mode, ModeTCX, ModeClsact)
}

type autoAttacher struct{}

// Mode is empty: each Attachment records the mode it got.
func (autoAttacher) Mode() AttachMode { return "" }

func (autoAttacher) Attach(ifindex int, fromPod, toPod *ebpf.Program) (*Attachment, error) {
	a, err := tcxAttacher{}.Attach(ifindex, fromPod, toPod)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return clsactAttacher{}.Attach(ifindex, fromPod, toPod)
	}
	return a, err
}

type tcxAttacher struct{}

func (tcxAttacher) Mode() AttachMode { return ModeTCX }

func (tcxAttacher) Attach(ifindex int, fromPod, toPod *ebpf.Program) (*Attachment, error) {
	a := &Attachment{Mode: ModeTCX, Ifindex: ifindex}
	for _, hook := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{fromPod, ebpf.AttachTCXIngress}, {toPod, ebpf.AttachTCXEgress}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: hook.prog, Attach: hook.at,
			Anchor: link.Head()})
		if err != nil {
			_ = a.Detach()
			return nil, fmt.Errorf("attach tcx %s to ifindex %d: %w", hookName(hook.at), ifindex, err)
		}
		a.links = append(a.links, l)
	}
	return a, nil
}

func hookName(at ebpf.AttachType) string {
	if at == ebpf.AttachTCXIngress {
		return "ingress (from pod)"
	}
	return "egress (to pod)"
}

// Link pin names under an endpoint's pin folder.
const (
	FromPodLinkPin = "from_pod"
	ToPodLinkPin   = "to_pod"
)

// Pin keeps tcx links alive after this process exits, under dir (made if missing).
func (a *Attachment) Pin(dir string) error {
	if a.Mode != ModeTCX {
		return nil // clsact filters live on the device; their record is the endpoint record
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create link pin folder %s: %w", dir, err)
	}
	for i, name := range []string{FromPodLinkPin, ToPodLinkPin} {
		if i >= len(a.links) {
			break
		}
		if err := a.links[i].Pin(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin link %s: %w", filepath.Join(dir, name), err)
		}
	}
	a.pinnedLinkDir = dir
	return nil
}

// LoadPinnedAttachment reopens the tcx links pinned under dir.
func LoadPinnedAttachment(dir string) (*Attachment, error) {
	a := &Attachment{Mode: ModeTCX, pinnedLinkDir: dir}
	for _, name := range []string{FromPodLinkPin, ToPodLinkPin} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if err != nil {
			_ = a.Close()
			return nil, fmt.Errorf("open pinned link %s: %w", filepath.Join(dir, name), err)
		}
		a.links = append(a.links, l)
	}
	if info, err := a.links[0].Info(); err == nil {
		if tcx := info.TCX(); tcx != nil {
			a.Ifindex = int(tcx.Ifindex)
		}
	}
	return a, nil
}

// ProgramIDs lists the programs this attachment's links run (tcx), for CHECK.
func (a *Attachment) ProgramIDs() ([]ebpf.ProgramID, error) {
	var ids []ebpf.ProgramID
	for _, l := range a.links {
		info, err := l.Info()
		if err != nil {
			return nil, fmt.Errorf("link info: %w", err)
		}
		ids = append(ids, info.Program)
	}
	return ids, nil
}

// Close lets go of this process's handles; pinned links stay attached.
func (a *Attachment) Close() error {
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	a.links = nil
	return errors.Join(errs...)
}

// Detach removes what Moat attached: the links (and their pins), or Moat's own clsact filters and the clsact
// qdisc only when Moat created it and nothing else hangs under it.
func (a *Attachment) Detach() error {
	var errs []error
	if a.pinnedLinkDir != "" {
		for _, name := range []string{FromPodLinkPin, ToPodLinkPin} {
			if err := os.Remove(filepath.Join(a.pinnedLinkDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	for _, l := range a.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	a.links = nil
	if a.Mode == ModeClsact {
		errs = append(errs, detachClsact(a))
	}
	return errors.Join(errs...)
}

type clsactAttacher struct{}

func (clsactAttacher) Mode() AttachMode { return ModeClsact }

func (clsactAttacher) Attach(ifindex int, fromPod, toPod *ebpf.Program) (*Attachment, error) {
	a := &Attachment{Mode: ModeClsact, Ifindex: ifindex}
	// tcx programs run before every clsact filter: one that redirects or drops would decide packets Moat never
	// saw, so a device that has any is refused (a kernel without tcx has none).
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if err == nil && len(res.Programs) > 0 {
			return nil, fmt.Errorf("ifindex %d has %d tcx program(s) on %s, which would run before Moat's clsact "+
				"filters: attach with tcx instead (conflist attachMode tcx)", ifindex, len(res.Programs), hookName(at))
		}
	}
	dev, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("find ifindex %d: %w", ifindex, err)
	}
	name := dev.Attrs().Name
	qdiscs, err := netlink.QdiscList(dev)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs of %s: %w", name, err)
	}
	hasClsact := false
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			hasClsact = true
		}
	}
	if !hasClsact {
		q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
		if err := netlink.QdiscAdd(q); err != nil {
			return nil, fmt.Errorf("add clsact qdisc to %s: %w", name, err)
		}
		a.CreatedQdisc = true
	}
	for _, hook := range []struct {
		prog   *ebpf.Program
		parent uint32
		name   string
	}{{fromPod, netlink.HANDLE_MIN_INGRESS, "moat_from_pod"}, {toPod, netlink.HANDLE_MIN_EGRESS, "moat_to_pod"}} {
		existing, err := netlink.FilterList(dev, hook.parent)
		if err != nil {
			_ = detachClsact(a)
			return nil, fmt.Errorf("list filters of %s: %w", name, err)
		}
		for _, f := range existing {
			at := f.Attrs()
			if at.Priority == ClsactPriority && at.Handle == ClsactHandle {
				_ = detachClsact(a)
				return nil, fmt.Errorf("%s already holds a filter at priority %d handle %#x: remove the stale "+
					"Moat filter or the tool that took its place", name, ClsactPriority, ClsactHandle)
			}
		}
		f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: hook.parent,
			Handle: ClsactHandle, Priority: ClsactPriority, Protocol: unix.ETH_P_ALL},
			Fd: hook.prog.FD(), Name: hook.name, DirectAction: true}
		if err := netlink.FilterAdd(f); err != nil {
			_ = detachClsact(a)
			return nil, fmt.Errorf("add clsact filter to %s: %w", name, err)
		}
		a.Filters = append(a.Filters, ClsactFilter{Parent: hook.parent, Priority: ClsactPriority,
			Handle: ClsactHandle})
	}
	return a, nil
}

func detachClsact(a *Attachment) error {
	dev, err := netlink.LinkByIndex(a.Ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil // the device is gone, and its qdisc with it
		}
		return fmt.Errorf("find ifindex %d: %w", a.Ifindex, err)
	}
	var errs []error
	for _, rec := range a.Filters {
		filters, err := netlink.FilterList(dev, rec.Parent)
		if err != nil {
			errs = append(errs, fmt.Errorf("list filters: %w", err))
			continue
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			at := f.Attrs()
			if !ok || at.Priority != rec.Priority || at.Handle != rec.Handle || !strings.HasPrefix(bf.Name, "moat_") {
				continue // not ours
			}
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete clsact filter: %w", err))
			}
		}
	}
	a.Filters = nil
	if a.CreatedQdisc {
		remaining := 0
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(dev, parent)
			if err == nil {
				remaining += len(fs)
			}
		}
		if remaining == 0 {
			q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.Ifindex,
				Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
			if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete clsact qdisc: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Upgrade makes the attachment run fromPod and toPod where it runs programs of other code (another build's
// object; programs with the same code, by tag, are left alone). tcx links are updated in place and clsact filters
// replaced at their handle, each an atomic swap: every packet meets the old program or the new one. It reports
// how many hooks changed.
func (a *Attachment) Upgrade(fromPod, toPod *ebpf.Program) (int, error) {
	progs := []*ebpf.Program{fromPod, toPod}
	tags := make([]string, len(progs))
	for i, p := range progs {
		info, err := p.Info()
		if err != nil {
			return 0, fmt.Errorf("program info: %w", err)
		}
		tags[i] = info.Tag
	}
	changed := 0
	switch a.Mode {
	case ModeTCX:
		for i, l := range a.links {
			if i >= len(progs) {
				break
			}
			li, err := l.Info()
			if err != nil {
				return changed, fmt.Errorf("link info: %w", err)
			}
			running, err := ebpf.NewProgramFromID(li.Program)
			if err != nil {
				return changed, fmt.Errorf("open attached program %d: %w", li.Program, err)
			}
			info, err := running.Info()
			running.Close()
			if err != nil {
				return changed, fmt.Errorf("attached program info: %w", err)
			}
			if info.Tag == tags[i] {
				continue
			}
			if err := l.Update(progs[i]); err != nil {
				return changed, fmt.Errorf("update %s link on ifindex %d: %w", hookName(hookOf(i)), a.Ifindex, err)
			}
			changed++
		}
	case ModeClsact:
		dev, err := netlink.LinkByIndex(a.Ifindex)
		if err != nil {
			return 0, fmt.Errorf("find ifindex %d: %w", a.Ifindex, err)
		}
		for _, rec := range a.Filters {
			prog, name, tag := fromPod, "moat_from_pod", tags[0]
			if rec.Parent == netlink.HANDLE_MIN_EGRESS {
				prog, name, tag = toPod, "moat_to_pod", tags[1]
			}
			filters, err := netlink.FilterList(dev, rec.Parent)
			if err != nil {
				return changed, fmt.Errorf("list filters: %w", err)
			}
			for _, f := range filters {
				bf, ok := f.(*netlink.BpfFilter)
				at := f.Attrs()
				if !ok || at.Priority != rec.Priority || at.Handle != rec.Handle || bf.Tag == tag {
					continue
				}
				nf := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: a.Ifindex, Parent: rec.Parent,
					Handle: rec.Handle, Priority: rec.Priority, Protocol: unix.ETH_P_ALL},
					Fd: prog.FD(), Name: name, DirectAction: true}
				if err := netlink.FilterReplace(nf); err != nil {
					return changed, fmt.Errorf("replace clsact filter on %s: %w", dev.Attrs().Name, err)
				}
				changed++
			}
		}
	}
	return changed, nil
}

func hookOf(i int) ebpf.AttachType {
	if i == 0 {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}
