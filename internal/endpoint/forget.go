package endpoint

import (
	"errors"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
)

// Forget removes every trace of one pod interface: links and their pins, endpoint and ipcache entries, the
// record. It succeeds when there is nothing (left) to remove, and never touches what now belongs to another pod.
func (s Store) Forget(pinRoot, network, containerID, ifname string) error {
	linkDir := LinkDir(pinRoot, network, containerID)
	var errs []error
	if _, err := os.Stat(linkDir); err == nil {
		if att, err := bpf.LoadPinnedAttachment(linkDir); err == nil {
			errs = append(errs, att.Detach())
		}
		errs = append(errs, os.RemoveAll(linkDir))
	}
	rec, ok, err := s.Load(network, containerID, ifname)
	if err != nil || !ok {
		return errors.Join(append(errs, err)...)
	}
	// the host veth may be gone and its ifindex taken by another pod's: act on it only while it is ours
	sameDevice := false
	if l, err := netlink.LinkByIndex(rec.HostIfindex); err == nil {
		sameDevice = l.Attrs().Name == rec.HostIfname
	}
	if rec.AttachMode == bpf.ModeClsact && sameDevice {
		att := &bpf.Attachment{Mode: bpf.ModeClsact, Ifindex: rec.HostIfindex, Filters: rec.Filters,
			CreatedQdisc: rec.CreatedQdisc}
		errs = append(errs, att.Detach())
	}
	if dp, err := bpf.OpenPinned(pinRoot); err == nil {
		errs = append(errs, s.forgetEntries(dp, rec, sameDevice))
		dp.Close()
	} else if !errors.Is(err, bpf.ErrNotPinned) {
		errs = append(errs, err)
	}
	errs = append(errs, s.Delete(network, containerID, ifname))
	return errors.Join(errs...)
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
