package kubernetes

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Paths of the generated copies, relative to this folder.
const (
	// ManifestFile holds every object of an install, the CRDs included between CRDBegin and CRDEnd, but no custom
	// resource: kubectl cannot create one in the same apply as its CRD.
	ManifestFile = "moat.yaml"
	// ConfigFile holds the default FirewallConfig, the cluster's defaults spelled out, applied after ManifestFile.
	ConfigFile = "firewallconfig.yaml"
	// CRDDir is controller-gen's output, the source of truth.
	CRDDir = "crds"
	// ChartCRDDir is the Helm chart's copy (Helm installs what it finds there before the templates).
	ChartCRDDir = "../helm/moat/crds"
)

// The lines of ManifestFile between which the CRDs are copied (each begins its line).
const (
	CRDBegin = "# BEGIN CRDs"
	CRDEnd   = "# END CRDs"
)

// CRDFiles returns the names of the CRD files in dir/crds, sorted.
func CRDFiles(dir string) ([]string, error) {
	names, err := yamlFiles(filepath.Join(dir, CRDDir))
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no CRDs in %s", filepath.Join(dir, CRDDir))
	}
	return names, nil
}

// Generated returns what the copies of the CRDs must hold, by path relative to dir (install/kubernetes):
// ManifestFile with the CRDs of CRDDir spliced between its CRDBegin and CRDEnd lines, and one file in ChartCRDDir
// per CRD.
func Generated(dir string) (map[string][]byte, error) {
	names, err := CRDFiles(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	var all bytes.Buffer
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(dir, CRDDir, name))
		if err != nil {
			return nil, fmt.Errorf("read CRD: %w", err)
		}
		out[filepath.Join(ChartCRDDir, name)] = data
		if !bytes.HasPrefix(data, []byte("---\n")) {
			all.WriteString("---\n")
		}
		all.Write(data)
		if !bytes.HasSuffix(data, []byte("\n")) {
			all.WriteByte('\n')
		}
	}
	manifest, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	spliced, err := SpliceCRDs(manifest, all.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestFile, err)
	}
	out[ManifestFile] = spliced
	return out, nil
}

// SpliceCRDs replaces what lies between the CRDBegin and CRDEnd lines of manifest with crds (YAML documents,
// each beginning with "---").
func SpliceCRDs(manifest, crds []byte) ([]byte, error) {
	lines := strings.SplitAfter(string(manifest), "\n")
	begin := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, CRDBegin) })
	end := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, CRDEnd) })
	switch {
	case begin < 0 || end < 0:
		return nil, fmt.Errorf("want a line beginning %q and one beginning %q", CRDBegin, CRDEnd)
	case end < begin:
		return nil, errors.New("the end of the CRDs comes before their beginning")
	}
	var b strings.Builder
	for _, l := range lines[:begin+1] {
		b.WriteString(l)
	}
	b.Write(crds)
	for _, l := range lines[end:] {
		b.WriteString(l)
	}
	return []byte(b.String()), nil
}

func yamlFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list CRDs: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// StaleChartCRDs returns the files of ChartCRDDir (relative to dir) that match no CRD of CRDDir.
func StaleChartCRDs(dir string) ([]string, error) {
	want, err := CRDFiles(dir)
	if err != nil {
		return nil, err
	}
	have, err := yamlFiles(filepath.Join(dir, ChartCRDDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var stale []string
	for _, name := range have {
		if !slices.Contains(want, name) {
			stale = append(stale, filepath.Join(ChartCRDDir, name))
		}
	}
	return stale, nil
}
