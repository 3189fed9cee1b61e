package endpoint

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Key names one pod interface, as the runtime does: the network, the container, the interface inside it.
type Key struct {
	Network     string
	ContainerID string
	IfName      string
}

// The pin layout of the links under the pin root: <pin root>/endpoints/<network>/<container id>/{from_pod,to_pod};
// the links a DEL left on a host veth that is going away: <pin root>/released/<network>/<container id>-<unix ns>.
// This file is its one owner.
const (
	linksFolder    = "endpoints"
	releasedFolder = "released"
)

// esc writes a name for bpffs, which refuses dots in names: a dot is written %2e.
func esc(s string) string { return strings.ReplaceAll(s, ".", "%2e") }

// LinkDir is where the links of the key's interface are pinned under the pin root: one folder per container and
// network.
func (k Key) LinkDir(pinRoot string) string {
	return filepath.Join(pinRoot, linksFolder, esc(k.Network), esc(k.ContainerID))
}

// linkDirs lists every folder of pinned links under the pin root, whether a record names it or not.
func linkDirs(pinRoot string) ([]string, error) {
	return filepath.Glob(filepath.Join(pinRoot, linksFolder, "*", "*"))
}

// releasedDir is where a DEL at time at moves the key's pinned links (Lifecycle.Release).
func (k Key) releasedDir(pinRoot string, at time.Time) string {
	return filepath.Join(pinRoot, releasedFolder, esc(k.Network), fmt.Sprintf("%s-%d", esc(k.ContainerID), at.UnixNano()))
}

// releasedDirs lists every folder of released links under the pin root.
func releasedDirs(pinRoot string) ([]string, error) {
	return filepath.Glob(filepath.Join(pinRoot, releasedFolder, "*", "*"))
}

// releasedAt is when the links of a released folder were released; ok is false for a name releasedDir never made.
func releasedAt(dir string) (at time.Time, ok bool) {
	name := filepath.Base(dir)
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return time.Time{}, false
	}
	ns, err := strconv.ParseInt(name[i+1:], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}
