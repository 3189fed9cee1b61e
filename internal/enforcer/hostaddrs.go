package enforcer

import (
	"context"
	"errors"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// HostAddresses lists the unicast addresses of the current network namespace (the host's: the enforcer runs on
// the node's network) other than loopback and link-local ones.
func HostAddresses() ([]netip.Addr, error) {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

// WatchHostAddresses keeps the host's addresses in force (SetHostAddresses) until ctx ends: now, and at every
// address change of the network namespace, such as the bridge getting its gateway address at the first pod's ADD.
func (e *Enforcer) WatchHostAddresses(ctx context.Context) error {
	updates := make(chan netlink.AddrUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{}); err != nil {
		return err
	}
	set := func() {
		addrs, err := HostAddresses()
		if err == nil {
			err = e.SetHostAddresses(addrs)
		}
		if err != nil {
			e.log.WithError(err).Error("cannot apply this host's addresses; the ones in force stay")
		}
	}
	set()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-updates:
			if !ok {
				return errors.New("the subscription to address changes ended")
			}
			for more := true; more; { // a burst of changes is read once
				select {
				case _, ok := <-updates:
					more = ok
				default:
					more = false
				}
			}
			set()
		}
	}
}
