package bpf_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// previousLayout is the layout this build migrates from.
const previousLayout = bpf.LayoutVersion - 1

// pretendLayout rewrites the layout version of the config pinned under root, as a build of that layout would
// have left it. The maps of the previous layout have the keys and values of this one (migrate.go), so the rest
// of the pinned state is what that build would have made.
func pretendLayout(t *testing.T, root string, version uint32) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(root, "config"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var c bpf.Config
	if err := m.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	c.LayoutVersion = version
	if err := m.Put(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
}

// migrated loads the datapath over an older layout's pins and checks that it is migrating.
func migrated(t *testing.T, root string) *bpf.Datapath {
	t.Helper()
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatalf("load over layout %d: %v", previousLayout, err)
	}
	t.Cleanup(func() { dp.Close() })
	if from, ok := dp.Migrating(); !ok || from != previousLayout {
		t.Fatalf("Migrating() = %d %v, want %d true", from, ok, previousLayout)
	}
	if dp.Created {
		t.Errorf("a migration says it created the maps: the enforcer would treat its state as new")
	}
	return dp
}

// An established flow, an endpoint, an identity and a policy made by the old layout's programs and enforcer are
// all there for the new programs, before and after the commit, through a crash before the commit.
func TestMigrateFromThePreviousLayout(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	if err := h.dp.SetNamespaceIdentity("payments", podID); err != nil {
		t.Fatal(err)
	}
	out := tcp(podV4, worldV4, 41000, 443, testutil.TCPSyn)
	reply := tcp(worldV4, podV4, 443, 41000, testutil.TCPSyn|testutil.TCPAck)
	stranger := tcp(worldV4, podV4, 443, 41999, testutil.TCPAck)
	if got := h.from(out); got != retNext {
		t.Fatalf("the flow's first packet on the old layout: %s", verdictName(got))
	}
	oldCfg, err := h.dp.Config()
	if err != nil {
		t.Fatal(err)
	}
	// a pin of the old layout that this one no longer has
	extra, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := extra.Pin(filepath.Join(h.root, "gone_in_this_layout")); err != nil {
		t.Fatal(err)
	}
	extra.Close()
	pretendLayout(t, h.root, previousLayout)
	h.dp.Close()

	h.dp = migrated(t, h.root)
	stage := filepath.Join(h.root, bpf.StageDir)
	if _, err := os.Stat(filepath.Join(stage, "conntrack")); err != nil {
		t.Fatalf("the new maps are not in the stage: %v", err)
	}
	cfg, err := h.dp.Config()
	if err != nil || cfg.LayoutVersion != bpf.LayoutVersion || cfg.MigratedFrom != previousLayout ||
		cfg.Generation != oldCfg.Generation || cfg.Hz != oldCfg.Hz {
		t.Errorf("config of the migrated maps = %+v (%v); want this layout, from %d, generation %d, hz %d", cfg, err,
			previousLayout, oldCfg.Generation, oldCfg.Hz)
	}
	check := func(when string) {
		t.Helper()
		if got := h.to(reply); got != retNext {
			t.Errorf("%s: the established flow's reply: %s, want pass (its conntrack entry was not carried over)", when, verdictName(got))
		}
		if got := h.to(stranger); got != retDrop {
			t.Errorf("%s: a packet of no flow from the world: %s, want drop", when, verdictName(got))
		}
		if got := h.from(tcp(podV4, worldV4, 42000, 443, testutil.TCPSyn)); got != retNext {
			t.Errorf("%s: a new flow the policy allows: %s, want pass (the policy was not carried over)", when, verdictName(got))
		}
		if id, ok, err := h.dp.NamespaceIdentity("payments"); err != nil || !ok || id != podID {
			t.Errorf("%s: identity of payments = %d %v %v, want %d", when, id, ok, err, podID)
		}
	}
	check("migrated")

	// the plugin and moatctl open the stage while the migration runs
	pl, err := bpf.OpenPinned(h.root)
	if err != nil {
		t.Fatalf("open pinned during the migration: %v", err)
	}
	if c, err := pl.Config(); err != nil || c.LayoutVersion != bpf.LayoutVersion {
		t.Errorf("the plugin opens layout %d (%v) during the migration, want the new %d", c.LayoutVersion, err, bpf.LayoutVersion)
	}
	pl.Close()

	// the enforcer stops before the commit: the next one resumes with what the stage holds
	h.dp.Close()
	h.dp = migrated(t, h.root)
	check("resumed")

	if err := h.dp.CommitMigration(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if _, ok := h.dp.Migrating(); ok {
		t.Errorf("still migrating after the commit")
	}
	if _, err := os.Stat(stage); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stage is still there after the commit: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.root, "gone_in_this_layout")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old layout's own pin is still there after the commit: %v", err)
	}
	check("committed")
	pl, err = bpf.OpenPinned(h.root)
	if err != nil {
		t.Fatalf("open pinned after the commit: %v", err)
	}
	defer pl.Close()
	if c, err := pl.Config(); err != nil || c.LayoutVersion != bpf.LayoutVersion || c.MigratedFrom != previousLayout {
		t.Errorf("pinned config after the commit = %+v, %v", c, err)
	}
	if id, ok, _ := pl.NamespaceIdentity("payments"); !ok || id != podID {
		t.Errorf("the pinned identities after the commit: payments = %d %v", id, ok)
	}

	// a restart after the commit is a plain restart
	h.dp.Close()
	again, err := bpf.Load(h.root, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h.dp = again
	t.Cleanup(func() { again.Close() })
	if _, ok := again.Migrating(); ok || again.Created {
		t.Errorf("a restart after the commit: migrating %v, created %v; want neither", ok, again.Created)
	}
	check("restarted")
}

// A commit that stops right after moving the config (the first pin it moves) is finished by the next Load.
func TestMigrationCommitFinishedAfterACrash(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(egressOnly443())
	if got := h.from(tcp(podV4, worldV4, 41000, 443, testutil.TCPSyn)); got != retNext {
		t.Fatalf("first packet: %s", verdictName(got))
	}
	pretendLayout(t, h.root, previousLayout)
	h.dp.Close()
	h.dp = migrated(t, h.root)
	h.dp.Close()
	stage := filepath.Join(h.root, bpf.StageDir)
	if err := os.Rename(filepath.Join(stage, "config"), filepath.Join(h.root, "config")); err != nil {
		t.Fatal(err)
	}
	dp, err := bpf.Load(h.root, bpf.Options{})
	if err != nil {
		t.Fatalf("load after a half-done commit: %v", err)
	}
	h.dp = dp
	t.Cleanup(func() { dp.Close() })
	if _, ok := dp.Migrating(); ok {
		t.Errorf("migrating after a half-done commit, want the commit finished")
	}
	if _, err := os.Stat(stage); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stage is still there: %v", err)
	}
	if got := h.to(tcp(worldV4, podV4, 443, 41000, testutil.TCPSyn|testutil.TCPAck)); got != retNext {
		t.Errorf("the established flow's reply after the finished commit: %s, want pass", verdictName(got))
	}
}

// Layouts this build cannot take over are refused whole, and nothing is staged.
func TestMigrationRefusesUnknownLayouts(t *testing.T) {
	for _, v := range []uint32{previousLayout - 1, bpf.LayoutVersion + 1} {
		root := testutil.PinRoot(t)
		dp, err := bpf.Load(root, bpf.Options{})
		if err != nil {
			t.Fatal(err)
		}
		dp.Close()
		pretendLayout(t, root, v)
		if _, err := bpf.Load(root, bpf.Options{}); !errors.Is(err, bpf.ErrLayout) {
			t.Errorf("layout %d: load = %v, want ErrLayout", v, err)
		}
		if _, err := os.Stat(filepath.Join(root, bpf.StageDir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("layout %d: a stage was made: %v", v, err)
		}
	}
}
