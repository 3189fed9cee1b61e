package cniconfig

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// What the conflist writer puts into moat's entry is what the plugin reads back, key for key, and an entry left
// empty writes no key.
func TestEntryMapIsWhatParseReads(t *testing.T) {
	want := Entry{FailPolicy: FailOpen, LogLevel: "debug", LogFile: "/var/log/moat.log", DefaultNamespace: "default",
		AttachMode: "clsact", Paths: Paths{PinRoot: "/sys/fs/bpf/moat-test", EndpointDir: "/run/moat-test"}}
	m := want.Map()
	m["type"], m["name"], m["cniVersion"] = PluginType, "kubenet", "1.1.0"
	stdin, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := Parse(stdin)
	if err != nil {
		t.Fatal(err)
	}
	if conf.Entry != want {
		t.Errorf("read back %+v, want %+v", conf.Entry, want)
	}
	if got := (Entry{}).Map(); len(got) != 0 {
		t.Errorf("an empty entry writes %v, want no key", got)
	}
}

func TestParseDefaultsAndRefusals(t *testing.T) {
	conf, err := Parse([]byte(`{"cniVersion": "1.1.0", "name": "n", "type": "moat", "socketPath": "/ignored"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.FailPolicy != FailClosed || conf.PinRoot != "/sys/fs/bpf/moat" || conf.EndpointDir != "/run/moat/endpoints" ||
		conf.AttachMode != "" {
		t.Errorf("defaults: %+v", conf.Entry)
	}
	for stdin, code := range map[string]uint{
		`[]`:                      types.ErrDecodingFailure,
		`{"failPolicy": "maybe"}`: types.ErrInvalidNetworkConfig,
		`{"logLevel": "loud"}`:    types.ErrInvalidNetworkConfig,
		`{"attachMode": "xdp"}`:   types.ErrInvalidNetworkConfig,
		`{"defaultNamespace": "` + strings.Repeat("n", 300) + `"}`: types.ErrInvalidNetworkConfig,
		`{"name": "a/b"}`: types.ErrInvalidNetworkConfig,
	} {
		_, err := Parse([]byte(stdin))
		if cniErr, ok := err.(*types.Error); !ok || cniErr.Code != code {
			t.Errorf("%s: %v, want a CNI error with code %d", stdin, err, code)
		}
	}
}

func TestCheckFailPolicy(t *testing.T) {
	for p, ok := range map[string]bool{"": true, FailClosed: true, FailOpen: true, "Closed": false, "maybe": false} {
		if err := CheckFailPolicy(p); (err == nil) != ok {
			t.Errorf("%q: %v, want ok=%v", p, err, ok)
		}
	}
}
