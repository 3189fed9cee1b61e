// Command moat is Moat's chained CNI plugin, the last of the chain: at ADD it tags the pod with its namespace's
// identity and attaches the pinned datapath to the pod's host veth before the pod can send a packet; at DEL and
// GC every trace of the pod goes. It never loads programs: it opens what the enforcer pinned.
package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/cniconfig"
	moatversion "github.com/moatfw/moat/internal/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, Status: cmdStatus, GC: cmdGC},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "moat "+moatversion.Version)
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData, true)
	if err != nil {
		return err
	}
	log, closeLog := conf.logger()
	defer closeLog()
	a := &adder{conf: conf, args: args, log: log, life: conf.Lifecycle()}
	if err := a.add(); err != nil {
		a.rollback()
		log.WithError(err).WithField("container", args.ContainerID).Error("ADD failed; rolled back")
		return asCNIError(err)
	}
	return types.PrintResult(conf.prevResult, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	log, closeLog := conf.logger()
	defer closeLog()
	// the primary plugin's DEL, after this one, deletes the veth: tcx links are left for the kernel to drop
	// with it rather than detached here, where each hook would wait for a grace period (Release)
	life := conf.Lifecycle()
	if err := life.Release(conf.key(args)); err != nil {
		log.WithError(err).WithField("container", args.ContainerID).Error("DEL failed")
		return asCNIError(err)
	}
	// the links of pods released before, whose veths are gone by now, go (the enforcer sweeps them too)
	if _, err := life.SweepReleased(); err != nil {
		log.WithError(err).Warn("sweeping released links")
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData, true)
	if err != nil {
		return err
	}
	return asCNIError(check(conf, args))
}

// cmdStatus: under failPolicy closed the plugin is not available until the enforcer has pinned its state and
// published a policy generation; under open it always is.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	if conf.FailPolicy == cniconfig.FailOpen {
		return nil
	}
	dp, err := bpf.OpenPinned(conf.PinRoot)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("moat: the enforcer's state is missing under %s: is moat-enforcer running?", conf.PinRoot), err.Error())
	}
	defer dp.Close()
	cfg, err := dp.Config()
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "moat: cannot read the enforcer's state", err.Error())
	}
	if cfg.Generation == 0 {
		return types.NewError(types.ErrPluginNotAvailable,
			"moat: the enforcer has not published a policy yet", fmt.Sprintf("pin root %s", conf.PinRoot))
	}
	return nil
}

// cmdGC removes every endpoint of this network whose attachment the runtime no longer knows.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData, false)
	if err != nil {
		return err
	}
	log, closeLog := conf.logger()
	defer closeLog()
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	life := conf.Lifecycle()
	records, err := life.Store.List(conf.Name)
	if err != nil {
		return asCNIError(err)
	}
	var errs []error
	for _, r := range records {
		if valid[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		log.WithFields(map[string]any{"container": r.ContainerID, "pod": r.Namespace + "/" + r.Pod}).Info("GC: removing a stale endpoint")
		if err := life.Release(r.Key()); err != nil {
			errs = append(errs, err)
		}
	}
	return asCNIError(errors.Join(errs...))
}

// asCNIError keeps CNI errors as they are and wraps anything else as an internal error with details.
func asCNIError(err error) error {
	if err == nil {
		return nil
	}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		return cniErr
	}
	return types.NewError(types.ErrInternal, "moat: "+err.Error(), fmt.Sprintf("%+v", err))
}
