// Package testutil holds helpers for Moat's privileged tests: a private bpffs, network namespaces, veths.
package testutil

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot skips a test that needs root (bpf, network namespaces).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: run `make test` as root")
	}
}

// PinRoot mounts a bpf filesystem of the test's own and returns a pin root inside it; the mount (and every pin
// in it) goes when the test ends, even on failure.
func PinRoot(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs at %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "moat")
}
