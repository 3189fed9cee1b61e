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
func (l Lifecycle) Forget(k Key) error {
	var errs []error
	if _, err := detachLinks(k.LinkDir(l.PinRoot)); err != nil { // pinned before a record was saved, too
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
// or not (uninstall, after forgetting the recorded pods), and reports how many it found.
func (l Lifecycle) DetachAllLinks() (int, error) {
	dirs, err := linkDirs(l.PinRoot)
	if err != nil {
		return 0, err
	}
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
