package endpoint

import (
	"path/filepath"
	"strings"
)

// Key names one pod interface, as the runtime does: the network, the container, the interface inside it.
type Key struct {
	Network     string
	ContainerID string
	IfName      string
}

// The pin layout of the links under the pin root: <pin root>/endpoints/<network>/<container id>/{from_pod,to_pod}.
// This file is its one owner.
const linksFolder = "endpoints"

// LinkDir is where the links of the key's interface are pinned under the pin root: one folder per container and
// network. bpffs refuses dots in names, so a dot in a network name or container id is written %2e.
func (k Key) LinkDir(pinRoot string) string {
	esc := func(s string) string { return strings.ReplaceAll(s, ".", "%2e") }
	return filepath.Join(pinRoot, linksFolder, esc(k.Network), esc(k.ContainerID))
}

// linkDirs lists every folder of pinned links under the pin root, whether a record names it or not.
func linkDirs(pinRoot string) ([]string, error) {
	return filepath.Glob(filepath.Join(pinRoot, linksFolder, "*", "*"))
}
