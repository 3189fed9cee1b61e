package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// The memory limit is read from the process's cgroup and those above it (the smallest wins), "max" is none, and
// a process outside any version 2 cgroup reads none; the runtime's limit is set to a share of it.
func TestMemoryLimitFromCgroup(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	root := t.TempDir()
	write := func(path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	self := filepath.Join(root, "self-cgroup")
	write(self, "0::/kubepods/pod1/enforcer\n")
	write(filepath.Join(root, "kubepods/memory.max"), "max\n")
	write(filepath.Join(root, "kubepods/pod1/memory.max"), "1073741824\n")
	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.max"), "536870912\n")
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1)) // as it was

	set, limit, err := setMemoryLimit(root, self)
	want := int64(512 << 20)
	if err != nil || limit != want || set != int64(float64(want)*memoryLimitShare) {
		t.Fatalf("set %d, limit %d, err %v", set, limit, err)
	}
	if got := debug.SetMemoryLimit(-1); got != set {
		t.Errorf("the runtime's limit is %d, want %d", got, set)
	}

	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.max"), "max\n")
	if _, limit, err := setMemoryLimit(root, self); err != nil || limit != 1<<30 {
		t.Errorf("the pod's limit above an unlimited container: %d, %v", limit, err)
	}
	write(filepath.Join(root, "kubepods/pod1/memory.max"), "max\n")
	if set, limit, err := setMemoryLimit(root, self); err != nil || limit != 0 || set != 0 {
		t.Errorf("no limit anywhere: set %d, limit %d, %v", set, limit, err)
	}
	write(self, "1:name=systemd:/x\n")
	if _, limit, err := setMemoryLimit(root, self); err != nil || limit != 0 {
		t.Errorf("no memory controller: %d, %v", limit, err)
	}
	// version 1's memory hierarchy (a hybrid node): its own file, and its "unlimited"
	write(self, "4:memory:/kubepods/pod2\n0::/\n")
	write(filepath.Join(root, "memory/kubepods/memory.limit_in_bytes"), "9223372036854771712\n")
	write(filepath.Join(root, "memory/kubepods/pod2/memory.limit_in_bytes"), "268435456\n")
	if _, limit, err := setMemoryLimit(root, self); err != nil || limit != 256<<20 {
		t.Errorf("cgroup version 1: %d, %v", limit, err)
	}
	write(filepath.Join(root, "memory/kubepods/pod2/memory.limit_in_bytes"), "9223372036854771712\n")
	if _, limit, err := setMemoryLimit(root, self); err != nil || limit != 0 {
		t.Errorf("cgroup version 1 unlimited: %d, %v", limit, err)
	}
	write(filepath.Join(root, "kubepods/pod1/memory.max"), "lots\n")
	write(self, "0::/kubepods/pod1/enforcer\n")
	if _, _, err := setMemoryLimit(root, self); err == nil {
		t.Error("a memory.max that is not a number was taken")
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if set, _, err := setMemoryLimit(root, self); err != nil || set != 0 {
		t.Errorf("GOMEMLIMIT set: the runtime's own; set %d, %v", set, err)
	}
}
