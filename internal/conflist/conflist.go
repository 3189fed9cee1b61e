// Package conflist chains Moat into a node's primary CNI network, and keeps it there: moat-install runs Ensure
// once, and the enforcer runs Repair while it lives, so a conflist rewritten by another component (the primary
// CNI's own installer, a reboot) gets Moat back within a second.
//
// The primary network is the one kubelet's runtime picks: the first .conf, .conflist or .json file of the folder
// in name order. Every field Moat does not know is kept; writing is atomic (temporary file and rename) and
// idempotent.
package conflist

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/endpoint"
)

// Options say how Moat is chained.
type Options struct {
	Dir      string         // the CNI configuration folder, /etc/cni/net.d
	IPAMShim bool           // wrap the primary plugin's ipam in moat-ipam (address reuse safety)
	Entry    map[string]any // more keys of Moat's entry (failPolicy, logLevel, ...); "type" is always moat
	// more keys of the moat-ipam wrapper (pinRoot, endpointDir); "type" and "delegate" are always Moat's
	IPAMEntry map[string]any
}

// ErrNoNetwork is returned when the folder holds no network to chain into.
var ErrNoNetwork = errors.New("no CNI network configuration")

// Primary is the path of the network the runtime uses: the first configuration file in name order.
func Primary(dir string) (string, error) {
	files, err := networkFiles(dir)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("%w in %s: install the cluster's primary CNI first", ErrNoNetwork, dir)
	}
	return files[0], nil
}

// networkFiles are the folder's network configurations in the order the runtime considers them.
func networkFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read CNI folder: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			names = append(names, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(names)
	return names, nil
}

// Chain returns the conflist with Moat chained in: a lone plugin configuration becomes a list; Moat's entry is
// last (after portmap and any other chained plugin), replacing any older Moat entry; with IPAMShim the first
// plugin's ipam is wrapped in moat-ipam with the original as its delegate.
func Chain(data []byte, opts Options) ([]byte, error) {
	list, err := parse(data)
	if err != nil {
		return nil, err
	}
	// keys someone added to Moat's entries (a logLevel while debugging) stay unless opts set them
	entry := map[string]any{}
	for _, p := range list["plugins"].([]any) {
		if m := p.(map[string]any); m["type"] == cniconfig.PluginType {
			for k, v := range m {
				entry[k] = v
			}
		}
	}
	plugins := withoutMoat(list)
	if len(plugins) == 0 {
		return nil, errors.New("the network has no plugin besides Moat")
	}
	if opts.IPAMShim {
		shim := map[string]any{}
		if ipam, ok := plugins[0]["ipam"].(map[string]any); ok && ipam["type"] == cniconfig.IPAMShimType {
			for k, v := range ipam {
				shim[k] = v
			}
		}
		unwrapIPAM(plugins[0])
		if ipam, ok := plugins[0]["ipam"].(map[string]any); ok {
			if ipam["type"] == cniconfig.IPAMShimType {
				return nil, errors.New("the moat-ipam entry has no delegate (the original ipam) to wrap")
			}
			for k, v := range opts.IPAMEntry {
				shim[k] = v
			}
			shim["type"], shim["delegate"] = cniconfig.IPAMShimType, ipam
			plugins[0]["ipam"] = shim
		}
	} else {
		unwrapIPAM(plugins[0])
	}
	for k, v := range opts.Entry {
		entry[k] = v
	}
	entry["type"] = cniconfig.PluginType
	list["plugins"] = append(toAny(plugins), entry)
	return encode(list)
}

// Unchain returns the conflist with Moat taken out: its entry removed and the original ipam restored.
func Unchain(data []byte) ([]byte, error) {
	list, err := parse(data)
	if err != nil {
		return nil, err
	}
	plugins := withoutMoat(list)
	if len(plugins) > 0 {
		unwrapIPAM(plugins[0])
	}
	list["plugins"] = toAny(plugins)
	return encode(list)
}

// Mentions reports whether a conflist holds anything of Moat's: its entry anywhere, or the ipam shim.
func Mentions(data []byte) bool {
	list, err := parse(data)
	if err != nil {
		return false
	}
	for _, p := range list["plugins"].([]any) {
		m := p.(map[string]any)
		if m["type"] == cniconfig.PluginType {
			return true
		}
		if ipam, ok := m["ipam"].(map[string]any); ok && ipam["type"] == cniconfig.IPAMShimType {
			return true
		}
	}
	return false
}

// Chained reports whether a conflist has Moat's entry last (where it must be to see the final result).
func Chained(data []byte) bool {
	list, err := parse(data)
	if err != nil {
		return false
	}
	plugins, _ := list["plugins"].([]any)
	if len(plugins) == 0 {
		return false
	}
	last, _ := plugins[len(plugins)-1].(map[string]any)
	return last["type"] == cniconfig.PluginType
}

// parse reads a conflist, or a lone plugin configuration turned into one.
func parse(data []byte) (map[string]any, error) {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers stay as written
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("not valid JSON: more than one value")
	}
	if obj == nil {
		return nil, errors.New("not a JSON object")
	}
	if _, ok := obj["plugins"]; !ok {
		if _, ok := obj["type"].(string); !ok {
			return nil, errors.New(`neither a conflist ("plugins") nor a plugin configuration ("type")`)
		}
		// a lone configuration: its name and version move up to the list
		list := map[string]any{"plugins": []any{obj}}
		for _, k := range []string{"cniVersion", "name", "disableCheck"} {
			if v, ok := obj[k]; ok {
				list[k] = v
				if k != "cniVersion" {
					delete(obj, k)
				}
			}
		}
		return list, nil
	}
	plugins, ok := obj["plugins"].([]any)
	if !ok {
		return nil, errors.New(`"plugins" is not a list`)
	}
	for i, p := range plugins {
		if _, ok := p.(map[string]any); !ok {
			return nil, fmt.Errorf("plugins[%d] is not an object", i)
		}
	}
	return obj, nil
}

func withoutMoat(list map[string]any) []map[string]any {
	var out []map[string]any
	for _, p := range list["plugins"].([]any) {
		m := p.(map[string]any)
		if m["type"] != cniconfig.PluginType {
			out = append(out, m)
		}
	}
	return out
}

func unwrapIPAM(plugin map[string]any) {
	if ipam, ok := plugin["ipam"].(map[string]any); ok && ipam["type"] == cniconfig.IPAMShimType {
		if d, ok := ipam["delegate"].(map[string]any); ok {
			plugin["ipam"] = d
		}
	}
}

func toAny(ps []map[string]any) []any {
	out := make([]any, len(ps))
	for i, p := range ps {
		out[i] = p
	}
	return out
}

func encode(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Result says what Ensure did.
type Result struct {
	Path    string // the conflist Moat is chained in
	Changed bool
	Removed string // a lone .conf replaced by Path
}

// Ensure chains Moat into the primary network, writing only when something changes. A lone .conf is replaced by
// a .conflist of the same name (written first, so the runtime always finds a network).
func Ensure(opts Options) (Result, error) {
	path, err := Primary(opts.Dir)
	if err != nil {
		return Result{}, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Result{}, fmt.Errorf("read %s: %w", path, err)
	}
	out, err := Chain(data, opts)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", path, err)
	}
	res := Result{Path: path}
	if filepath.Ext(path) != ".conflist" {
		res.Path = strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
		res.Removed = path
	}
	if res.Removed == "" && bytes.Equal(normalize(data), normalize(out)) {
		return res, nil
	}
	if err := WriteAtomic(res.Path, out, 0o644); err != nil {
		return Result{}, err
	}
	res.Changed = true
	if res.Removed != "" {
		if err := os.Remove(res.Removed); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("remove %s (now %s): %w", res.Removed, res.Path, err)
		}
	}
	return res, nil
}

// Remove takes Moat out of every network of the folder that holds it (its entry, and the ipam shim with the
// original ipam restored), and returns the files it rewrote. A file that mentions Moat but cannot be read as a
// network stops it before anything is written.
func Remove(dir string) ([]string, error) {
	files, err := networkFiles(dir)
	if err != nil {
		return nil, err
	}
	type change struct {
		path string
		data []byte
		mode os.FileMode
	}
	var changes []change
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if !bytes.Contains(data, []byte(cniconfig.PluginType)) {
			continue
		}
		if _, err := parse(data); err != nil {
			return nil, fmt.Errorf("%s mentions moat but is not a network configuration: %w", path, err)
		}
		if !Mentions(data) {
			continue
		}
		out, err := Unchain(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		mode := os.FileMode(0o644)
		if fi, err := os.Stat(path); err == nil {
			mode = fi.Mode().Perm()
		}
		changes = append(changes, change{path, out, mode})
	}
	var done []string
	for _, c := range changes {
		if err := WriteAtomic(c.path, c.data, c.mode); err != nil {
			return done, err
		}
		done = append(done, c.path)
	}
	return done, nil
}

// normalize re-encodes JSON so that formatting alone is no change.
func normalize(data []byte) []byte {
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if dec.Decode(&v) != nil {
		return data
	}
	out, err := encode(v)
	if err != nil {
		return data
	}
	return out
}

// Check says what is wrong with the chain, or nil when Moat is last in the primary network.
func Check(dir string) error {
	path, err := Primary(dir)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !Chained(data) {
		return fmt.Errorf("moat is not the last plugin of the primary network %s: new pods start unguarded", path)
	}
	return nil
}

// WriteAtomic writes a file through a temporary file in the same folder and a rename, so no reader ever sees a
// part of it.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Settings are what Moat's entries say besides their type. moat-install and the enforcer's repair loop both
// build their Options from them, so neither rewrites what the other wrote.
type Settings struct {
	Dir         string
	IPAMShim    bool
	FailPolicy  string // closed or open; empty: the plugin's default (closed)
	PinRoot     string // written only when not the default
	EndpointDir string // written only when not the default
	LogFile     string // the plugin's log file; empty: none
	AttachMode  string // tcx or clsact; empty: the plugin's default (tcx where the kernel has it)
}

// Options is the chaining these settings ask for.
func (s Settings) Options() Options {
	var paths cniconfig.Paths
	if s.PinRoot != bpf.DefaultPinRoot {
		paths.PinRoot = s.PinRoot
	}
	if s.EndpointDir != endpoint.DefaultDir {
		paths.EndpointDir = s.EndpointDir
	}
	entry := cniconfig.Entry{FailPolicy: s.FailPolicy, LogFile: s.LogFile, AttachMode: s.AttachMode, Paths: paths}
	return Options{Dir: s.Dir, IPAMShim: s.IPAMShim, Entry: entry.Map(), IPAMEntry: paths.Map()}
}
