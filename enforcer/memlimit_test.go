package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// The memory limit is read from the process's cgroup and those above it (the smallest wins), "max" is none, and
// a process outside any memory cgroup reads none; the runtime's limit is a share of what the limit leaves once
// the kernel memory charged to the cgroup (the datapath's maps) is taken away, set again as that grows.
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
	limiter := func() *memoryLimiter {
		t.Helper()
		m, err := newMemoryLimiter(root, filepath.Join(root, "self-cgroup"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1)) // as it was
	share := func(n int64) int64 { return int64(float64(n) * memoryLimitShare) }

	// version 2
	write(filepath.Join(root, "self-cgroup"), "0::/kubepods/pod1/enforcer\n")
	write(filepath.Join(root, "kubepods/memory.max"), "max\n")
	write(filepath.Join(root, "kubepods/pod1/memory.max"), "1073741824\n")
	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.max"), "536870912\n")
	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.stat"), "anon 1000\nfile 5000\nkernel 104857600\nslab 10\n")
	m := limiter()
	if m == nil || m.limit != 512<<20 {
		t.Fatalf("limit: %+v", m)
	}
	set, kernel, changed, err := m.refresh()
	if err != nil || kernel != 100<<20 || set != share(412<<20) || !changed {
		t.Fatalf("set %d, kernel %d, changed %v, err %v", set, kernel, changed, err)
	}
	if got := debug.SetMemoryLimit(-1); got != set {
		t.Errorf("the runtime's limit is %d, want %d", got, set)
	}
	// the maps grow a little: set again, not worth a word; a lot: said
	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.stat"), "kernel 110100480\n")
	if set, _, changed, _ := m.refresh(); changed || set != share(407<<20) {
		t.Errorf("5 MiB more kernel memory: set %d, changed %v", set, changed)
	}
	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.stat"), "kernel 471859200\n")
	if set, _, changed, _ := m.refresh(); !changed || set != share(128<<20) {
		t.Errorf("kernel memory past three quarters of the limit: set %d (want a quarter's share), changed %v", set, changed)
	}
	// a kernel without the "kernel" sum: its parts
	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.stat"), "slab 1048576\nvmalloc 2097152\nanon 99999999\n")
	if _, kernel, _, _ := m.refresh(); kernel != 3<<20 {
		t.Errorf("kernel memory from its parts: %d", kernel)
	}

	write(filepath.Join(root, "kubepods/pod1/enforcer/memory.max"), "max\n")
	if m := limiter(); m == nil || m.limit != 1<<30 {
		t.Errorf("the pod's limit above an unlimited container: %+v", m)
	}
	write(filepath.Join(root, "kubepods/pod1/memory.max"), "max\n")
	if m := limiter(); m != nil {
		t.Errorf("no limit anywhere: %+v", m)
	}
	write(filepath.Join(root, "self-cgroup"), "1:name=systemd:/x\n")
	if m := limiter(); m != nil {
		t.Errorf("no memory controller: %+v", m)
	}

	// version 1's memory hierarchy (a hybrid node): its own files, and its "unlimited"
	write(filepath.Join(root, "self-cgroup"), "4:memory:/kubepods/pod2\n0::/\n")
	write(filepath.Join(root, "memory/kubepods/memory.limit_in_bytes"), "9223372036854771712\n")
	write(filepath.Join(root, "memory/kubepods/pod2/memory.limit_in_bytes"), "268435456\n")
	write(filepath.Join(root, "memory/kubepods/pod2/memory.kmem.usage_in_bytes"), "67108864\n")
	m = limiter()
	if m == nil || m.limit != 256<<20 {
		t.Fatalf("cgroup version 1: %+v", m)
	}
	if set, kernel, _, err := m.refresh(); err != nil || kernel != 64<<20 || set != share(192<<20) {
		t.Errorf("cgroup version 1: set %d, kernel %d, %v", set, kernel, err)
	}
	write(filepath.Join(root, "memory/kubepods/pod2/memory.limit_in_bytes"), "9223372036854771712\n")
	if m := limiter(); m != nil {
		t.Errorf("cgroup version 1 unlimited: %+v", m)
	}

	write(filepath.Join(root, "memory/kubepods/pod2/memory.limit_in_bytes"), "lots\n")
	if _, err := newMemoryLimiter(root, filepath.Join(root, "self-cgroup")); err == nil {
		t.Error("a limit that is not a number was taken")
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if m, err := newMemoryLimiter(root, filepath.Join(root, "self-cgroup")); err != nil || m != nil {
		t.Errorf("GOMEMLIMIT set: the runtime's own; %+v, %v", m, err)
	}
}

// The enforcer collects once its heap grew by half (gcPercent), unless the environment's GOGC says otherwise.
func TestGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100)) // as it was
	t.Setenv("GOGC", "")
	if got := setGCPercent(); got != gcPercent || debug.SetGCPercent(gcPercent) != gcPercent {
		t.Errorf("without GOGC: %d, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "80")
	debug.SetGCPercent(80) // as the runtime reads it at start
	if got := setGCPercent(); got != 80 || debug.SetGCPercent(80) != 80 {
		t.Errorf("with GOGC=80: %d, want the environment's 80", got)
	}
}
