package main

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/moatfw/moat/internal/cniconfig"
)

// FuzzParseConfig: any stdin gives a configuration or a CNI error with one of the codes the contract names,
// never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion": "1.0.0", "name": "n", "type": "moat"}`))
	f.Add([]byte(`{"cniVersion": "1.1.0", "name": "n", "type": "moat", "failPolicy": "open", "defaultNamespace": "x",
		"prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [{"address": "10.0.0.2/24", "interface": 0}]}}`))
	f.Add([]byte(`{"cniVersion": "0.4.0", "name": "n", "type": "moat", "prevResult": {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}}`))
	f.Add([]byte(`{"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": 3}}`))
	f.Add([]byte(`{"failPolicy": "maybe"}`))
	f.Add([]byte(`{"name": "a/b"}`))
	f.Add([]byte(`{"logLevel": "loud"}`))
	f.Add([]byte(`{"attachMode": "xdp"}`))
	f.Add([]byte(`{"attachMode": "clsact"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, stdin []byte) {
		for _, needPrev := range []bool{false, true} {
			conf, err := parseConfig(stdin, needPrev)
			if err == nil {
				if conf.FailPolicy != cniconfig.FailClosed && conf.FailPolicy != cniconfig.FailOpen {
					t.Fatalf("accepted failPolicy %q", conf.FailPolicy)
				}
				if needPrev && conf.prevResult == nil {
					t.Fatal("accepted a config without a usable prevResult")
				}
				continue
			}
			var cniErr *types.Error
			if !errors.As(err, &cniErr) {
				t.Fatalf("error %v is not a CNI error result", err)
			}
			switch cniErr.Code {
			case types.ErrDecodingFailure, types.ErrInvalidNetworkConfig:
			default:
				t.Fatalf("config error with code %d: %v", cniErr.Code, err)
			}
		}
	})
}

func TestParseConfigDefaults(t *testing.T) {
	conf, err := parseConfig([]byte(`{"cniVersion": "1.0.0", "name": "n", "type": "moat"}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if conf.FailPolicy != cniconfig.FailClosed || conf.PinRoot != "/sys/fs/bpf/moat" || conf.EndpointDir != "/run/moat/endpoints" {
		t.Errorf("defaults: %+v", conf)
	}
	if conf.AttachMode != "" {
		t.Errorf("default attachMode %q, want empty (tcx where the kernel has it)", conf.AttachMode)
	}
	for stdin, ok := range map[string]bool{`{"attachMode": "tcx"}`: true, `{"attachMode": "clsact"}`: true,
		`{"attachMode": "xdp"}`: false, `{"attachMode": "TCX"}`: false} {
		if _, err := parseConfig([]byte(stdin), false); (err == nil) != ok {
			t.Errorf("%s: error %v, want ok=%v", stdin, err, ok)
		}
	}
	if _, err := parseConfig([]byte(`{"cniVersion": "1.0.0", "name": "n"}`), true); err == nil {
		t.Errorf("a config without prevResult passed as chained")
	}
}
