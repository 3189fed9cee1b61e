package bpf

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// AttachMode says how the programs hang on a host veth.
type AttachMode string

const (
	// ModeTCX attaches with tcx links at the head of each hook (Linux 6.6 and later).
	ModeTCX AttachMode = "tcx"
	// ModeClsact attaches direct-action cls_bpf filters under a clsact qdisc, for kernels without tcx.
	ModeClsact AttachMode = "clsact"
)

// Attachment is Moat's hold on one host veth: the from-pod program on its ingress hook, the to-pod program on its
// egress hook, as tcx links or as clsact filters. Whoever made it (the plugin's ADD, the enforcer's adoption),
// every later user takes it up from its record with OpenAttachment and inspects, upgrades and removes it through
// this type. Both modes leave alone every program, filter and qdisc that Moat did not create.
type Attachment interface {
	Mode() AttachMode
	// Ifindex is the device the attachment was made on.
	Ifindex() int
	// Record is what an endpoint record keeps of the attachment, for OpenAttachment.
	Record() AttachmentRecord
	// Pin keeps the attachment after this process exits: tcx links are pinned under dir (made if missing);
	// clsact filters live on the device, and their record is all that needs keeping.
	Pin(dir string) error
	// Check is the one answer to "is this pod guarded?": nil when both hooks are in place on the device and run
	// the code of fromPod and toPod. Code is compared by tag, so a restarted enforcer's programs (the same code,
	// new IDs) pass. Otherwise the error wraps ErrNotAttached (a hook holds none of Moat's programs, or its links
	// are on another device) or ErrOtherPrograms (a hook runs other code, another build's: Upgrade swaps it).
	Check(fromPod, toPod *ebpf.Program) error
	// Upgrade makes each hook that runs other code than fromPod and toPod run them, each an atomic swap (every
	// packet meets the old program or the new one), and reports how many hooks changed.
	Upgrade(fromPod, toPod *ebpf.Program) (int, error)
	// Close lets go of this process's handles; pinned links and clsact filters stay in place.
	Close() error
	// Detach removes what Moat attached: the links and their pins, or Moat's own clsact filters, and the clsact
	// qdisc only when Moat created it and nothing else hangs under it.
	Detach() error
}

// ErrNotAttached means a hook holds none of Moat's programs: the pod is not guarded.
var ErrNotAttached = errors.New("not attached")

// ErrOtherPrograms means both hooks hold Moat's programs, but one runs other code than asked (another build's).
var ErrOtherPrograms = errors.New("runs other programs")

// AttachmentRecord is what an endpoint record keeps of an attachment, so that any process can take it up again
// (OpenAttachment). Its JSON names are the endpoint record's.
type AttachmentRecord struct {
	AttachMode   AttachMode     `json:"attachMode,omitempty"`    // empty: not attached (failPolicy open, no datapath)
	Filters      []ClsactFilter `json:"clsactFilters,omitempty"` // clsact: the filters Moat added
	CreatedQdisc bool           `json:"createdQdisc,omitempty"`  // clsact: Moat added the qdisc too
	// MoveToTCX marks a clsact attachment the default mode made at ADD to spare the pod tcx's grace periods: the
	// enforcer moves it to tcx links at the head of both hooks (MoveToTCX), off the pod's critical path.
	MoveToTCX bool `json:"moveToTCX,omitempty"`
}

// State names the attachment for people (moatctl): its mode, and for a staged one that it is moving to tcx.
func (r AttachmentRecord) State() string {
	if r.AttachMode == ModeClsact && r.MoveToTCX {
		return "clsact, moving to tcx"
	}
	return string(r.AttachMode)
}

// OpenAttachment takes up the attachment a record describes on device ifindex: tcx links from their pins under
// linkDir (ifindex 0: on whatever device they are), clsact filters from the record. A record of no attachment
// gives an error that wraps ErrNotAttached.
func OpenAttachment(rec AttachmentRecord, ifindex int, linkDir string) (Attachment, error) {
	switch rec.AttachMode {
	case ModeTCX:
		return openTCX(ifindex, linkDir)
	case ModeClsact:
		return &clsactAttachment{ifindex: ifindex, filters: rec.Filters, createdQdisc: rec.CreatedQdisc,
			moveToTCX: rec.MoveToTCX}, nil
	case "":
		return nil, fmt.Errorf("ifindex %d: %w (no attachment recorded)", ifindex, ErrNotAttached)
	}
	return nil, CheckAttachMode(rec.AttachMode)
}

// Attacher puts the from-pod and to-pod programs on a host veth.
type Attacher interface {
	Mode() AttachMode
	Attach(ifindex int, fromPod, toPod *ebpf.Program) (Attachment, error)
}

// NewAttacher returns the attacher of a mode. The empty mode is the default, staged: tcx links at the head of
// both hooks in the end, reached through clsact at ADD where that keeps tcx's ordering (attach_staged.go), and
// clsact where the kernel lacks tcx. Attachment.Mode and Record say which one was used.
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
	return stagedAttacher{}, nil
}

// CheckAttachMode accepts the attach modes a configuration may name: tcx, clsact, or empty (the default: tcx
// where the kernel has it, reached through clsact at ADD; clsact where not).
func CheckAttachMode(mode AttachMode) error {
	switch mode {
	case "", ModeTCX, ModeClsact:
		return nil
	}
	return fmt.Errorf("%q is not an attach mode: want %s or %s", mode, ModeTCX, ModeClsact)
}

// hook is one of an attachment's two places: ingress sees what the pod sends, egress what it receives.
type hook int

const (
	ingress hook = iota
	egress
)

func (h hook) String() string {
	if h == ingress {
		return "ingress (from pod)"
	}
	return "egress (to pod)"
}

// hooks is what each mode answers, so that Check and Upgrade decide the same way for both.
type hooks interface {
	// running is the program each hook runs, ingress first; 0 where a hook holds none of Moat's.
	running() ([2]ebpf.ProgramID, error)
	// replace swaps the program of one hook atomically.
	replace(h hook, prog *ebpf.Program) error
}

// check is Check for both modes.
func check(a hooks, ifindex int, fromPod, toPod *ebpf.Program) error {
	_, err := stale(a, ifindex, fromPod, toPod)
	return err
}

// upgrade is Upgrade for both modes: the hooks check finds running other code get the programs asked for.
func upgrade(a hooks, ifindex int, fromPod, toPod *ebpf.Program) (int, error) {
	others, err := stale(a, ifindex, fromPod, toPod)
	if err != nil && !errors.Is(err, ErrOtherPrograms) {
		return 0, err
	}
	progs := [2]*ebpf.Program{fromPod, toPod}
	for i, h := range others {
		if err := a.replace(h, progs[h]); err != nil {
			return i, fmt.Errorf("upgrade the %s program on ifindex %d: %w", h, ifindex, err)
		}
	}
	return len(others), nil
}

// stale lists the hooks that run other code than asked. The error wraps ErrNotAttached when a hook holds none of
// Moat's programs, and ErrOtherPrograms when some hooks are stale.
func stale(a hooks, ifindex int, fromPod, toPod *ebpf.Program) ([]hook, error) {
	ids, err := a.running()
	if err != nil {
		return nil, err
	}
	for _, h := range []hook{ingress, egress} {
		if ids[h] == 0 {
			return nil, fmt.Errorf("the %s hook of ifindex %d holds no program of Moat's: %w", h, ifindex, ErrNotAttached)
		}
	}
	var others []hook
	var errs []error
	for h, want := range [2]*ebpf.Program{fromPod, toPod} {
		same, err := sameCode(ids[h], want)
		if err != nil {
			return nil, fmt.Errorf("the %s hook of ifindex %d: %w", hook(h), ifindex, err)
		}
		if !same {
			others = append(others, hook(h))
			errs = append(errs, fmt.Errorf("the %s hook of ifindex %d runs program %d, other code than the datapath's: %w",
				hook(h), ifindex, ids[h], ErrOtherPrograms))
		}
	}
	return others, errors.Join(errs...)
}

// sameCode reports whether the program with ID id is want, or has its code (its tag) and uses the same maps: the
// program of an enforcer before a restart is the same as its own, one of a build whose maps were migrated to
// another layout (same code, other maps) is not.
func sameCode(id ebpf.ProgramID, want *ebpf.Program) (bool, error) {
	wantInfo, err := want.Info()
	if err != nil {
		return false, fmt.Errorf("program info: %w", err)
	}
	if wantID, ok := wantInfo.ID(); ok && wantID == id {
		return true, nil
	}
	running, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false, fmt.Errorf("open attached program %d: %w", id, err)
	}
	defer running.Close()
	info, err := running.Info()
	if err != nil {
		return false, fmt.Errorf("attached program info: %w", err)
	}
	if info.Tag != wantInfo.Tag {
		return false, nil
	}
	runMaps, ok1 := info.MapIDs()
	wantMaps, ok2 := wantInfo.MapIDs()
	if !ok1 || !ok2 {
		return true, nil // a kernel that does not say: the code decides
	}
	slices.Sort(runMaps)
	slices.Sort(wantMaps)
	return slices.Equal(runMaps, wantMaps), nil
}
