package main

import (
	"bufio"
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

// memoryLimitShare is the share of the container's memory limit the Go runtime is told to keep its memory under:
// the rest is the binary's own pages, which the runtime does not count, and room for a collection to finish.
const memoryLimitShare = 0.8

// setMemoryLimit tells the Go runtime to collect harder as its memory nears memoryLimitShare of the cgroup's
// memory limit (the container's, or the closest limit above it), rather than grow until the kernel kills the
// process: the heap would otherwise grow to twice what is live before each collection. GOMEMLIMIT, when set, is
// the runtime's own and wins. It returns the limit it set (0: none) and the cgroup limit it read.
func setMemoryLimit(cgroupRoot, procSelfCgroup string) (set, cgroupLimit int64, err error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, 0, nil
	}
	cgroupLimit, err = cgroupMemoryLimit(cgroupRoot, procSelfCgroup)
	if err != nil || cgroupLimit == 0 {
		return 0, cgroupLimit, err
	}
	set = int64(float64(cgroupLimit) * memoryLimitShare)
	debug.SetMemoryLimit(set)
	return set, cgroupLimit, nil
}

// cgroupMemoryLimit is the smallest memory limit of the process's cgroup and those above it, in bytes (0: none
// is set): memory.max in cgroup version 2, memory.limit_in_bytes in version 1's memory hierarchy (under
// cgroupRoot/memory), whichever the node has.
func cgroupMemoryLimit(cgroupRoot, procSelfCgroup string) (int64, error) {
	f, err := os.Open(procSelfCgroup)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var limit int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		fields := strings.SplitN(sc.Text(), ":", 3)
		if len(fields) != 3 {
			continue
		}
		var root, file string
		switch {
		case fields[0] == "0" && fields[1] == "":
			root, file = cgroupRoot, "memory.max"
		case slices.Contains(strings.Split(fields[1], ","), "memory"):
			root, file = filepath.Join(cgroupRoot, "memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		l, err := smallestLimit(root, fields[2], file)
		if err != nil {
			return 0, err
		}
		if l > 0 && (limit == 0 || l < limit) {
			limit = l
		}
	}
	return limit, sc.Err()
}

// unlimited: a version 1 limit at least this big is none (the kernel writes its largest page count).
const unlimited = int64(1) << 60

// smallestLimit is the smallest of file's limits in the cgroup path under root and those above it (0: none).
func smallestLimit(root, path, file string) (int64, error) {
	var limit int64
	for dir := filepath.Join(root, path); ; dir = filepath.Dir(dir) {
		b, err := os.ReadFile(filepath.Join(dir, file))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// the root (or a cgroup whose memory controller is off) has none
		case err != nil:
			return 0, err
		default:
			s := strings.TrimSpace(string(b))
			if s != "max" {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s: %q is not a byte count", filepath.Join(dir, file), s)
				}
				if n < unlimited && (limit == 0 || n < limit) {
					limit = n
				}
			}
		}
		if len(dir) <= len(root) {
			return limit, nil
		}
	}
}
