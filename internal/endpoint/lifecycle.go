package endpoint

import (
	"fmt"

	"github.com/moatfw/moat/bpf"
)

// Lifecycle is the one owner of what guarding a pod interface leaves on a node: its endpoint and ipcache entries
// in the datapath, the attachment of the programs to its host veth with the links pinned under PinRoot, and its
// record in Store. Guard begins an endpoint's life and Forget ends it; the plugin, the IPAM shim, the enforcer's
// reconcile and the installer's uninstall all go through them.
type Lifecycle struct {
	Store   Store
	PinRoot string // the enforcer's pin root: the pinned datapath, and the links under <PinRoot>/endpoints
}

// Attachment takes up the attachment the record names on its host veth: the one way from a record to its
// attachment. A record of a pod that runs without the datapath gives an error that wraps bpf.ErrNotAttached.
func (r *Record) Attachment(pinRoot string) (bpf.Attachment, error) {
	return bpf.OpenAttachment(r.AttachmentRecord, r.HostIfindex, r.Key().LinkDir(pinRoot))
}

// CheckAttachment is the one health check of a pod's attachment, for CHECK, the enforcer's status, its reconcile
// and the installer's uninstall: nil when both hooks are in place on the recorded host veth and run the code of
// dp's programs; otherwise an error that wraps bpf.ErrNotAttached or bpf.ErrOtherPrograms (Attachment.Check).
// It does not look at the device's name: whether the host veth is still the pod's is the caller's question.
func (r *Record) CheckAttachment(dp *bpf.Datapath) error {
	att, err := r.Attachment(dp.Root)
	if err != nil {
		return err
	}
	defer att.Close()
	if err := att.Check(dp.FromPod, dp.ToPod); err != nil {
		return fmt.Errorf("%s attachment: %w", r.AttachMode, err)
	}
	return nil
}
