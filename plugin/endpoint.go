package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/endpoint"
)

// adder is one ADD: what it did so far, so a failure undoes exactly that.
type adder struct {
	conf *config
	args *skel.CmdArgs
	log  *logrus.Entry
	life endpoint.Lifecycle

	dp        *bpf.Datapath
	undoGuard func() // undoes Guard when a later step fails
	record    bool
}

func (a *adder) add() error {
	namespace, pod, uid, err := podArgs(a.conf, a.args.Args)
	if err != nil {
		return err
	}
	log := a.log.WithFields(logrus.Fields{"pod": namespace + "/" + pod, "container": a.args.ContainerID})
	addrs, err := podAddresses(a.conf.prevResult, a.args)
	if err != nil {
		return err
	}
	hostIndex, hostName, err := hostPeer(a.args.Netns, a.args.IfName)
	if err != nil {
		return err
	}
	// A repeated ADD of the same attachment replaces what the first one left (links still on this veth are
	// taken up again by Guard).
	if err := a.life.Release(a.conf.key(a.args)); err != nil {
		return err
	}
	rec := &endpoint.Record{Network: a.conf.Name, ContainerID: a.args.ContainerID, IfName: a.args.IfName,
		Netns: a.args.Netns, Namespace: namespace, Pod: pod, PodUID: uid, HostIfname: hostName,
		HostIfindex: hostIndex, Created: time.Now().UTC()}
	for _, addr := range addrs {
		rec.Addresses = append(rec.Addresses, addr.String())
	}
	rec.MAC, rec.LinkLocal = endpoint.LinkOf(a.args.Netns, a.args.IfName)

	dp, err := bpf.OpenPinned(a.conf.PinRoot)
	switch {
	case errors.Is(err, bpf.ErrNotPinned) && a.conf.FailPolicy == cniconfig.FailOpen:
		log.Warn("the enforcer's state is missing: the pod starts unprotected, and the enforcer adopts it when it starts")
		a.record = true
		return a.life.Store.Save(rec)
	case errors.Is(err, bpf.ErrNotPinned):
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("moat: cannot guard pod %s/%s: the enforcer's "+
			"state is missing under %s (is moat-enforcer running?)", namespace, pod, a.conf.PinRoot), err.Error())
	case err != nil:
		return fmt.Errorf("open the enforcer's state: %w", err)
	}
	a.dp = dp

	identity, ok, err := dp.NamespaceIdentity(namespace)
	if err != nil {
		return err
	}
	if !ok && a.conf.FailPolicy == cniconfig.FailClosed {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("moat: namespace %s has no identity yet: the "+
			"enforcer has not published it", namespace), "failPolicy closed: try again later")
	}
	if !ok {
		log.Warn("namespace has no identity yet: the pod starts under the cluster defaults and is re-tagged later")
	}

	undo, err := a.life.Guard(dp, rec, identity, bpf.AttachMode(a.conf.AttachMode))
	if errors.Is(err, bpf.ErrTooManyAddresses) {
		return types.NewError(types.ErrInvalidNetworkConfig, "moat: "+err.Error(), "")
	}
	if err != nil {
		return err
	}
	a.undoGuard = undo
	if err := a.life.Store.Save(rec); err != nil {
		return err
	}
	a.record = true
	dp.Close()
	log.WithFields(logrus.Fields{"identity": identity, "hostVeth": hostName, "mode": rec.AttachMode}).Info("pod guarded")
	return nil
}

// rollback undoes what a failed add did, newest first.
func (a *adder) rollback() {
	if a.record {
		_ = a.life.Store.Delete(a.conf.key(a.args))
	}
	if a.undoGuard != nil {
		a.undoGuard()
	}
	if a.dp != nil {
		a.dp.Close()
	}
}

// podAddresses finds the pod's interface in prevResult and its addresses.
func podAddresses(prev *current.Result, args *skel.CmdArgs) ([]netip.Addr, error) {
	idx := -1
	for i, iface := range prev.Interfaces {
		if iface.Name == args.IfName && iface.Sandbox != "" {
			idx = i
		}
	}
	if idx < 0 {
		return nil, configError(types.ErrInvalidNetworkConfig,
			"moat: prevResult has no interface %s inside the pod's network namespace", args.IfName)
	}
	var addrs []netip.Addr
	for _, ip := range prev.IPs {
		if ip.Interface != nil && *ip.Interface != idx {
			continue
		}
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return nil, configError(types.ErrInvalidNetworkConfig, "moat: prevResult address %v is not an IP", ip.Address)
		}
		addrs = append(addrs, a.Unmap())
	}
	if len(addrs) == 0 {
		return nil, configError(types.ErrInvalidNetworkConfig, "moat: prevResult gives interface %s no address", args.IfName)
	}
	return addrs, nil
}

// hostPeer finds the host side of the pod's veth by the peer ifindex the pod side reports.
func hostPeer(netnsPath, ifname string) (int, string, error) {
	if netnsPath == "" {
		return 0, "", configError(types.ErrInvalidEnvironmentVariables, "moat: CNI_NETNS is empty")
	}
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return 0, "", types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("moat: network namespace %s: %v", netnsPath, err), "")
	}
	defer podNS.Close()
	var peer int
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s in the pod: %w", ifname, err)
		}
		veth, ok := l.(*netlink.Veth)
		if !ok {
			return fmt.Errorf("%s in the pod is a %s, not a veth: Moat guards veth-based networks", ifname, l.Type())
		}
		peer, err = netlink.VethPeerIndex(veth)
		return err
	})
	if err != nil {
		return 0, "", err
	}
	host, err := netlink.LinkByIndex(peer)
	if err != nil {
		return 0, "", fmt.Errorf("the host side of %s (ifindex %d) is gone: %w", ifname, peer, err)
	}
	return peer, host.Attrs().Name, nil
}

// check verifies that the pod's interface is guarded as ADD left it.
func check(conf *config, args *skel.CmdArgs) error {
	rec, ok, err := conf.Lifecycle().Store.Load(conf.key(args))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no endpoint record for container %s interface %s: ADD never completed", args.ContainerID, args.IfName)
	}
	addrs, err := podAddresses(conf.prevResult, args)
	if err != nil {
		return err
	}
	hostIndex, _, err := hostPeer(args.Netns, args.IfName)
	if err != nil {
		return err
	}
	if hostIndex != rec.HostIfindex {
		return fmt.Errorf("the pod's host veth is ifindex %d, but Moat guards ifindex %d", hostIndex, rec.HostIfindex)
	}
	if rec.AttachMode == "" {
		return fmt.Errorf("pod %s/%s runs without Moat's datapath (started under failPolicy open)", rec.Namespace, rec.Pod)
	}
	dp, err := bpf.OpenPinned(conf.PinRoot)
	if err != nil {
		return err
	}
	defer dp.Close()
	if err := rec.CheckAttachment(dp); err != nil {
		return fmt.Errorf("the pod's programs: %w", err)
	}
	ep, ok, err := dp.LookupEndpoint(uint32(hostIndex))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no endpoint entry for ifindex %d: the pod's packets are dropped", hostIndex)
	}
	var have, want []string
	for _, a := range ep.Addrs() {
		have = append(have, a.String())
	}
	for _, a := range addrs {
		want = append(want, a.String())
	}
	if !endpoint.SameAddresses(have, want) {
		return fmt.Errorf("the endpoint entry holds addresses %v, prevResult gives %v", have, want)
	}
	if ep.Identity != rec.Identity {
		return fmt.Errorf("the endpoint entry carries identity %d, the record %d", ep.Identity, rec.Identity)
	}
	return nil
}
