package endpoint

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
)

// Guard makes the datapath guard a recorded pod interface: its endpoint entry and the ipcache entries of its
// addresses carry identity, and, when the record says it runs without the datapath, the programs are attached to
// its host veth and the links pinned. It updates the record (the caller saves it).
//
// mode is how to attach: tcx, clsact, or empty for the default (bpf.NewAttacher): tcx in the end, reached through
// clsact at ADD where the veth has no tcx program (the record says MoveToTCX and Mover moves it), clsact where
// the kernel lacks tcx. Links a DEL released on the same veth are taken up instead, whatever the mode.
//
// When it was to attach and fails, it undoes what it did. On success it returns undo, for a caller whose next
// step fails; a re-tag of an attached pod (nothing to attach) has nothing to undo and returns nil.
func (l Lifecycle) Guard(dp *bpf.Datapath, r *Record, identity uint32, mode bpf.AttachMode) (undo func(), err error) {
	var addrs []netip.Addr
	for _, s := range r.Addresses {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("record address %q: %w", s, err)
		}
		addrs = append(addrs, a)
	}
	ep, err := bpf.NewEndpoint(identity, bpf.ModeEnforce, addrs)
	if err != nil {
		return nil, err
	}
	if r.MAC == "" {
		// a record of an older plugin: read the interface now (the datapath checks addresses only without it)
		r.MAC, r.LinkLocal = LinkOf(r.Netns, r.IfName)
	}
	mac, _ := net.ParseMAC(r.MAC)
	ll, _ := netip.ParseAddr(r.LinkLocal)
	ep.SetLink(mac, ll)
	attach := r.AttachMode == ""
	var written []netip.Prefix
	var att bpf.Attachment
	linkDir := r.Key().LinkDir(l.PinRoot)
	undo = func() {
		if att != nil {
			_ = att.Detach()
			_ = os.RemoveAll(linkDir) // with a pin made before a failed one
		}
		for _, p := range written {
			_ = dp.DeleteIPCache(p)
		}
		_ = dp.DeleteEndpoint(uint32(r.HostIfindex))
	}
	fail := func(err error) (func(), error) {
		if attach {
			undo()
		}
		return nil, err
	}

	if err := dp.SetEndpoint(uint32(r.HostIfindex), &ep); err != nil {
		return fail(err)
	}
	for _, a := range addrs {
		p := netip.PrefixFrom(a, a.BitLen())
		if err := dp.SetIPCache(p, bpf.ClassPod, identity); err != nil {
			return fail(err)
		}
		written = append(written, p)
	}
	r.Identity = identity
	if !attach {
		return nil, nil
	}
	// links a DEL released on this veth, which outlived its pod, are taken up: no grace period to wait
	if att, err = l.reclaim(dp, r.HostIfindex, linkDir); err != nil {
		return fail(err)
	}
	if att == nil {
		attacher, err := bpf.NewAttacher(mode)
		if err != nil {
			return fail(err)
		}
		if att, err = attacher.Attach(r.HostIfindex, dp.FromPod, dp.ToPod); err != nil {
			return fail(fmt.Errorf("attach the datapath to %s: %w", r.HostIfname, err))
		}
		if err := att.Pin(linkDir); err != nil {
			return fail(err)
		}
	}
	r.AttachmentRecord = att.Record()
	if err := att.Close(); err != nil { // the pins hold the links now
		return fail(err)
	}
	return func() { undo(); r.AttachmentRecord = bpf.AttachmentRecord{} }, nil
}

// LinkOf reads the MAC and IPv6 link-local address of a pod's interface from inside its network namespace; both
// are empty when the namespace or the interface is gone, and the link-local address when it has none.
func LinkOf(netnsPath, ifname string) (mac, linkLocal string) {
	if netnsPath == "" {
		return "", ""
	}
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return "", ""
	}
	defer podNS.Close()
	_ = podNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		if hw := l.Attrs().HardwareAddr; len(hw) == 6 {
			mac = hw.String()
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() {
				linkLocal = a.IP.String()
				break
			}
		}
		return nil
	})
	return mac, linkLocal
}
