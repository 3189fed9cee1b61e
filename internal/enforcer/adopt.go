package enforcer

import (
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/internal/endpoint"
)

// Reconcile brings the endpoints the plugin recorded in line with the enforcer's identities:
//   - a pod whose host veth is gone loses every trace (entries, links, pins, record);
//   - a pod that started without the datapath (failPolicy open, no enforcer yet) is attached now;
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
			continue
		}
		if _, err := endpoint.Guard(e.dp, r, want, pinRoot); err != nil {
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
