package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultPinRoot is where the enforcer pins Moat's maps and programs in production.
const DefaultPinRoot = "/sys/fs/bpf/moat"

// Pin names of the programs under the pin root; the maps are pinned by their own names.
const (
	FromPodPin = "from_pod"
	ToPodPin   = "to_pod"
)

// ErrLayout means the pinned maps under a pin root were made by a build with another map layout.
var ErrLayout = errors.New("pinned maps have another layout")

// ErrNotPinned means there is no pinned datapath under the pin root (the enforcer has not started).
var ErrNotPinned = errors.New("no pinned datapath")

// Options sizes the datapath's tables when the enforcer creates them. Zero keeps moat.c's size.
type Options struct {
	IPCacheEntries   uint32
	ConntrackEntries uint32
	FragmentEntries  uint32
	EventBytes       uint32
	// FQDNLearnedEntries sizes fqdn_learned, the addresses learned from DNS answers (DefaultFQDNLearnedEntries).
	FQDNLearnedEntries uint32
}

// Datapath is Moat's loaded or reopened datapath: its programs and maps, pinned under one root.
type Datapath struct {
	Root    string
	FromPod *ebpf.Program
	ToPod   *ebpf.Program
	maps    moatMaps
	inner   *ebpf.MapSpec
	// Created is true when Load made the maps, false when it reused pinned ones.
	Created bool
	jiffies *ebpf.Program   // returns bpf_jiffies64's low 32 bits through BPF_PROG_TEST_RUN; nil from OpenPinned
	stages  []*ebpf.Program // the tail-called stages (in tails, which keeps them loaded); closed with the rest
	// migrating is set by a Load that migrated an older layout's maps, until CommitMigration (migrate.go)
	migrating *pendingMigration
}

// Load is the enforcer's way in: it loads the programs, creates the maps or reuses the ones pinned under root
// (so a restart keeps every endpoint, identity, policy and connection), and pins the programs. It refuses maps
// pinned by a build with another layout. Nothing is detached: links of running pods keep their programs.
func Load(root string, opts Options) (*Datapath, error) {
	if err := ensureBPFFS(root); err != nil {
		return nil, err
	}
	version, oldConfig, pinned, err := pinnedLayout(root)
	if err != nil {
		return nil, err
	}
	stage := filepath.Join(root, StageDir)
	var mig *pendingMigration
	switch {
	case !pinned:
		// nothing to migrate from: a stage left without its old maps is nothing to resume
		if err := os.RemoveAll(stage); err != nil {
			return nil, fmt.Errorf("remove the stage of a migration with nothing to migrate: %w", err)
		}
	case version == LayoutVersion:
		if err := finishCommit(root); err != nil { // a commit that stopped half-way
			return nil, err
		}
	default:
		m, ok := migrations[version]
		if !ok {
			return nil, layoutError(root, version)
		}
		mig = &pendingMigration{from: version, mig: m}
		if err := os.MkdirAll(stage, 0o700); err != nil {
			return nil, fmt.Errorf("create the migration's stage: %w", err)
		}
	}
	pinDir := root
	if mig != nil {
		pinDir = stage
	}
	spec, err := loadMoat()
	if err != nil {
		return nil, fmt.Errorf("parse datapath objects: %w", err)
	}
	sizes := map[string]uint32{"ipcache": opts.IPCacheEntries, "conntrack": opts.ConntrackEntries, "fragments": opts.FragmentEntries,
		"events": opts.EventBytes, "fqdn_learned": opts.FQDNLearnedEntries}
	for name, n := range sizes {
		if n != 0 {
			spec.Maps[name].MaxEntries = n
		}
	}
	if err := dropSmallTails(pinDir, spec.Maps["tails"].MaxEntries); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(filepath.Join(pinDir, "config"))
	created := errors.Is(statErr, os.ErrNotExist)

	var objs moatObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load datapath programs: %+v", verr)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("reuse maps pinned under %s: %w (%w)", root, ErrLayout, err)
		}
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	dp := &Datapath{Root: root, FromPod: objs.MoatFromPod, ToPod: objs.MoatToPod, maps: objs.moatMaps,
		inner: spec.Maps["policy"].InnerMap, Created: created && mig == nil, jiffies: objs.MoatJiffies,
		stages: []*ebpf.Program{objs.MoatDnsQuery, objs.MoatDnsAnswer, objs.MoatToPodAnswered}}
	if mig != nil {
		dp.migrating = mig
		if err := dp.migrate(root, oldConfig, mig.mig); err != nil {
			dp.Close()
			return nil, fmt.Errorf("migrate the maps pinned under %s from layout %d to %d: %w", root, version, LayoutVersion, err)
		}
	} else if created {
		// the tick rate is the running kernel's: pinned maps do not outlive it, so reused ones have it already
		hz, err := kernelHZ(objs.MoatJiffies)
		if err != nil {
			dp.Close()
			return nil, err
		}
		cfg := Config{LayoutVersion: LayoutVersion, Hz: hz,
			DefaultVerdict: [2]uint8{uint8(ActionAllow), uint8(ActionAllow)}}
		if err := dp.maps.Config.Put(uint32(0), &cfg); err != nil {
			dp.Close()
			return nil, fmt.Errorf("write datapath config: %w", err)
		}
	}
	if err := dp.initDNSTiming(); err != nil {
		dp.Close()
		return nil, err
	}
	for name, prog := range map[string]*ebpf.Program{FromPodPin: dp.FromPod, ToPodPin: dp.ToPod} {
		if err := pinReplace(prog, filepath.Join(pinDir, name)); err != nil {
			dp.Close()
			return nil, err
		}
	}
	return dp, nil
}

// dropSmallTails removes a pinned tails prog array with fewer slots than this build's (a build of the same layout
// with fewer stages), so that the load makes its own: the programs running on it keep the old one open, each
// load fills its own with its stages, and nothing else is kept in it.
func dropSmallTails(pinDir string, want uint32) error {
	path := filepath.Join(pinDir, "tails")
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open the pinned tails: %w", err)
	}
	small := m.MaxEntries() < want
	m.Close()
	if !small {
		return nil
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove the pinned tails of an earlier build: %w", err)
	}
	return nil
}

// OpenPinned is the plugin's (and moatctl's) way in: it opens what the enforcer pinned, loading nothing.
func OpenPinned(root string) (*Datapath, error) {
	dir := stagedRoot(root) // during a migration, the new build's maps
	if _, err := os.Stat(filepath.Join(dir, "config")); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w under %s: is moat-enforcer running?", ErrNotPinned, root)
		}
		return nil, fmt.Errorf("open pinned datapath under %s: %w", root, err)
	}
	if err := checkPinnedLayout(dir); err != nil {
		return nil, err
	}
	dp := &Datapath{Root: root}
	var err error
	opened := map[string]**ebpf.Map{
		"config": &dp.maps.Config, "conntrack": &dp.maps.Conntrack, "local_endpoints": &dp.maps.LocalEndpoints,
		"events": &dp.maps.Events, "fragments": &dp.maps.Fragments, "identities": &dp.maps.Identities,
		"ipcache": &dp.maps.Ipcache, "policy": &dp.maps.Policy, "reason_counts": &dp.maps.ReasonCounts,
		"rule_counts": &dp.maps.RuleCounts, "stats": &dp.maps.Stats, "ct_counts": &dp.maps.CtCounts,
		"hostports": &dp.maps.Hostports,
	}
	for name, m := range opened {
		if *m, err = ebpf.LoadPinnedMap(filepath.Join(dir, name), nil); err != nil {
			dp.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
	}
	for name, p := range map[string]**ebpf.Program{FromPodPin: &dp.FromPod, ToPodPin: &dp.ToPod} {
		if *p, err = ebpf.LoadPinnedProgram(filepath.Join(dir, name), nil); err != nil {
			dp.Close()
			return nil, fmt.Errorf("open pinned program %s: %w", name, err)
		}
	}
	return dp, nil
}

// Close releases this process's handles; pins, and the links that use the programs, stay.
func (dp *Datapath) Close() error {
	var errs []error
	for _, p := range append([]*ebpf.Program{dp.FromPod, dp.ToPod, dp.jiffies}, dp.stages...) {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	for _, m := range append(dp.allMaps(), dp.stageMaps()...) {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// Unpin removes every pin under the root (uninstall). Links pinned elsewhere keep their programs alive.
func (dp *Datapath) Unpin() error {
	var errs []error
	for _, m := range dp.allMaps() {
		if m != nil {
			errs = append(errs, m.Unpin())
		}
	}
	for _, name := range []string{FromPodPin, ToPodPin} {
		if err := os.Remove(filepath.Join(dp.Root, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stageMaps are the maps of the DNS stage and the learning: new beside the layout's (not migrated), closed
// with the rest.
func (dp *Datapath) stageMaps() []*ebpf.Map {
	m := &dp.maps
	return []*ebpf.Map{m.DnsSets, m.DnsNames, m.DnsScratch, m.Tails, m.FqdnSets, m.FqdnNames, m.DnsResolvers,
		m.FqdnLearned, m.FqdnCounts, m.DnsTiming, m.DnsFallback, m.PolicyScratch}
}

func (dp *Datapath) allMaps() []*ebpf.Map {
	return slices.Collect(maps.Values(dp.mapsByName()))
}

// checkPinnedLayout refuses a pin root whose config map was written by a build with another layout.
func checkPinnedLayout(root string) error {
	version, _, ok, err := pinnedLayout(root)
	if err != nil || !ok || version == LayoutVersion {
		return err
	}
	return fmt.Errorf("maps pinned under %s use layout %d, this build uses %d: %w; the enforcer of this build "+
		"migrates them when it starts (from layouts %v), or remove them with moat-install --uninstall (pods lose "+
		"enforcement until their next start)", root, version, LayoutVersion, ErrLayout, slices.Sorted(maps.Keys(migrations)))
}

// ensureBPFFS makes root (and its parents) and checks that it lives on a bpf filesystem.
func ensureBPFFS(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create pin root %s: %w", root, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", root, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin root %s is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", root)
	}
	return nil
}

// pinReplace pins prog at path, atomically replacing an older pin: readers see the old or the new program.
func pinReplace(prog *ebpf.Program, path string) error {
	tmp := filepath.Join(filepath.Dir(path), "new_"+filepath.Base(path)) // bpffs refuses dots in names
	_ = os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	return nil
}

// The kernel's tick rate, measured once per process: deadlines of conntrack and fragment entries are in jiffies.
var hzOnce struct {
	sync.Once
	hz  uint16
	err error
}

// kernelHZ measures how many jiffies the kernel counts per second: prog returns bpf_jiffies64 and writes the
// monotonic clock read in the same instant into the packet, so two runs 200 ms apart give the rate within a tick
// (5% at HZ=100) however late this process gets to run; it rounds to the nearest rate Linux builds with (100,
// 250, 300, 1000).
func kernelHZ(prog *ebpf.Program) (uint16, error) {
	hzOnce.Do(func() {
		read := func() (uint32, uint64, error) {
			pkt, out := make([]byte, 64), make([]byte, 64)
			j, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out})
			if err != nil {
				return 0, 0, fmt.Errorf("read the kernel's jiffies: %w", err)
			}
			return j, binary.LittleEndian.Uint64(out), nil
		}
		j0, t0, err := read()
		if err == nil {
			time.Sleep(200 * time.Millisecond)
			var j1 uint32
			var t1 uint64
			if j1, t1, err = read(); err == nil {
				if t1 <= t0 {
					err = fmt.Errorf("read the kernel's jiffies: the clock did not advance (%d, %d)", t0, t1)
				} else {
					hzOnce.hz = nearestHZ(float64(j1-j0) / (float64(t1-t0) / 1e9))
				}
			}
		}
		hzOnce.err = err
	})
	return hzOnce.hz, hzOnce.err
}

// nearestHZ is the configurable tick rate closest to a measured one (within 10%), or the measured one rounded.
func nearestHZ(measured float64) uint16 {
	for _, hz := range []float64{100, 250, 300, 1000} {
		if measured > hz*0.9 && measured < hz*1.1 {
			return uint16(hz)
		}
	}
	return uint16(measured + 0.5)
}
