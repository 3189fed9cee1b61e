package enforcer

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
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
		if err := e.guard(r, want, pinRoot); err != nil {
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

// guard writes a recorded pod's endpoint and ipcache entries with identity, and attaches the datapath if it
// runs without it, updating the record.
func (e *Enforcer) guard(r *endpoint.Record, identity uint32, pinRoot string) error {
	var addrs []netip.Addr
	for _, s := range r.Addresses {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("record address %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}
	ep, err := bpf.NewEndpoint(identity, bpf.ModeEnforce, addrs)
	if err != nil {
		return err
	}
	if err := e.dp.SetEndpoint(uint32(r.HostIfindex), &ep); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := e.dp.SetIPCache(netip.PrefixFrom(a, a.BitLen()), bpf.ClassPod, identity); err != nil {
			return err
		}
	}
	r.Identity = identity
	if r.AttachMode != "" {
		return nil
	}
	attacher, err := bpf.NewAttacher("")
	if err != nil {
		return err
	}
	att, err := attacher.Attach(r.HostIfindex, e.dp.FromPod, e.dp.ToPod)
	if err != nil {
		return err
	}
	if err := att.Pin(endpoint.LinkDir(pinRoot, r.Network, r.ContainerID)); err != nil {
		_ = att.Detach()
		return err
	}
	r.AttachMode, r.Filters, r.CreatedQdisc = att.Mode, att.Filters, att.CreatedQdisc
	return att.Close()
}
