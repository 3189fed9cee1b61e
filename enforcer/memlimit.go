package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// memoryLimitShare is the share of what the container's memory limit leaves the Go runtime that it is told to
// keep its memory under: the rest is the binary's own pages, which the runtime does not count, and room for a
// collection to finish.
const memoryLimitShare = 0.8

// gcPercent is the enforcer's GOGC: the runtime collects once its heap grew by half of what the last collection
// left live, not once it doubled (the runtime's default, 100). The enforcer's heap is mostly long-lived tables of
// the cluster's addresses, so the default's peak is near twice them: at 150,000 dual-stack pods, with 100-120 MB
// live, 277 MiB resident with 100 and 236 MiB with 50, against a target of 256 (make scale). A GOGC in the
// environment wins.
const gcPercent = 50

// setGCPercent sets gcPercent unless the environment sets GOGC; it reports the percent in force.
func setGCPercent() int {
	if v := os.Getenv("GOGC"); v != "" {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p
	}
	debug.SetGCPercent(gcPercent)
	return gcPercent
}

// memoryLimiter tells the Go runtime to collect harder as its memory nears memoryLimitShare of what the cgroup's
// memory limit (the container's, or the closest limit above it) leaves it, rather than grow until the kernel
// kills the process: the heap would otherwise grow to twice what is live before each collection. What the limit
// leaves is the limit less the kernel memory charged to the cgroup, which is mostly the datapath's BPF maps (the
// kernel charges a map to the cgroup of the process that creates it: about 100 MiB at 150,000 dual-stack pods),
// so it is read again as the maps grow (refresh). GOMEMLIMIT, when set, is the runtime's own and wins.
type memoryLimiter struct {
	dir   string // the cgroup whose limit is the smallest
	v1    bool   // cgroup version 1's memory hierarchy (else version 2)
	limit int64  // its memory limit, bytes
	set   int64  // the runtime's limit as last set
}

// newMemoryLimiter finds the process's memory limit (nil: none, or GOMEMLIMIT is set).
func newMemoryLimiter(cgroupRoot, procSelfCgroup string) (*memoryLimiter, error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return nil, nil
	}
	f, err := os.Open(procSelfCgroup)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var best *memoryLimiter
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		fields := strings.SplitN(sc.Text(), ":", 3)
		if len(fields) != 3 {
			continue
		}
		var m *memoryLimiter
		var err error
		switch {
		case fields[0] == "0" && fields[1] == "":
			m, err = smallestLimit(cgroupRoot, fields[2], "memory.max", false)
		case slices.Contains(strings.Split(fields[1], ","), "memory"):
			m, err = smallestLimit(filepath.Join(cgroupRoot, "memory"), fields[2], "memory.limit_in_bytes", true)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		if m != nil && (best == nil || m.limit < best.limit) {
			best = m
		}
	}
	return best, sc.Err()
}

// unlimited: a version 1 limit at least this big is none (the kernel writes its largest page count).
const unlimited = int64(1) << 60

// smallestLimit finds the smallest of file's limits in the cgroup path under root and those above it (nil: none).
func smallestLimit(root, path, file string, v1 bool) (*memoryLimiter, error) {
	var best *memoryLimiter
	for dir := filepath.Join(root, path); ; dir = filepath.Dir(dir) {
		b, err := os.ReadFile(filepath.Join(dir, file))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// the root (or a cgroup whose memory controller is off) has none
		case err != nil:
			return nil, err
		default:
			s := strings.TrimSpace(string(b))
			if s != "max" {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("%s: %q is not a byte count", filepath.Join(dir, file), s)
				}
				if n < unlimited && (best == nil || n < best.limit) {
					best = &memoryLimiter{dir: dir, v1: v1, limit: n}
				}
			}
		}
		if len(dir) <= len(root) {
			return best, nil
		}
	}
}

// kernelMemory is the kernel memory charged to the cgroup: version 1's kmem usage, version 2's "kernel" (or, on
// kernels that do not sum it, its parts) from memory.stat.
func (m *memoryLimiter) kernelMemory() (int64, error) {
	if m.v1 {
		b, err := os.ReadFile(filepath.Join(m.dir, "memory.kmem.usage_in_bytes"))
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil // kernel memory not accounted apart
		}
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	}
	b, err := os.ReadFile(filepath.Join(m.dir, "memory.stat"))
	if err != nil {
		return 0, err
	}
	stat := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				stat[k] = n
			}
		}
	}
	if n, ok := stat["kernel"]; ok {
		return n, nil
	}
	return stat["slab"] + stat["percpu"] + stat["kernel_stack"] + stat["pagetables"] + stat["sock"] + stat["vmalloc"], nil
}

// refresh sets the runtime's limit from the cgroup's limit and its kernel memory now; changed says whether it
// moved by more than a tenth since last set.
func (m *memoryLimiter) refresh() (set, kernel int64, changed bool, err error) {
	kernel, err = m.kernelMemory()
	if err != nil {
		return m.set, 0, false, err
	}
	// never below a quarter of the limit: a cgroup whose kernel memory took most of it is out of memory
	// whatever the runtime does, and collecting without end would only stop the enforcer from working
	set = int64(float64(max(m.limit-kernel, m.limit/4)) * memoryLimitShare)
	changed = m.set == 0 || set < m.set*9/10 || set > m.set*11/10
	if set != m.set {
		debug.SetMemoryLimit(set)
		m.set = set
	}
	return set, kernel, changed, nil
}
