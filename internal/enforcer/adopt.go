package enforcer

import (
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
)

// Reconcile brings the endpoints the plugin recorded in line with the enforcer's identities:
//   - a pod whose host veth is gone loses every trace (entries, links, pins, record);
//   - a pod that started without the datapath (failPolicy open, no enforcer yet) is attached now;
//   - a pod whose hooks run another build's programs gets this build's, swapped atomically in place;
//   - a pod tagged with another identity than its namespace's now (identity 0: the namespace was not known yet)
//     is re-tagged, and the generation is bumped so its flows are decided again.
//
// It runs on the host's network namespace, where the host veths are.
func (e *Enforcer) Reconcile(store endpoint.Store, pinRoot string) error {
	e.reconciling.Lock() // after an apply and on a timer: one at a time
	defer e.reconciling.Unlock()
	records, err := store.List("")
	if err != nil {
		return err
	}
	e.mu.Lock()
	identities := make(map[string]uint32, len(e.identities))
	for k, v := range e.identities {
		identities[k] = v
	}
	e.mu.Unlock()

	retagged := 0
	var errs []error
	for _, r := range records {
		log := e.log.WithFields(logrus.Fields{"pod": r.Namespace + "/" + r.Pod, "container": r.ContainerID})
		l, err := netlink.LinkByIndex(r.HostIfindex)
		if err != nil || l.Attrs().Name != r.HostIfname {
			log.Info("host veth gone: removing the endpoint")
			errs = append(errs, store.Forget(pinRoot, r.Network, r.ContainerID, r.IfName))
			continue
		}
		want := identities[r.Namespace]
		if r.AttachMode != "" && r.Identity == want {
			n, err := e.upgrade(r, pinRoot)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s/%s: %w", r.Namespace, r.Pod, err))
			} else if n > 0 {
				log.WithField("hooks", n).Info("endpoint programs upgraded in place")
			}
			continue
		}
		if _, err := endpoint.Guard(e.dp, r, want, pinRoot, ""); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", r.Namespace, r.Pod, err))
			continue
		}
		if err := store.Save(r); err != nil {
			errs = append(errs, err)
			continue
		}
		retagged++
		log.WithFields(logrus.Fields{"identity": want, "mode": r.AttachMode}).Info("endpoint adopted")
	}
	if retagged > 0 {
		if _, err := e.dp.BumpGeneration(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// upgrade puts this build's programs on a pod's hooks where they run other code.
func (e *Enforcer) upgrade(r *endpoint.Record, pinRoot string) (int, error) {
	var a *bpf.Attachment
	switch r.AttachMode {
	case bpf.ModeTCX:
		var err error
		if a, err = bpf.LoadPinnedAttachment(endpoint.LinkDir(pinRoot, r.Network, r.ContainerID)); err != nil {
			return 0, err
		}
		defer a.Close()
	case bpf.ModeClsact:
		a = &bpf.Attachment{Mode: bpf.ModeClsact, Ifindex: r.HostIfindex, Filters: r.Filters}
	default:
		return 0, nil
	}
	return a.Upgrade(e.dp.FromPod, e.dp.ToPod)
}
