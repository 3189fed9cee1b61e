package conflist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

const bridgeList = `{
  "cniVersion": "1.0.0",
  "name": "kubenet",
  "vendorField": {"keep": [1, 2.50, "x"]},
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`

func plugins(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	return list.Plugins
}

func TestChainKeepsEverythingAndIsIdempotent(t *testing.T) {
	out, err := Chain([]byte(bridgeList), Options{Entry: map[string]any{"failPolicy": "closed"}})
	if err != nil {
		t.Fatal(err)
	}
	ps := plugins(t, out)
	if len(ps) != 3 || ps[0]["type"] != "bridge" || ps[1]["type"] != "portmap" || ps[2]["type"] != "moat" || ps[2]["failPolicy"] != "closed" {
		t.Fatalf("chain: %s", out)
	}
	if !strings.Contains(string(out), `"keep": [`) || !strings.Contains(string(out), "2.50") {
		t.Errorf("an unknown field or a number's spelling was lost:\n%s", out)
	}
	again, err := Chain(out, Options{Entry: map[string]any{"failPolicy": "open"}})
	if err != nil {
		t.Fatal(err)
	}
	if ps := plugins(t, again); len(ps) != 3 || ps[2]["failPolicy"] != "open" {
		t.Errorf("chaining twice: %s", again)
	}
	if !Chained(out) || Chained([]byte(bridgeList)) {
		t.Errorf("Chained: %v for the chained list, %v for the original", Chained(out), Chained([]byte(bridgeList)))
	}

	shim, err := Chain([]byte(bridgeList), Options{IPAMShim: true})
	if err != nil {
		t.Fatal(err)
	}
	ipam := plugins(t, shim)[0]["ipam"].(map[string]any)
	if ipam["type"] != "moat-ipam" || ipam["delegate"].(map[string]any)["type"] != "host-local" {
		t.Errorf("ipam shim: %v", ipam)
	}
	twice, _ := Chain(shim, Options{IPAMShim: true})
	if string(twice) != string(shim) {
		t.Errorf("wrapping ipam twice changed the list:\n%s\n%s", shim, twice)
	}
	back, err := Unchain(shim)
	if err != nil {
		t.Fatal(err)
	}
	if string(normalize(back)) != string(normalize([]byte(bridgeList))) {
		t.Errorf("unchain did not restore the original:\n%s", back)
	}
}

func TestChainRefusesBadInput(t *testing.T) {
	for _, bad := range []string{``, `{`, `[]`, `null`, `{"plugins": 3}`, `{"plugins": [1]}`, `{"name": "x"}`, `{"type":"bridge"} {}`} {
		if _, err := Chain([]byte(bad), Options{}); err == nil {
			t.Errorf("Chain(%q) succeeded", bad)
		}
	}
}

func TestEnsureConvertsALoneConf(t *testing.T) {
	dir := t.TempDir()
	conf := `{"cniVersion": "0.4.0", "name": "mynet", "type": "ptp", "ipam": {"type": "host-local", "subnet": "10.250.0.0/24"}}`
	if err := os.WriteFile(filepath.Join(dir, "10-mynet.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "20-other.conflist"), []byte(bridgeList), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err == nil {
		t.Errorf("Check passed before Moat was chained")
	}
	res, err := Ensure(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.Path != filepath.Join(dir, "10-mynet.conflist") || res.Removed != filepath.Join(dir, "10-mynet.conf") {
		t.Errorf("result %+v", res)
	}
	data, _ := os.ReadFile(res.Path)
	var list map[string]any
	_ = json.Unmarshal(data, &list)
	ps := plugins(t, data)
	if list["name"] != "mynet" || list["cniVersion"] != "0.4.0" || len(ps) != 2 || ps[0]["type"] != "ptp" || ps[0]["name"] != nil {
		t.Errorf("converted list:\n%s", data)
	}
	if _, err := os.Stat(filepath.Join(dir, "10-mynet.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lone .conf stayed beside its conflist")
	}
	other, _ := os.ReadFile(filepath.Join(dir, "20-other.conflist"))
	if string(other) != bridgeList {
		t.Errorf("a network that is not the primary one was changed")
	}
	if res, err := Ensure(Options{Dir: dir}); err != nil || res.Changed {
		t.Errorf("second Ensure: %+v %v, want no change", res, err)
	}
	if err := Check(dir); err != nil {
		t.Errorf("Check after Ensure: %v", err)
	}
}

func TestEnsureRefusesAndChangesNothing(t *testing.T) {
	empty := t.TempDir()
	if _, err := Ensure(Options{Dir: empty}); !errors.Is(err, ErrNoNetwork) {
		t.Errorf("empty folder: %v", err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "10-broken.conflist")
	if err := os.WriteFile(path, []byte(`{"plugins": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "10-broken.conflist") {
		t.Errorf("broken conflist: %v", err)
	}
	data, _ := os.ReadFile(path)
	entries, _ := os.ReadDir(dir)
	if string(data) != `{"plugins": [` || len(entries) != 1 {
		t.Errorf("a refused Ensure changed the folder: %q, %d files", data, len(entries))
	}
}

// Another component rewrites the conflist without Moat: the repair loop puts Moat back, woken by the change (its
// timer is far longer than the test's patience). How fast is BenchmarkRepair's question.
func TestRepairPutsMoatBack(t *testing.T) {
	path := startRepair(t)
	waitChained := func(what string) {
		t.Helper()
		if err := waitForChain(path, 30*time.Second); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	waitChained("first start")
	for i := 0; i < 3; i++ {
		if err := WriteAtomic(path, []byte(bridgeList), 0o644); err != nil {
			t.Fatal(err)
		}
		waitChained("rewritten by another installer")
	}
	if err := os.WriteFile(path, []byte(bridgeList), 0o644); err != nil { // in place, not by rename
		t.Fatal(err)
	}
	waitChained("rewritten in place")
}

// BenchmarkRepair measures how long a conflist rewritten without Moat stays so: from the rewrite until the repair
// loop has chained Moat back (settle time included).
func BenchmarkRepair(b *testing.B) {
	path := startRepair(b)
	if err := waitForChain(path, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := WriteAtomic(path, []byte(bridgeList), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := waitForChain(path, 30*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/repair")
}

// startRepair runs the repair loop over a folder with one network until the test ends, and returns the network's
// path. The loop's timer (a minute) never fires in a test: only the folder's changes wake it.
func startRepair(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	path := filepath.Join(dir, "10-kubenet.conflist")
	if err := os.WriteFile(path, []byte(bridgeList), 0o644); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := logrus.New()
	log.SetOutput(io.Discard)
	go func() { done <- Repair(ctx, Options{Dir: dir}, time.Minute, logrus.NewEntry(log)) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("repair loop: %v", err)
		}
	})
	return path
}

// waitForChain waits until the network at path has Moat chained, or gives up after patience.
func waitForChain(path string, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		if data, err := os.ReadFile(path); err == nil && Chained(data) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("moat not chained into %s after %v", path, patience)
		}
		time.Sleep(time.Millisecond)
	}
}
