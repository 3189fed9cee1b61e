// Package cniconfig is the configuration of Moat's two CNI plugins as a conflist carries it: moat's entry (Entry)
// and moat-ipam's ipam section (IPAMConf). The plugins parse it, the conflist writer writes it, and the flags of
// moat-install and the enforcer that fill it are checked by it.
package cniconfig

import (
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
)

// The types of Moat's two plugins in a conflist.
const (
	PluginType   = "moat"
	IPAMShimType = "moat-ipam"
)

// Failure policies: what ADD does when the enforcer's state or the namespace's identity is missing.
const (
	FailClosed = "closed"
	FailOpen   = "open"
)

// CheckFailPolicy accepts the failure policies a configuration may name: closed, open, or empty (closed).
func CheckFailPolicy(p string) error {
	if p != "" && p != FailClosed && p != FailOpen {
		return fmt.Errorf("%q is not a failure policy: want %s or %s", p, FailClosed, FailOpen)
	}
	return nil
}

// Paths say where Moat's state is on the node; both plugins take them from their configuration.
type Paths struct {
	PinRoot string `json:"pinRoot,omitempty"` // the enforcer's pinned datapath (default bpf.DefaultPinRoot)
	// EndpointDir is where endpoint records go (default endpoint.DefaultDir); tests point it elsewhere.
	EndpointDir string `json:"endpointDir,omitempty"`
}

// Lifecycle is the endpoint lifecycle at these paths, the defaults filled in.
func (p Paths) Lifecycle() endpoint.Lifecycle {
	p.setDefaults()
	return endpoint.Lifecycle{Store: endpoint.Store{Dir: p.EndpointDir}, PinRoot: p.PinRoot}
}

func (p *Paths) setDefaults() {
	if p.PinRoot == "" {
		p.PinRoot = bpf.DefaultPinRoot
	}
	if p.EndpointDir == "" {
		p.EndpointDir = endpoint.DefaultDir
	}
}

// Entry is what moat's entry says besides the keys every plugin has (type, name, cniVersion, prevResult).
type Entry struct {
	FailPolicy       string `json:"failPolicy,omitempty"`
	LogLevel         string `json:"logLevel,omitempty"`
	LogFile          string `json:"logFile,omitempty"`
	DefaultNamespace string `json:"defaultNamespace,omitempty"`
	// AttachMode is how programs hang on host veths: tcx (the default where the kernel has it) or clsact.
	AttachMode string `json:"attachMode,omitempty"`
	Paths
}

// Check says what is wrong with the entry's values, if anything.
func (e *Entry) Check() error {
	if err := CheckFailPolicy(e.FailPolicy); err != nil {
		return fmt.Errorf("failPolicy: %w", err)
	}
	if e.LogLevel != "" {
		if _, err := logrus.ParseLevel(e.LogLevel); err != nil {
			return fmt.Errorf("logLevel %q: %w", e.LogLevel, err)
		}
	}
	if err := bpf.CheckAttachMode(bpf.AttachMode(e.AttachMode)); err != nil {
		return fmt.Errorf("attachMode: %w", err)
	}
	if e.DefaultNamespace != "" {
		if _, err := bpf.NewNamespaceKey(e.DefaultNamespace); err != nil {
			return fmt.Errorf("defaultNamespace: %w", err)
		}
	}
	return nil
}

// Map is the entry as the keys of a conflist entry, those left empty left out.
func (e Entry) Map() map[string]any { return asMap(e) }

// NetConf is moat's entry in the conflist, as the plugin gets it on stdin.
type NetConf struct {
	types.NetConf
	Entry
}

// Parse decodes and checks moat's configuration and fills in the defaults. Its errors are CNI error results:
// ErrDecodingFailure for what is not a configuration, ErrInvalidNetworkConfig for a value that is wrong.
func Parse(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "moat: cannot decode the network configuration: "+err.Error(), "")
	}
	if err := conf.Check(); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "moat: "+err.Error(), "")
	}
	if conf.Name != "" && !endpoint.ValidName(conf.Name) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("moat: network name %q cannot name a folder", conf.Name), "")
	}
	if conf.FailPolicy == "" {
		conf.FailPolicy = FailClosed
	}
	conf.setDefaults()
	return conf, nil
}

// IPAMConf is moat-ipam's ipam section: the real IPAM's configuration as its delegate, and where Moat's state is.
type IPAMConf struct {
	Type     string          `json:"type"`
	Delegate json.RawMessage `json:"delegate"`
	Paths
}

// asMap turns a struct of JSON keys into a map of them.
func asMap(v any) map[string]any {
	data, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("cniconfig: encode %T: %v", v, err)) // strings only: cannot happen
	}
	m := map[string]any{}
	if err := json.Unmarshal(data, &m); err != nil {
		panic(fmt.Sprintf("cniconfig: decode %T: %v", v, err))
	}
	return m
}

// Map is the paths as the keys of a conflist entry, those left empty left out.
func (p Paths) Map() map[string]any { return asMap(p) }
