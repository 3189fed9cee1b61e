// Command moat-install puts Moat onto a node: it copies the moat and moat-ipam binaries into the CNI bin folder
// and chains moat into the primary network's conflist. With --uninstall it takes Moat off again: out of every
// conflist, its binaries, its programs from running pods, its pinned state. It runs once, in the DaemonSet's init
// container; --hold then waits for a signal (the uninstall DaemonSet's main container).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/install/installer"
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/version"
)

func main() {
	var o installer.Options
	var uninstall, hold, install bool
	flag.StringVar(&o.BinDir, "cni-bin-dir", "/opt/cni/bin", "the CNI bin folder")
	flag.StringVar(&o.Dir, "cni-conf-dir", "/etc/cni/net.d", "the CNI configuration folder; moat is chained into its first network")
	flag.StringVar(&o.SourceDir, "source-dir", "", "where moat and moat-ipam are (default: the folder of moat-install)")
	flag.BoolVar(&o.IPAMShim, "ipam-shim", false, "wrap the primary plugin's ipam in moat-ipam, the original as its delegate")
	flag.StringVar(&o.FailPolicy, "fail-policy", "", "moat's failPolicy: closed or open (empty: the plugin's default, closed)")
	flag.StringVar(&o.AttachMode, "attach-mode", "", "moat's attachMode: tcx or clsact (empty: the plugin's default, tcx; see docs/operations.md before choosing clsact)")
	flag.StringVar(&o.LogFile, "plugin-log-file", "", "moat's logFile: where the plugin logs (empty: nowhere)")
	flag.StringVar(&o.PinRoot, "pin-root", bpf.DefaultPinRoot, "the bpffs folder of Moat's pinned state")
	flag.StringVar(&o.EndpointDir, "endpoint-dir", endpoint.DefaultDir, "the plugin's endpoint records")
	flag.StringVar(&o.Socket, "socket", installer.DefaultSocket, "the enforcer's socket: --uninstall refuses while it answers")
	flag.BoolVar(&uninstall, "uninstall", false, "take Moat off the node instead")
	flag.BoolVar(&o.KeepBinaries, "keep-binaries", false, "with --uninstall: leave moat and moat-ipam in the CNI bin folder (for runtimes that tear pods down from a cached chain)")
	flag.BoolVar(&hold, "hold", false, "afterwards (or alone), wait for SIGTERM: the main container of a DaemonSet")
	flag.Parse()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	entry := logrus.NewEntry(log).WithField("version", version.Version)
	o.Log = entry
	install = !hold || flag.NFlag() > 1 // --hold alone only waits (the uninstall DaemonSet's main container)
	if flag.NArg() > 0 {
		fail(entry, fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	if err := cniconfig.CheckFailPolicy(o.FailPolicy); err != nil {
		fail(entry, fmt.Errorf("--fail-policy: %w", err))
	}
	if err := bpf.CheckAttachMode(bpf.AttachMode(o.AttachMode)); err != nil {
		fail(entry, fmt.Errorf("--attach-mode: %w", err))
	}
	if o.SourceDir == "" {
		exe, err := os.Executable()
		if err != nil {
			fail(entry, fmt.Errorf("find my own folder (give --source-dir): %w", err))
		}
		o.SourceDir = filepath.Dir(exe)
	}
	switch {
	case uninstall:
		res, err := installer.Uninstall(o)
		if err != nil {
			fail(entry, err)
		}
		entry.WithFields(logrus.Fields{"conflists": len(res.Rewritten), "binaries": len(res.Removed),
			"pods": res.Detached}).Info("Moat is off this node: running pods keep their network, new pods start without Moat")
	case install:
		res, err := installer.Install(o)
		if err != nil {
			fail(entry, err)
		}
		entry.WithFields(logrus.Fields{"conflist": res.Conflist, "changed": res.Changed()}).
			Info("Moat is installed on this node: new pods are guarded once the enforcer runs")
	}
	if hold {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		entry.Info("holding until SIGTERM")
		<-sig
	}
}

func fail(log *logrus.Entry, err error) {
	log.WithError(err).Error("moat-install failed")
	os.Exit(1)
}
