package endpoint

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
)

// Forget removes every trace of one pod interface: links and their pins, endpoint and ipcache entries, the
// record. It succeeds when there is nothing (left) to remove, and never touches what now belongs to another pod.
// Detaching a tcx link from a device that is still there waits for the kernel's grace periods: Release is the
// cheap way for a pod that is going away.
func (l Lifecycle) Forget(k Key) error {
	return l.forget(k, false)
}

// Release is DEL's Forget: the same, except that tcx links stay attached, their pins moved to the released
// folder (key.go), because the primary plugin's DEL, which runs after Moat's, deletes the veth anyway; a device
// that goes drops its tcx entry without waiting a grace period per hook, and then the pins go cheaply
// (SweepReleased). Until then the programs stay on the veth with no endpoint entry, so any packet on it is
// dropped; if the veth survives its pod, the enforcer detaches them later (Mover), and an ADD that finds them on
// its veth takes them up again (Guard).
func (l Lifecycle) Release(k Key) error {
	return l.forget(k, true)
}

func (l Lifecycle) forget(k Key, release bool) error {
	unlock, err := l.Store.lock(k.Network, false)
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	if release {
		errs = append(errs, l.releaseLinks(k))
	} else if _, err := detachLinks(k.LinkDir(l.PinRoot)); err != nil { // pinned before a record was saved, too
		errs = append(errs, err)
	}
	rec, ok, err := l.Store.Load(k)
	if err != nil || !ok {
		return errors.Join(append(errs, err)...)
	}
	// the host veth may be gone and its ifindex taken by another pod's: act on it only while it is ours
	sameDevice := false
	if link, err := netlink.LinkByIndex(rec.HostIfindex); err == nil {
		sameDevice = link.Attrs().Name == rec.HostIfname
	}
	if rec.AttachMode == bpf.ModeClsact && sameDevice {
		att, err := rec.Attachment(l.PinRoot)
		if err == nil {
			err = att.Detach()
		}
		errs = append(errs, err)
	}
	if dp, err := bpf.OpenPinned(l.PinRoot); err == nil {
		errs = append(errs, l.Store.forgetEntries(dp, rec, sameDevice))
		dp.Close()
	} else if !errors.Is(err, bpf.ErrNotPinned) {
		errs = append(errs, err)
	}
	errs = append(errs, l.Store.Delete(k))
	return errors.Join(errs...)
}

// DetachAllLinks detaches every attachment whose links are pinned under the pin root, whether a record names it
// or not, released ones too (uninstall, after forgetting the recorded pods), and reports how many it found.
func (l Lifecycle) DetachAllLinks() (int, error) {
	dirs, err := linkDirs(l.PinRoot)
	if err != nil {
		return 0, err
	}
	released, err := releasedDirs(l.PinRoot)
	if err != nil {
		return 0, err
	}
	dirs = append(dirs, released...)
	n := 0
	var errs []error
	for _, dir := range dirs {
		found, err := detachLinks(dir)
		if found {
			n++
		}
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// detachLinks detaches the links pinned in dir and removes the folder; found says whether there were links.
func detachLinks(dir string) (found bool, err error) {
	if _, err := os.Stat(dir); err != nil {
		return false, nil
	}
	var errs []error
	if att, err := bpf.OpenAttachment(bpf.AttachmentRecord{AttachMode: bpf.ModeTCX}, 0, dir); err == nil {
		found = true
		if err := att.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach the links pinned in %s: %w", dir, err))
		}
	}
	return found, errors.Join(append(errs, os.RemoveAll(dir))...)
}

// forgetEntries removes the pod's endpoint entry and the ipcache entries of addresses no other record holds.
func (s Store) forgetEntries(dp *bpf.Datapath, rec *Record, sameDevice bool) error {
	var errs []error
	if ep, ok, err := dp.LookupEndpoint(uint32(rec.HostIfindex)); err == nil && ok {
		var have []string
		for _, a := range ep.Addrs() {
			have = append(have, a.String())
		}
		if sameDevice || SameAddresses(have, rec.Addresses) {
			errs = append(errs, dp.DeleteEndpoint(uint32(rec.HostIfindex)))
		}
	}
	others, err := s.List("")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	held := map[string]bool{}
	for _, o := range others {
		if o.ContainerID == rec.ContainerID && o.IfName == rec.IfName && o.Network == rec.Network {
			continue
		}
		for _, a := range o.Addresses {
			held[a] = true
		}
	}
	for _, s := range rec.Addresses {
		a, err := netip.ParseAddr(s)
		if err != nil || held[s] {
			continue
		}
		errs = append(errs, dp.DeleteIPCache(netip.PrefixFrom(a, a.BitLen())))
	}
	return errors.Join(errs...)
}

// SameAddresses reports whether two lists hold the same addresses, in any order.
func SameAddresses(a, b []string) bool {
	return slices.Equal(sortedCopy(a), sortedCopy(b))
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
