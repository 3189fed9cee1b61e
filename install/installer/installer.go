// Package installer puts Moat onto a node and takes it off again: moat-install's work.
//
// Install copies the CNI binaries into the CNI bin folder (a temporary file and a rename each, so a runtime never
// runs half a binary) and chains moat into the primary network. It checks everything it can before it changes
// anything: a folder without a network, or a primary network that is not valid JSON, leaves the node as it was.
//
// Uninstall takes moat out of every network, removes the binaries, detaches Moat's programs from running pods,
// and removes the pinned state and the endpoint records, so no stale enforcement outlives the enforcer. Running
// pods keep their network (the primary plugin made it); pods created afterwards start without Moat.
package installer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/conflist"
	"github.com/moatfw/moat/internal/endpoint"
)

// Binaries are what goes into the CNI bin folder.
var Binaries = []string{"moat", "moat-ipam"}

// Options say where things are on the node.
type Options struct {
	conflist.Settings        // the CNI configuration folder and Moat's entries
	BinDir            string // the CNI bin folder, /opt/cni/bin
	SourceDir         string // where the binaries to install are
	Socket            string // the enforcer's API socket (Uninstall refuses while an enforcer serves it)
	KeepBinaries      bool   // Uninstall leaves moat and moat-ipam in the bin folder (DEL from a cached chain)
	Log               *logrus.Entry
}

// Result says what changed.
type Result struct {
	Copied    []string // binaries written (unchanged ones are not)
	Conflist  string   // the network moat is chained into (Install)
	Rewritten []string // conflists written
	Removed   []string // files removed: binaries, a lone .conf turned into a .conflist
	Detached  int      // pod interfaces whose programs were detached (Uninstall)
}

// Changed reports whether anything changed on the node.
func (r Result) Changed() bool {
	return len(r.Copied)+len(r.Rewritten)+len(r.Removed) > 0 || r.Detached > 0
}

// Install copies the binaries and chains moat into the primary network; run twice, it changes nothing.
func Install(o Options) (Result, error) {
	var res Result
	log := o.logger()
	// everything that can refuse, before anything is written
	primary, err := conflist.Primary(o.Dir)
	if err != nil {
		return res, err
	}
	data, err := os.ReadFile(primary)
	if err != nil {
		return res, fmt.Errorf("read %s: %w", primary, err)
	}
	if _, err := conflist.Chain(data, o.Options()); err != nil {
		return res, fmt.Errorf("the primary network %s: %w; nothing was changed", primary, err)
	}
	if err := os.MkdirAll(o.BinDir, 0o755); err != nil {
		return res, fmt.Errorf("create the CNI bin folder: %w", err)
	}
	for _, name := range Binaries {
		src := filepath.Join(o.SourceDir, name)
		fi, err := os.Stat(src)
		if err != nil {
			return res, fmt.Errorf("the binary to install: %w; nothing was changed", err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return res, fmt.Errorf("%s is not an executable file; nothing was changed", src)
		}
	}

	for _, name := range Binaries {
		dst := filepath.Join(o.BinDir, name)
		changed, err := copyAtomic(filepath.Join(o.SourceDir, name), dst)
		if err != nil {
			return res, err
		}
		if changed {
			res.Copied = append(res.Copied, dst)
			log.WithField("binary", dst).Info("installed")
		} else {
			log.WithField("binary", dst).Info("already installed")
		}
	}
	ens, err := conflist.Ensure(o.Options())
	if err != nil {
		return res, err
	}
	res.Conflist = ens.Path
	f := log.WithField("conflist", ens.Path)
	if written, err := os.ReadFile(ens.Path); err == nil && o.IPAMShim && !bytes.Contains(written, []byte(cniconfig.IPAMShimType)) {
		f.Warn("the primary plugin has no ipam of its own to wrap (flannel, for one, hands it to a delegate): moat-ipam is not in the chain")
	}
	if ens.Changed {
		res.Rewritten = append(res.Rewritten, ens.Path)
		if ens.Removed != "" {
			res.Removed = append(res.Removed, ens.Removed)
			f = f.WithField("replaced", ens.Removed)
		}
		f.Info("moat chained into the primary network")
	} else {
		f.Info("moat already chained into the primary network")
	}
	return res, nil
}

// ErrEnforcerRunning is returned by Uninstall while an enforcer still serves its socket: its repair loop would
// chain moat back, and its maps would be pinned again.
var ErrEnforcerRunning = errors.New("an enforcer is still running on this node")

// Uninstall takes Moat off the node. It refuses, changing nothing, while an enforcer runs or when a network that
// mentions moat cannot be read.
func Uninstall(o Options) (Result, error) {
	var res Result
	log := o.logger()
	if o.Socket != "" {
		if c, err := net.DialTimeout("unix", o.Socket, time.Second); err == nil {
			c.Close()
			return res, fmt.Errorf("%w (it serves %s): stop it first (kubectl -n moat-system delete daemonset moat); nothing was changed",
				ErrEnforcerRunning, o.Socket)
		}
	}
	rewritten, err := conflist.Remove(o.Dir)
	res.Rewritten = rewritten
	for _, p := range rewritten {
		log.WithField("conflist", p).Info("moat taken out of the network")
	}
	if err != nil {
		return res, err
	}
	// no new pod gets Moat now; the binaries go next, then what running pods carry
	var errs []error
	for _, name := range Binaries {
		if o.KeepBinaries {
			break
		}
		p := filepath.Join(o.BinDir, name)
		switch err := os.Remove(p); {
		case err == nil:
			res.Removed = append(res.Removed, p)
			log.WithField("binary", p).Info("removed")
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	n, err := detachAll(o, log)
	res.Detached = n
	errs = append(errs, err)
	errs = append(errs, removePinned(o.pinRoot(), log))
	if o.endpointDir() != "" {
		if err := os.RemoveAll(o.endpointDir()); err != nil {
			errs = append(errs, fmt.Errorf("remove the endpoint records: %w", err))
		}
	}
	if o.Socket != "" {
		if err := os.Remove(o.Socket); err == nil {
			log.WithField("socket", o.Socket).Info("removed a stale enforcer socket")
		}
	}
	return res, errors.Join(errs...)
}

// detachAll detaches Moat from every pod interface a record names, then from any pinned links left without a
// record. It counts the pods whose programs the attachment's check found in place.
func detachAll(o Options, log *logrus.Entry) (int, error) {
	life := endpoint.Lifecycle{Store: endpoint.Store{Dir: o.endpointDir()}, PinRoot: o.pinRoot()}
	recs, err := life.Store.List("")
	var errs []error
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err) // a broken record: the pinned links below still go
	}
	dp, err := bpf.OpenPinned(o.pinRoot())
	if err == nil {
		defer dp.Close()
	}
	n := 0
	for _, r := range recs {
		f := log.WithFields(logrus.Fields{"pod": r.Namespace + "/" + r.Pod, "veth": r.HostIfname, "mode": r.AttachMode})
		attached := r.AttachMode != "" // without the pinned datapath, as the record says
		if dp != nil {
			attached = !errors.Is(r.CheckAttachment(dp), bpf.ErrNotAttached)
		}
		if err := life.Forget(r.Key()); err != nil {
			f.WithError(err).Error("cannot detach moat from the pod")
			errs = append(errs, fmt.Errorf("pod %s/%s (%s): %w", r.Namespace, r.Pod, r.HostIfname, err))
			continue
		}
		if !attached {
			f.Info("the pod's record removed: moat's programs were not on it")
			continue
		}
		n++
		f.Info("moat detached from the pod")
	}
	unrecorded, err := life.DetachAllLinks()
	if unrecorded > 0 {
		log.WithField("interfaces", unrecorded).Info("moat detached from interfaces it had no record of")
	}
	return n + unrecorded, errors.Join(append(errs, err)...)
}

// removePinned unpins everything under the pin root. The root itself stays when it is a mount point.
func removePinned(root string, log *logrus.Entry) error {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the pin root: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.Name() == "maps.debug" || e.Name() == "progs.debug" {
			continue // the kernel's own iterators at the root of a bpf mount
		}
		if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", filepath.Join(root, e.Name()), err))
		}
	}
	if mountPoint(root) {
		return errors.Join(errs...) // a bpf mount of its own stays, empty
	}
	if err := os.Remove(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove the pin root: %w", err))
	}
	if len(errs) == 0 {
		log.WithField("pinRoot", root).Info("pinned maps and programs removed")
	}
	return errors.Join(errs...)
}

// mountPoint reports whether dir is on another file system than its parent.
func mountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

func (o Options) pinRoot() string {
	if o.PinRoot == "" {
		return bpf.DefaultPinRoot
	}
	return o.PinRoot
}

func (o Options) endpointDir() string {
	if o.EndpointDir == "" {
		return endpoint.DefaultDir
	}
	return o.EndpointDir
}

func (o Options) logger() *logrus.Entry {
	if o.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		return logrus.NewEntry(l)
	}
	return o.Log
}

// DefaultSocket is the enforcer's socket Uninstall checks by default.
const DefaultSocket = agentapi.DefaultSocket

// copyAtomic writes src to dst through a temporary file in dst's folder and a rename, unless dst already holds
// the same bytes.
func copyAtomic(src, dst string) (bool, error) {
	want, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", src, err)
	}
	if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
		if fi, err := os.Stat(dst); err == nil && fi.Mode().Perm() == 0o755 {
			return false, nil
		}
	}
	if err := conflist.WriteAtomic(dst, want, 0o755); err != nil {
		return false, fmt.Errorf("install %s: %w", dst, err)
	}
	return true, nil
}
