package conflist

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/moatfw/moat/internal/cniconfig"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Real-world primary networks (flannel, kindnet, a lone bridge .conf, aws-vpc-cni, calico, oddities) chained as
// moat-install chains them, against golden files: go test ./internal/conflist -run Golden -update rewrites them.
func TestGoldenNetworks(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.conf*")
	if err != nil || len(inputs) < 6 {
		t.Fatalf("inputs: %v %v", inputs, err)
	}
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden") {
			continue
		}
		data, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			suffix string
			opts   Options
		}{
			{"chained", Settings{FailPolicy: "closed"}.Options()},
			{"shim", Settings{IPAMShim: true, FailPolicy: "open", PinRoot: "/sys/fs/bpf/moat-test", AttachMode: "clsact"}.Options()},
		} {
			name := filepath.Base(in) + "." + c.suffix + ".golden"
			t.Run(name, func(t *testing.T) {
				out, err := Chain(data, c.opts)
				if err != nil {
					t.Fatal(err)
				}
				golden := filepath.Join("testdata", name)
				if *update {
					if err := os.WriteFile(golden, out, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, want) {
					t.Errorf("differs from %s (-update rewrites it):\n%s", golden, out)
				}
				if !Chained(out) || strings.Count(string(out), `"type": "moat"`) != 1 {
					t.Errorf("moat is not last, or not once:\n%s", out)
				}
				if again, err := Chain(out, c.opts); err != nil || !bytes.Equal(again, out) {
					t.Errorf("chaining twice changed it (%v):\n%s", err, again)
				}
				// taken out again: the network as it was, less an older moat entry and with the original ipam
				back, err := Unchain(out)
				if err != nil {
					t.Fatal(err)
				}
				orig, err := Unchain(data)
				if err != nil {
					t.Fatal(err)
				}
				if Mentions(back) || !sameJSON(t, back, orig) {
					t.Errorf("unchained:\n%s\nwant:\n%s", back, orig)
				}
			})
		}
	}
}

func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	for _, p := range []struct {
		data []byte
		v    *any
	}{{a, &x}, {b, &y}} {
		dec := json.NewDecoder(bytes.NewReader(p.data))
		dec.UseNumber()
		if err := dec.Decode(p.v); err != nil {
			t.Fatal(err)
		}
	}
	return reflect.DeepEqual(x, y)
}

// FuzzChain: whatever Chain accepts comes out with moat last and once, chains to itself again, and unchains to
// something without Moat; whatever it refuses, it refuses with an error, never a panic.
func FuzzChain(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/*.conf*")
	for _, in := range inputs {
		if data, err := os.ReadFile(in); err == nil && !strings.HasSuffix(in, ".golden") {
			f.Add(data, false)
			f.Add(data, true)
		}
	}
	f.Add([]byte(`{"plugins":[{"type":"moat"}]}`), false)
	f.Add([]byte(`{"type":"x","ipam":{"type":"moat-ipam","delegate":"nope"}}`), true)
	f.Add([]byte(`{"plugins":[{"type":"a","ipam":{"type":"moat-ipam","delegate":{"type":"moat-ipam"}}}]}`), true)
	f.Add([]byte(`[]`), false)
	f.Fuzz(func(t *testing.T, data []byte, shim bool) {
		opts := Settings{IPAMShim: shim, FailPolicy: "closed"}.Options()
		out, err := Chain(data, opts)
		if err != nil {
			return
		}
		if !Chained(out) || !Mentions(out) {
			t.Fatalf("moat not chained:\n%s", out)
		}
		list, err := parse(out)
		if err != nil {
			t.Fatalf("Chain wrote what it cannot read: %v\n%s", err, out)
		}
		n := 0
		for _, p := range list["plugins"].([]any) {
			if p.(map[string]any)["type"] == cniconfig.PluginType {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d moat entries:\n%s", n, out)
		}
		again, err := Chain(out, opts)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent (%v):\n%s\n%s", err, out, again)
		}
		back, err := Unchain(out)
		if err != nil {
			t.Fatalf("cannot unchain what Chain wrote: %v", err)
		}
		if bl, err := parse(back); err != nil {
			t.Fatalf("Unchain wrote what it cannot read: %v", err)
		} else {
			for _, p := range bl["plugins"].([]any) {
				if p.(map[string]any)["type"] == cniconfig.PluginType {
					t.Fatalf("moat left after Unchain:\n%s", back)
				}
			}
		}
	})
}
