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

func TestLoadPinsAndReopens(t *testing.T) {
	root := testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if !dp.Created {
		t.Errorf("first load reused maps, want created")
	}
	for _, name := range []string{"config", "local_endpoints", "identities", "ipcache", "policy", "conntrack",
		"fragments", "events", "reason_counts", "rule_counts", "stats", bpf.FromPodPin, bpf.ToPodPin} {
		if _, err := os.Stat(filepath.Join(root, name)); err != nil {
			t.Errorf("pin %s: %v", name, err)
		}
	}
	if err := dp.SetNamespaceIdentity("payments", 42); err != nil {
		t.Fatal(err)
	}
	gen, err := dp.BumpGeneration()
	if err != nil || gen != 1 {
		t.Fatalf("bump generation = %d, %v; want 1", gen, err)
	}
	dp.Close()

	// A restarted enforcer reuses the pinned state.
	dp2, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	defer dp2.Close()
	if dp2.Created {
		t.Errorf("reload created maps, want reused")
	}
	if id, ok, err := dp2.NamespaceIdentity("payments"); err != nil || !ok || id != 42 {
		t.Errorf("identity after reload = %d %v %v, want 42", id, ok, err)
	}
	cfg, err := dp2.Config()
	if err != nil || cfg.Generation != 1 || cfg.LayoutVersion != bpf.LayoutVersion {
		t.Errorf("config after reload = %+v, %v", cfg, err)
	}

	// The plugin opens the same state without loading anything.
	pl, err := bpf.OpenPinned(root)
	if err != nil {
		t.Fatalf("open pinned: %v", err)
	}
	defer pl.Close()
	if id, ok, _ := pl.NamespaceIdentity("payments"); !ok || id != 42 {
		t.Errorf("plugin sees identity %d %v, want 42", id, ok)
	}
}

func TestOpenPinnedWithoutEnforcer(t *testing.T) {
	root := testutil.PinRoot(t)
	_, err := bpf.OpenPinned(root)
	if !errors.Is(err, bpf.ErrNotPinned) {
		t.Fatalf("open pinned on empty root = %v, want ErrNotPinned", err)
	}
}

func TestLoadRefusesOtherLayout(t *testing.T) {
	root := testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.UpdateConfig(func(c *bpf.Config) {}); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	// Rewrite the layout version as an older build would have left it.
	m, err := ebpf.LoadPinnedMap(filepath.Join(root, "config"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var c bpf.Config
	if err := m.Lookup(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	c.LayoutVersion = bpf.LayoutVersion + 7
	if err := m.Put(uint32(0), &c); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := bpf.Load(root, bpf.Options{}); !errors.Is(err, bpf.ErrLayout) {
		t.Errorf("load over another layout = %v, want ErrLayout", err)
	}
	if _, err := bpf.OpenPinned(root); !errors.Is(err, bpf.ErrLayout) {
		t.Errorf("open pinned over another layout = %v, want ErrLayout", err)
	}
}

func TestLoadRefusesIncompatibleMaps(t *testing.T) {
	root := testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{ConntrackEntries: 1024})
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	if _, err := bpf.Load(root, bpf.Options{ConntrackEntries: 2048}); !errors.Is(err, bpf.ErrLayout) {
		t.Errorf("load with another conntrack size = %v, want ErrLayout", err)
	}
}

// The Go side's bound on a policy trie is the one the object declares.
func TestPolicyTrieSize(t *testing.T) {
	dp := loadDatapath(t, bpf.Options{})
	if got := dp.PolicyTrieCapacity(); got != bpf.MaxPolicyEntries {
		t.Errorf("policy trie holds %d entries, bpf.MaxPolicyEntries says %d", got, bpf.MaxPolicyEntries)
	}
}
