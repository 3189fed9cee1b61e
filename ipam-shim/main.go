// Command moat-ipam is Moat's IPAM shim. It delegates every command to the IPAM plugin named in its `delegate`
// key and keeps Moat's address book consistent with that allocator: on DEL the address's endpoint and ipcache
// entries go before the delegate may hand the address out again; on ADD an address still held by the record of a
// container that no longer exists is cleaned before the new pod uses it. So an address reused in another
// namespace never carries the old namespace's identity.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/endpoint"
	moatversion "github.com/moatfw/moat/internal/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "moat-ipam "+moatversion.Version)
}

// shim is one invocation: the network's name and version, the delegate's type and the stdin it gets.
type shim struct {
	network, cniVersion string
	delegateType        string
	delegateStdin       []byte
	life                endpoint.Lifecycle
}

func parse(stdin []byte) (*shim, error) {
	var netConf struct {
		types.NetConf
		IPAM cniconfig.IPAMConf `json:"ipam"`
	}
	if err := json.Unmarshal(stdin, &netConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "moat-ipam: cannot decode the network configuration: "+err.Error(), "")
	}
	var delegate struct {
		Type string `json:"type"`
	}
	if len(netConf.IPAM.Delegate) == 0 || json.Unmarshal(netConf.IPAM.Delegate, &delegate) != nil || delegate.Type == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			`moat-ipam: the ipam section needs "delegate": {"type": ...} naming the real IPAM plugin`, "")
	}
	if delegate.Type == cniconfig.IPAMShimType {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "moat-ipam: the delegate cannot be moat-ipam itself", "")
	}
	// the delegate sees the same network configuration, with its own ipam section
	var whole map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &whole); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "moat-ipam: "+err.Error(), "")
	}
	whole["ipam"] = netConf.IPAM.Delegate
	delegateStdin, err := json.Marshal(whole)
	if err != nil {
		return nil, err
	}
	return &shim{network: netConf.Name, cniVersion: netConf.CNIVersion, delegateType: delegate.Type,
		delegateStdin: delegateStdin, life: netConf.IPAM.Lifecycle()}, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	s, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	res, err := invoke.DelegateAdd(context.Background(), s.delegateType, s.delegateStdin, nil)
	if err != nil {
		return err
	}
	result, err := current.NewResultFromResult(res)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "moat-ipam: cannot convert the delegate's result: "+err.Error(), "")
	}
	for _, ip := range result.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			if err := s.evictStaleHolders(a.Unmap(), args); err != nil {
				// the address may still carry an old identity: give it back rather than use it
				_ = invoke.DelegateDel(context.Background(), s.delegateType, s.delegateStdin, nil)
				return types.NewError(types.ErrInternal, fmt.Sprintf("moat-ipam: cannot clean the old holder of %s", a), err.Error())
			}
		}
	}
	return types.PrintResult(result, s.cniVersion)
}

// evictStaleHolders removes the traces of every other pod interface of this network whose record still holds
// addr: the allocator has handed addr out again, so their container is gone.
func (s *shim) evictStaleHolders(addr netip.Addr, args *skel.CmdArgs) error {
	records, err := s.life.Store.List(s.network)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range records {
		if r.ContainerID == args.ContainerID && r.IfName == args.IfName {
			continue
		}
		for _, held := range r.Addresses {
			if held == addr.String() {
				errs = append(errs, s.life.Release(r.Key()))
				break
			}
		}
	}
	return errors.Join(errs...)
}

func cmdDel(args *skel.CmdArgs) error {
	s, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	// Moat's entries go first, so the address carries no identity once the allocator may hand it out again;
	// tcx links are left for the kernel to drop with the veth the primary plugin deletes next (Release).
	if err := s.life.Release(endpoint.Key{Network: s.network, ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return types.NewError(types.ErrInternal, "moat-ipam: cannot remove the pod's entries before releasing its address", err.Error())
	}
	return invoke.DelegateDel(context.Background(), s.delegateType, s.delegateStdin, nil)
}

func cmdCheck(args *skel.CmdArgs) error {
	s, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	return invoke.DelegateCheck(context.Background(), s.delegateType, s.delegateStdin, nil)
}

func cmdGC(args *skel.CmdArgs) error {
	s, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	return tolerateUnsupported(invoke.DelegateGC(context.Background(), s.delegateType, s.delegateStdin, nil))
}

func cmdStatus(args *skel.CmdArgs) error {
	s, err := parse(args.StdinData)
	if err != nil {
		return err
	}
	return tolerateUnsupported(invoke.DelegateStatus(context.Background(), s.delegateType, s.delegateStdin, nil))
}

// tolerateUnsupported treats a delegate that does not know GC or STATUS (an older skel answers "unknown
// CNI_COMMAND", or "incompatible version") as success, as skel itself does for plugins without them.
func tolerateUnsupported(err error) error {
	var cniErr *types.Error
	if errors.As(err, &cniErr) && (cniErr.Code == types.ErrInvalidEnvironmentVariables ||
		cniErr.Code == types.ErrIncompatibleCNIVersion) {
		return nil
	}
	return err
}
