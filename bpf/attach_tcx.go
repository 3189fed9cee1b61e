package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Link pin names under an endpoint's pin folder.
const (
	FromPodLinkPin = "from_pod"
	ToPodLinkPin   = "to_pod"
)

// tcxAttachment holds the two tcx links, ingress first.
type tcxAttachment struct {
	ifindex int
	links   []link.Link
	pinDir  string // where the links are pinned; empty: not pinned
}

type tcxAttacher struct{}

func (tcxAttacher) Mode() AttachMode { return ModeTCX }

func (tcxAttacher) Attach(ifindex int, fromPod, toPod *ebpf.Program) (Attachment, error) {
	a := &tcxAttachment{ifindex: ifindex}
	for h, prog := range [2]*ebpf.Program{fromPod, toPod} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: hook(h).tcx(),
			Anchor: link.Head()})
		if err != nil {
			_ = a.Detach()
			return nil, fmt.Errorf("attach tcx %s to ifindex %d: %w", hook(h), ifindex, err)
		}
		a.links = append(a.links, l)
	}
	return a, nil
}

func (h hook) tcx() ebpf.AttachType {
	if h == ingress {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

// openTCX reopens the links pinned under dir; ifindex 0 takes the device from the links.
func openTCX(ifindex int, dir string) (*tcxAttachment, error) {
	a := &tcxAttachment{ifindex: ifindex, pinDir: dir}
	for _, name := range []string{FromPodLinkPin, ToPodLinkPin} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			_ = a.Close()
			return nil, fmt.Errorf("pinned link %s is missing: %w", filepath.Join(dir, name), ErrNotAttached)
		}
		if err != nil {
			_ = a.Close()
			return nil, fmt.Errorf("open pinned link %s: %w", filepath.Join(dir, name), err)
		}
		a.links = append(a.links, l)
	}
	if a.ifindex == 0 {
		if info, err := a.links[0].Info(); err == nil && info.TCX() != nil {
			a.ifindex = int(info.TCX().Ifindex)
		}
	}
	return a, nil
}

func (a *tcxAttachment) Mode() AttachMode { return ModeTCX }

func (a *tcxAttachment) Ifindex() int { return a.ifindex }

func (a *tcxAttachment) Record() AttachmentRecord { return AttachmentRecord{AttachMode: ModeTCX} }

func (a *tcxAttachment) Pin(dir string) error {
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
	a.pinDir = dir
	return nil
}

func (a *tcxAttachment) Check(fromPod, toPod *ebpf.Program) error {
	return check(a, a.ifindex, fromPod, toPod)
}

func (a *tcxAttachment) Upgrade(fromPod, toPod *ebpf.Program) (int, error) {
	return upgrade(a, a.ifindex, fromPod, toPod)
}

// running: a link that is no longer on the attachment's device (the device went, and the link with it) holds
// nothing there.
func (a *tcxAttachment) running() ([2]ebpf.ProgramID, error) {
	var ids [2]ebpf.ProgramID
	for h, l := range a.links {
		if h >= len(ids) {
			break
		}
		info, err := l.Info()
		if err != nil {
			return ids, fmt.Errorf("link info: %w", err)
		}
		if tcx := info.TCX(); tcx != nil && int(tcx.Ifindex) == a.ifindex {
			ids[h] = info.Program
		}
	}
	return ids, nil
}

func (a *tcxAttachment) replace(h hook, prog *ebpf.Program) error {
	if int(h) >= len(a.links) {
		return fmt.Errorf("no %s link: %w", h, ErrNotAttached)
	}
	return a.links[h].Update(prog)
}

func (a *tcxAttachment) Close() error {
	var errs []error
	for _, l := range a.links {
		errs = append(errs, l.Close())
	}
	a.links = nil
	return errors.Join(errs...)
}

func (a *tcxAttachment) Detach() error {
	var errs []error
	if a.pinDir != "" {
		for _, name := range []string{FromPodLinkPin, ToPodLinkPin} {
			if err := os.Remove(filepath.Join(a.pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, a.Close())
	return errors.Join(errs...)
}
