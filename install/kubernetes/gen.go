//go:build ignore

// gen writes the copies of the CRDs: into moat.yaml and into the Helm chart's crds/ folder
// (`go generate ./install/kubernetes/`).
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/moatfw/moat/install/kubernetes"
)

func main() {
	if err := run("."); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	files, err := kubernetes.Generated(dir)
	if err != nil {
		return err
	}
	stale, err := kubernetes.StaleChartCRDs(dir)
	if err != nil {
		return err
	}
	for _, path := range stale {
		if err := os.Remove(filepath.Join(dir, path)); err != nil {
			return fmt.Errorf("remove a CRD that is no more: %w", err)
		}
		fmt.Println("removed", path)
	}
	paths := make([]string, 0, len(files))
	for path := range files {
		paths = append(paths, path)
	}
	slices.Sort(paths)
	for _, path := range paths {
		full := filepath.Join(dir, path)
		if old, err := os.ReadFile(full); err == nil && bytes.Equal(old, files[path]) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, files[path], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		fmt.Println("wrote", path)
	}
	return nil
}
