package installer

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/moatfw/moat/internal/conflist"
	"github.com/moatfw/moat/internal/testutil"
)

const flannelConf = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "type": "flannel",
  "delegate": {"hairpinMode": true, "isDefaultGateway": true}
}
`

// fakeNode is a node's folders with a primary network and the binaries to install.
func fakeNode(t *testing.T, netFile, netData string) Options {
	t.Helper()
	root := t.TempDir()
	o := Options{BinDir: filepath.Join(root, "opt/cni/bin"), SourceDir: filepath.Join(root, "image")}
	o.Dir = filepath.Join(root, "etc/cni/net.d")
	for _, d := range []string{o.BinDir, o.SourceDir, o.Dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range Binaries {
		if err := os.WriteFile(filepath.Join(o.SourceDir, name), []byte("#!/bin/sh\n# "+name+" v1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if netFile != "" {
		if err := os.WriteFile(filepath.Join(o.Dir, netFile), []byte(netData), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o.PinRoot = filepath.Join(root, "bpf") // never touched by Install
	return o
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestInstallCopiesChainsAndIsIdempotent(t *testing.T) {
	o := fakeNode(t, "10-flannel.conf", flannelConf)
	o.FailPolicy = "open"
	res, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(o.Dir, "10-flannel.conflist")
	if res.Conflist != conf || len(res.Copied) != 2 || len(res.Removed) != 1 {
		t.Errorf("first install: %+v", res)
	}
	if got := testutil.ListDir(t, o.Dir); len(got) != 1 || got[0] != "10-flannel.conflist" {
		t.Errorf("the CNI folder holds %v, want only the conflist that replaced the lone .conf", got)
	}
	data, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if !conflist.Chained(data) || !strings.Contains(string(data), `"failPolicy": "open"`) ||
		!strings.Contains(string(data), `"hairpinMode": true`) {
		t.Errorf("the conflist:\n%s", data)
	}
	for _, name := range Binaries {
		got, err := os.ReadFile(filepath.Join(o.BinDir, name))
		want, _ := os.ReadFile(filepath.Join(o.SourceDir, name))
		fi, _ := os.Stat(filepath.Join(o.BinDir, name))
		if err != nil || !bytes.Equal(got, want) || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s installed as %q (%v), err %v", name, got, fi.Mode(), err)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(o.BinDir, ".*")); len(leftovers) > 0 {
		t.Errorf("temporary files left in the bin folder: %v", leftovers)
	}

	// again: nothing is written
	before := map[string]uint64{conf: inode(t, conf)}
	for _, name := range Binaries {
		before[filepath.Join(o.BinDir, name)] = inode(t, filepath.Join(o.BinDir, name))
	}
	res, err = Install(o)
	if err != nil || res.Changed() {
		t.Errorf("second install: %+v, %v; want no change", res, err)
	}
	for p, ino := range before {
		if inode(t, p) != ino {
			t.Errorf("second install rewrote %s", p)
		}
	}
	again, _ := os.ReadFile(conf)
	if !bytes.Equal(again, data) {
		t.Errorf("second install changed the conflist:\n%s", again)
	}

	// a new build of one binary replaces just that one, by rename
	if err := os.WriteFile(filepath.Join(o.SourceDir, "moat"), []byte("#!/bin/sh\n# moat v2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err = Install(o)
	if err != nil || len(res.Copied) != 1 || res.Copied[0] != filepath.Join(o.BinDir, "moat") || len(res.Rewritten) != 0 {
		t.Errorf("upgrade: %+v, %v", res, err)
	}
	if inode(t, filepath.Join(o.BinDir, "moat")) == before[filepath.Join(o.BinDir, "moat")] {
		t.Errorf("the new binary was written in place, not renamed over the old one")
	}

	// the ipam shim wraps the primary plugin's ipam; uninstalling the conflist restores it
	o2 := fakeNode(t, "10-bridge.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[
		{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]]}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	o2.IPAMShim = true
	if _, err := Install(o2); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(filepath.Join(o2.Dir, "10-bridge.conflist"))
	if !strings.Contains(string(data), `"type": "moat-ipam"`) || !strings.Contains(string(data), `"delegate"`) ||
		!strings.Contains(string(data), `"pinRoot"`) {
		t.Errorf("the ipam shim with a non-default pin root:\n%s", data)
	}
}

func TestInstallRefusesAndChangesNothing(t *testing.T) {
	for _, c := range []struct {
		name, file, data string
		breakSource      bool
		want             string
		is               error
	}{
		{name: "no network", want: "install the cluster's primary CNI first", is: conflist.ErrNoNetwork},
		{name: "broken JSON", file: "10-net.conflist", data: `{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}`,
			want: "not valid JSON"},
		{name: "not a network", file: "10-net.conflist", data: `{"cniVersion":"1.0.0","name":"x"}`, want: "neither a conflist"},
		{name: "plugins not a list", file: "05-a.conf", data: `{"plugins":{"type":"bridge"}}`, want: `"plugins" is not a list`},
		{name: "missing binary", file: "10-net.conflist", data: `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"}]}`,
			breakSource: true, want: "moat-ipam"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := fakeNode(t, c.file, c.data)
			if c.breakSource {
				if err := os.Remove(filepath.Join(o.SourceDir, "moat-ipam")); err != nil {
					t.Fatal(err)
				}
			}
			res, err := Install(o)
			if err == nil || !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
				t.Errorf("Install: %v, want an error saying %q", err, c.want)
			}
			if res.Changed() {
				t.Errorf("Install changed %+v", res)
			}
			if got := testutil.ListDir(t, o.BinDir); len(got) != 0 {
				t.Errorf("binaries copied although it refused: %v", got)
			}
			if c.file != "" {
				data, _ := os.ReadFile(filepath.Join(o.Dir, c.file))
				if string(data) != c.data {
					t.Errorf("the network changed:\n%s", data)
				}
			}
		})
	}
}

// Uninstall refuses a network it cannot read, before it changes anything.
func TestUninstallRefusesABrokenNetwork(t *testing.T) {
	o := fakeNode(t, "10-net.conflist", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"}]}`)
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	broken := `{"name": "other", "plugins": [{"type": "moat"}` // a second network, half written
	if err := os.WriteFile(filepath.Join(o.Dir, "20-other.conflist"), []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	chained, _ := os.ReadFile(filepath.Join(o.Dir, "10-net.conflist"))
	o.Socket = filepath.Join(t.TempDir(), "none.sock")
	_, err := Uninstall(o)
	if err == nil || !strings.Contains(err.Error(), "20-other.conflist") {
		t.Fatalf("Uninstall: %v, want it to name the broken file", err)
	}
	if now, _ := os.ReadFile(filepath.Join(o.Dir, "10-net.conflist")); !bytes.Equal(now, chained) {
		t.Errorf("Uninstall changed the good network before refusing")
	}
	if got := testutil.ListDir(t, o.BinDir); len(got) != 2 {
		t.Errorf("Uninstall removed binaries before refusing: %v", got)
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

// --keep-binaries leaves moat's DEL to runtimes that tear pods down from a cached chain.
func TestUninstallKeepsBinariesWhenAsked(t *testing.T) {
	o := fakeNode(t, "10-net.conflist", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp","ipam":{"type":"host-local"}}]}`)
	o.IPAMShim = true
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	o.Socket = filepath.Join(t.TempDir(), "none.sock")
	o.KeepBinaries = true
	res, err := Uninstall(o)
	if err != nil || len(res.Removed) != 0 || len(res.Rewritten) != 1 {
		t.Fatalf("Uninstall: %+v, %v", res, err)
	}
	if got := testutil.ListDir(t, o.BinDir); len(got) != 2 {
		t.Errorf("the binaries went: %v", got)
	}
	data, _ := os.ReadFile(filepath.Join(o.Dir, "10-net.conflist"))
	if conflist.Mentions(data) || !strings.Contains(string(data), `"type": "host-local"`) {
		t.Errorf("the network after uninstall:\n%s", data)
	}
}
