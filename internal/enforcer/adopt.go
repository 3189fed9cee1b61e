package enforcer

import (
	"errors"
	"fmt"
	"maps"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
)

// Reconcile brings the endpoints the plugin recorded in line with the enforcer's identities (call it only once
// the enforcer has applied its policy: it moves pods to this build's programs):
//   - a pod whose host veth is gone loses every trace (entries, links, pins, record);
//   - a pod that started without the datapath (failPolicy open, no enforcer yet) is attached now;
//   - a pod whose hooks run another build's programs gets this build's, swapped atomically in place;
//   - a pod tagged with another identity than its namespace's now (identity 0: the namespace was not known yet)
//     is re-tagged, and the generation is bumped so its flows are decided again;
//   - a pod whose namespace is gone keeps its identity, which lingers until its last pod is gone (see lingerer):
//     it never falls back to identity 0 and the cluster defaults. Then the identity is released.
//   - once all of that went, a datapath migrated from an older layout is committed (bpf.Datapath.CommitMigration).
//
// It runs on the host's network namespace, where the host veths are.
func (e *Enforcer) Reconcile(store endpoint.Store, pinRoot string) error {
	e.reconciling.Lock() // after an apply and on a timer: one at a time
	defer e.reconciling.Unlock()
	life := endpoint.Lifecycle{Store: store, PinRoot: pinRoot}
	records, err := store.List("")
	if err != nil {
		return err
	}
	e.mu.Lock()
	identities := maps.Clone(e.identities)
	lingering := map[uint32]string{} // identity -> its gone namespace ("" when not known)
	for id, l := range e.lingering {
		if l.namespace != nil {
			lingering[id] = l.namespace.Name
		} else {
			lingering[id] = ""
		}
	}
	e.mu.Unlock()

	retagged := 0
	var errs []error
	for _, r := range records {
		log := e.log.WithFields(logrus.Fields{"pod": r.Namespace + "/" + r.Pod, "container": r.ContainerID})
		l, err := netlink.LinkByIndex(r.HostIfindex)
		if err != nil || l.Attrs().Name != r.HostIfname {
			log.Info("host veth gone: removing the endpoint")
			errs = append(errs, life.Forget(r.Key()))
			continue
		}
		want, known := identities[r.Namespace]
		if name, ok := lingering[r.Identity]; !known && ok && (name == r.Namespace || name == "") {
			want = r.Identity // its namespace is gone: the pod keeps its identity while it lives
		}
		if r.AttachMode != "" && r.Identity == want {
			n, err := e.upgrade(r, pinRoot)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s/%s: %w", r.Namespace, r.Pod, err))
			} else if n > 0 {
				log.WithField("hooks", n).Info("endpoint programs upgraded in place")
			}
			continue
		}
		if _, err := life.Guard(e.dp, r, want, ""); err != nil {
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
	if err := e.releaseUnheld(); err != nil {
		errs = append(errs, fmt.Errorf("release identities no pod holds: %w", err))
	}
	if from, ok := e.dp.Migrating(); ok && len(errs) == 0 {
		// every recorded pod runs this build's programs now: the older layout's maps can go
		if err := e.dp.CommitMigration(); err != nil {
			return fmt.Errorf("commit the datapath's migration from layout %d (retried at the next reconcile): %w", from, err)
		}
		e.log.WithFields(logrus.Fields{"fromLayout": from, "toLayout": bpf.LayoutVersion}).Info("datapath migration committed")
	}
	return errors.Join(errs...)
}

// upgrade puts this build's programs on a pod's hooks where the attachment's check finds other code; a pod whose
// hooks are not in place is an error.
func (e *Enforcer) upgrade(r *endpoint.Record, pinRoot string) (int, error) {
	a, err := r.Attachment(pinRoot)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	if err := a.Check(e.dp.FromPod, e.dp.ToPod); !errors.Is(err, bpf.ErrOtherPrograms) {
		return 0, err
	}
	return a.Upgrade(e.dp.FromPod, e.dp.ToPod)
}
