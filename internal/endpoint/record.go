// Package endpoint owns a pod interface's life on the node. Lifecycle guards it (tags it, attaches the programs,
// pins the links) and forgets it (removes all of that); the record the plugin leaves for every pod interface it
// guards, under /run/moat/endpoints/<network>/<container id>_<ifname>.json, lets DEL, GC and an enforcer that
// starts later find the pod without asking the runtime, and take up its attachment (Record.Attachment).
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
	Network     string   `json:"network"`
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	Netns       string   `json:"netns"`
	Namespace   string   `json:"namespace"`
	Pod         string   `json:"pod,omitempty"`
	PodUID      string   `json:"podUID,omitempty"`
	HostIfname  string   `json:"hostIfname"`
	HostIfindex int      `json:"hostIfindex"`
	Identity    uint32   `json:"identity"`
	Addresses   []string `json:"addresses"`
	MAC         string   `json:"mac,omitempty"`       // the pod interface's MAC: ARP and ND from the pod must carry it
	LinkLocal   string   `json:"linkLocal,omitempty"` // its IPv6 link-local address, when it has one
	// the attachment of the programs to the host veth: its mode, and what clsact added
	bpf.AttachmentRecord
	Created time.Time `json:"created"`
}

// Key names what a record is about: one interface of one container in one network.
func (r *Record) Key() Key {
	return Key{Network: r.Network, ContainerID: r.ContainerID, IfName: r.IfName}
}

// Store is a folder of records.
type Store struct{ Dir string }

func (s Store) path(k Key) string {
	return filepath.Join(s.Dir, k.Network, k.ContainerID+"_"+k.IfName+".json")
}

// Save writes a record atomically (temporary file and rename).
func (s Store) Save(r *Record) error {
	p := s.path(r.Key())
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
func (s Store) Load(k Key) (r *Record, ok bool, err error) {
	data, err := os.ReadFile(s.path(k))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read endpoint record: %w", err)
	}
	r = &Record{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, false, fmt.Errorf("endpoint record %s: %w", s.path(k), err)
	}
	return r, true, nil
}

// Delete removes a record; a missing one is not an error.
func (s Store) Delete(k Key) error {
	err := os.Remove(s.path(k))
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

// stamp changes whenever a record is written or removed: the modification times of the store's network folders
// (a save renames into its folder). Empty when the store cannot be read.
func (s Store) stamp() string {
	dirs, err := filepath.Glob(filepath.Join(s.Dir, "*"))
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil {
			return ""
		}
		fmt.Fprintf(&b, "%s:%d;", d, st.ModTime().UnixNano())
	}
	return b.String()
}

// ValidName reports whether s can name a folder or file of records and pins.
func ValidName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") && len(s) <= 200
}
