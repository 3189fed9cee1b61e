package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// An upgrade across map layouts, in the enforcer's own steps, so that no pod is ever without its programs and no
// allowed flow loses its conntrack entry:
//
//  1. Load finds maps pinned by a build with an older layout it can migrate from (migrations). It creates this
//     build's maps pinned in the stage folder under the pin root, copies into them what the old maps hold
//     (endpoints, identities, the ipcache, hostports, conntrack entries and their counts, and the policy tries when
//     the inner maps are compatible), and pins this build's programs there too. The old maps stay where they are,
//     in use by the pods' hooks, which still run the old programs.
//  2. The enforcer applies its policy into the new maps and reconciles the endpoints: every pod's hooks get this
//     build's programs, swapped in place (a link update or a filter replace), so each packet meets one build whole.
//  3. CommitMigration copies once more the conntrack entries the old programs made meanwhile, then moves the stage's
//     pins over the old ones (config first), removes the pins of maps this layout no longer has, and the stage.
//
// A crash at any point is resumed by the next Load: before the commit the stage's maps are reused and the copies
// (which never overwrite) are done again; during it, what is left in the stage is moved over. Until the commit the
// plugin and moatctl open the stage (OpenPinned), so a pod created meanwhile is guarded by the new build.

// StageDir is the folder under the pin root where a migration builds the new layout's maps.
const StageDir = "next"

// migration says how the maps of one older layout become this layout's: each map copied entry by entry, through
// its converter when it has one (nil: the entry is dropped), else as it is, which needs keys and values of the same
// sizes. Maps not named in copied start empty (counters, fragments, events); the policy tries are carried over
// only when this layout's inner map takes them.
type migration struct {
	convert map[string]func(key, value []byte) (k, v []byte, ok bool)
}

// copied are the maps whose entries carry state that must survive an upgrade.
var copied = []string{"identities", "local_endpoints", "ipcache", "hostports", "conntrack", "ct_counts"}

// migrations are the older layouts this build migrates from. 4 -> 5 added config.migrated_from; every map that
// is copied has the same keys and values in both.
var migrations = map[uint32]migration{
	4: {},
}

// pinnedLayout reads the layout of the config map pinned in dir; ok is false when there is none.
func pinnedLayout(dir string) (version uint32, raw []byte, ok bool, err error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "config"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("open pinned config map under %s: %w", dir, err)
	}
	defer m.Close()
	if m.ValueSize() < 4 {
		return 0, nil, false, fmt.Errorf("pinned config map under %s: %w (value of %d bytes)", dir, ErrLayout, m.ValueSize())
	}
	raw = make([]byte, m.ValueSize())
	if err := m.Lookup(uint32(0), &raw); err != nil {
		return 0, nil, false, fmt.Errorf("read pinned config map under %s: %w", dir, err)
	}
	return binary.LittleEndian.Uint32(raw), raw, true, nil
}

// layoutError is the refusal of a pin root whose layout this build cannot take over.
func layoutError(root string, got uint32) error {
	if got > LayoutVersion {
		return fmt.Errorf("maps pinned under %s use layout %d, newer than this build's %d: %w; the newer build's "+
			"enforcer keeps them (roll back to it), or remove them with moat-install --uninstall (pods lose "+
			"enforcement until their next start)", root, got, LayoutVersion, ErrLayout)
	}
	return fmt.Errorf("maps pinned under %s use layout %d, this build uses %d and migrates only from %v: %w; "+
		"upgrade through a release that migrates from %d, or remove them with moat-install --uninstall (pods lose "+
		"enforcement until their next start)", root, got, LayoutVersion, slices.Sorted(maps.Keys(migrations)), ErrLayout, got)
}

// finishCommit moves what a commit that stopped half-way left in the stage over the pin root's pins.
func finishCommit(root string) error {
	stage := filepath.Join(root, StageDir)
	entries, err := os.ReadDir(stage)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Rename(filepath.Join(stage, e.Name()), filepath.Join(root, e.Name())); err != nil {
			return fmt.Errorf("finish the migration's commit: %w", err)
		}
	}
	return os.Remove(stage)
}

// pendingMigration is a Load that migrated and has yet to commit.
type pendingMigration struct {
	from uint32
	mig  migration
}

// Migrating reports whether this datapath was migrated from an older layout and waits for CommitMigration, and
// from which layout.
func (dp *Datapath) Migrating() (from uint32, ok bool) {
	if dp.migrating == nil {
		return 0, false
	}
	return dp.migrating.from, true
}

// migrate fills the freshly loaded (or, resuming, reused) maps of the stage from the old maps pinned under root.
// Entries the stage has already are kept.
func (dp *Datapath) migrate(root string, oldConfig []byte, mig migration) error {
	byName := dp.mapsByName()
	for _, name := range copied {
		old, err := ebpf.LoadPinnedMap(filepath.Join(root, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open the old %s map: %w", name, err)
		}
		_, err = copyEntries(old, byName[name], mig.convert[name])
		old.Close()
		if err != nil {
			return fmt.Errorf("migrate the %s map: %w", name, err)
		}
	}
	if err := dp.carryPolicies(root); err != nil {
		return err
	}
	// config: this build's, keeping the old one's generation (so every migrated conntrack entry stays as valid as
	// it was) and its clock rate
	cfg := Config{LayoutVersion: LayoutVersion, MigratedFrom: binary.LittleEndian.Uint32(oldConfig),
		DefaultVerdict: [2]uint8{uint8(ActionAllow), uint8(ActionAllow)}}
	if len(oldConfig) >= 20 {
		cfg.Generation = binary.LittleEndian.Uint64(oldConfig[8:16])
		cfg.Hz = binary.LittleEndian.Uint16(oldConfig[18:20])
	}
	if cfg.Hz == 0 {
		hz, err := kernelHZ(dp.jiffies)
		if err != nil {
			return err
		}
		cfg.Hz = hz
	}
	var have Config
	if err := dp.maps.Config.Lookup(uint32(0), &have); err == nil && have.LayoutVersion == LayoutVersion {
		// resumed: the stage's config may have moved on (a generation bump) since the first attempt
		cfg.Generation = max(cfg.Generation, have.Generation)
	}
	if err := dp.maps.Config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("write datapath config: %w", err)
	}
	return nil
}

// copyEntries copies every entry of from into to that to does not hold yet, through convert when given, and
// returns how many it wrote.
func copyEntries(from, to *ebpf.Map, convert func(k, v []byte) ([]byte, []byte, bool)) (int, error) {
	if convert == nil && (from.KeySize() != to.KeySize() || from.ValueSize() != to.ValueSize()) {
		return 0, fmt.Errorf("%w: key and value of %d and %d bytes, this build's are %d and %d, and no converter",
			ErrLayout, from.KeySize(), from.ValueSize(), to.KeySize(), to.ValueSize())
	}
	n := 0
	k, v := make([]byte, from.KeySize()), make([]byte, from.ValueSize())
	it := from.Iterate()
	for it.Next(&k, &v) {
		nk, nv, ok := k, v, true
		if convert != nil {
			nk, nv, ok = convert(k, v)
		}
		if !ok {
			continue
		}
		err := to.Update(nk, nv, ebpf.UpdateNoExist)
		switch {
		case err == nil:
			n++
		case errors.Is(err, ebpf.ErrKeyExist):
		default:
			return n, err
		}
	}
	return n, it.Err()
}

// carryPolicies points the new policy map's slots at the old one's tries where this layout's inner map takes
// them, so a pod guarded by the new programs before the enforcer's first apply is decided by its policy (the
// apply replaces each slot anyway). A slot whose trie does not fit is left empty: such a pod fails closed.
func (dp *Datapath) carryPolicies(root string) error {
	old, err := ebpf.LoadPinnedMap(filepath.Join(root, "policy"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open the old policy map: %w", err)
	}
	defer old.Close()
	var id uint32
	for slot := uint32(1); slot < old.MaxEntries() && slot < dp.maps.Policy.MaxEntries(); slot++ {
		if err := old.Lookup(slot, &id); err != nil {
			continue
		}
		var have uint32
		if dp.maps.Policy.Lookup(slot, &have) == nil {
			continue
		}
		trie, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue // swapped meanwhile
		}
		_ = dp.maps.Policy.Put(slot, trie) // refused when the inner maps differ: the slot stays empty
		trie.Close()
	}
	return nil
}

// CommitMigration ends a migration once every pod's hooks run this build's programs (the enforcer's reconcile):
// the conntrack entries the old programs made since Load are copied, the stage's pins replace the old ones
// (config first, so a Load after a crash half-way finishes the move), the old layout's other pins go, and so does
// the stage. It does nothing when the datapath is not migrating.
func (dp *Datapath) CommitMigration() error {
	if dp.migrating == nil {
		return nil
	}
	root, stage := dp.Root, filepath.Join(dp.Root, StageDir)
	byName := dp.mapsByName()
	for _, name := range []string{"conntrack", "ct_counts"} {
		old, err := ebpf.LoadPinnedMap(filepath.Join(root, name), nil)
		if err != nil {
			continue
		}
		_, err = copyEntries(old, byName[name], dp.migrating.mig.convert[name])
		old.Close()
		if err != nil {
			return fmt.Errorf("migrate the %s map's late entries: %w", name, err)
		}
	}
	entries, err := os.ReadDir(stage)
	if err != nil {
		return fmt.Errorf("commit the migration: %w", err)
	}
	names := []string{"config"}
	for _, e := range entries {
		if e.Name() != "config" {
			names = append(names, e.Name())
		}
	}
	moved := map[string]bool{}
	for _, name := range names {
		if err := os.Rename(filepath.Join(stage, name), filepath.Join(root, name)); err != nil {
			return fmt.Errorf("commit the migration: move %s: %w", name, err)
		}
		moved[name] = true
	}
	if err := os.Remove(stage); err != nil {
		return fmt.Errorf("commit the migration: %w", err)
	}
	// the old layout's maps this one no longer has (folders hold the pods' links: they stay)
	rest, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, e := range rest {
		if !e.IsDir() && !moved[e.Name()] && !dp.isOwnPin(e.Name()) {
			if err := os.Remove(filepath.Join(root, e.Name())); err != nil {
				return fmt.Errorf("commit the migration: remove the old layout's %s: %w", e.Name(), err)
			}
		}
	}
	dp.migrating = nil
	return nil
}

// isOwnPin says whether name is one of the pins this build makes under the pin root.
func (dp *Datapath) isOwnPin(name string) bool {
	if name == FromPodPin || name == ToPodPin {
		return true
	}
	_, ok := dp.mapsByName()[name]
	return ok
}

// mapsByName is every map of this build by its pin name (allMaps is its values).
func (dp *Datapath) mapsByName() map[string]*ebpf.Map {
	m := &dp.maps
	return map[string]*ebpf.Map{"config": m.Config, "conntrack": m.Conntrack, "local_endpoints": m.LocalEndpoints,
		"events": m.Events, "fragments": m.Fragments, "identities": m.Identities, "ipcache": m.Ipcache,
		"policy": m.Policy, "reason_counts": m.ReasonCounts, "rule_counts": m.RuleCounts, "stats": m.Stats,
		"ct_counts": m.CtCounts, "hostports": m.Hostports}
}

// stagedRoot is where OpenPinned finds the datapath under root: the stage while a migration runs (its config has
// this layout), root otherwise. While a commit moves the pins (the stage without its config) it waits for the
// move to end, a few milliseconds.
func stagedRoot(root string) string {
	stage := filepath.Join(root, StageDir)
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(stage); errors.Is(err, os.ErrNotExist) {
			return root
		}
		if v, _, ok, err := pinnedLayout(stage); err == nil && ok && v == LayoutVersion {
			return stage
		}
		if time.Now().After(deadline) {
			return root
		}
	}
}
