// Package endpoint keeps the record the plugin leaves for every pod interface it guards, under
// /run/moat/endpoints/<network>/<container id>_<ifname>.json, so that DEL, GC and an enforcer that starts later
// find the pod without asking the runtime.
package endpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moatfw/moat/bpf"
)

// DefaultDir is where records live in production.
const DefaultDir = "/run/moat/endpoints"

// Record is what Moat knows of one pod interface.
type Record struct {
	Network      string             `json:"network"`
	ContainerID  string             `json:"containerID"`
	IfName       string             `json:"ifname"`
	Netns        string             `json:"netns"`
	Namespace    string             `json:"namespace"`
	Pod          string             `json:"pod,omitempty"`
	PodUID       string             `json:"podUID,omitempty"`
	HostIfname   string             `json:"hostIfname"`
	HostIfindex  int                `json:"hostIfindex"`
	Identity     uint32             `json:"identity"`
	Addresses    []string           `json:"addresses"`
	MAC          string             `json:"mac,omitempty"`        // the pod interface's MAC: ARP and ND from the pod must carry it
	LinkLocal    string             `json:"linkLocal,omitempty"`  // its IPv6 link-local address, when it has one
	AttachMode   bpf.AttachMode     `json:"attachMode,omitempty"` // empty: not attached (failPolicy open, no datapath)
	Filters      []bpf.ClsactFilter `json:"clsactFilters,omitempty"`
	CreatedQdisc bool               `json:"createdQdisc,omitempty"`
	Created      time.Time          `json:"created"`
}

// Store is a folder of records.
type Store struct{ Dir string }

func (s Store) path(network, containerID, ifname string) string {
	return filepath.Join(s.Dir, network, containerID+"_"+ifname+".json")
}

// Save writes a record atomically (temporary file and rename).
func (s Store) Save(r *Record) error {
	p := s.path(r.Network, r.ContainerID, r.IfName)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("create endpoint record folder: %w", err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write endpoint record %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write endpoint record %s: %w", p, err)
	}
	return nil
}

// Load reads the record of a pod interface; ok is false when there is none.
func (s Store) Load(network, containerID, ifname string) (r *Record, ok bool, err error) {
	data, err := os.ReadFile(s.path(network, containerID, ifname))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read endpoint record: %w", err)
	}
	r = &Record{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, false, fmt.Errorf("endpoint record %s: %w", s.path(network, containerID, ifname), err)
	}
	return r, true, nil
}

// Delete removes a record; a missing one is not an error.
func (s Store) Delete(network, containerID, ifname string) error {
	err := os.Remove(s.path(network, containerID, ifname))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete endpoint record: %w", err)
	}
	return nil
}

// List reads every record of a network ("" for every network).
func (s Store) List(network string) ([]*Record, error) {
	pattern := filepath.Join(s.Dir, "*", "*.json")
	if network != "" {
		pattern = filepath.Join(s.Dir, network, "*.json")
	}
	files, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var out []*Record
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read endpoint record %s: %w", f, err)
		}
		r := &Record{}
		if err := json.Unmarshal(data, r); err != nil {
			return nil, fmt.Errorf("endpoint record %s: %w", f, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// LinkDir is where the plugin pins a pod interface's tcx links under the pin root. bpffs refuses dots in names,
// so a dot in a network name or container id is written %2e.
func LinkDir(pinRoot, network, containerID string) string {
	esc := func(s string) string { return strings.ReplaceAll(s, ".", "%2e") }
	return filepath.Join(pinRoot, "endpoints", esc(network), esc(containerID))
}

// ValidName reports whether s can name a folder or file of records and pins.
func ValidName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") && len(s) <= 200
}
