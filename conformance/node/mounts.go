package node

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The host paths each node has its own of: its mount namespace binds a folder of the node's over each (Moat's
// manifests mount them as hostPath volumes; the runtime and the kubelet use them as on a real node), and a bpf
// filesystem of the node's own is mounted at /sys/fs/bpf.
var nodePaths = []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/run/moat", "/var/log/pods",
	"/var/log/containers"}

const (
	bpffsPath = "/sys/fs/bpf"
	// runDir holds the nodes' runtime state (containerd's sockets and state, the IPAM leases) at paths the
	// host and the nodes share, and nsDir the files that keep the nodes' mount namespaces.
	runDir = "/run/moat-e2e"
	nsDir  = runDir + "/mntns"
)

// backing is the folder of the node's that stands for a host path in its mount namespace.
func (n *Node) backing(path string) string {
	if path == bpffsPath {
		return filepath.Join(n.dir, "bpffs")
	}
	return filepath.Join(n.dir, "root", strings.TrimPrefix(path, "/"))
}

// HostPath says where the host sees a path of the node's mount namespace: in the node's own folder for the
// paths bound over host paths and for its bpf filesystem, through its containerd's root for the mounts only the
// node's namespace has (the pods' network namespaces), and unchanged for the rest.
func (n *Node) HostPath(path string) string {
	for _, p := range append(append([]string{}, nodePaths...), bpffsPath) {
		if path == p || strings.HasPrefix(path, p+"/") {
			return n.backing(p) + strings.TrimPrefix(path, p)
		}
	}
	// /var/run is a symbolic link to /run, which a walk through /proc/PID/root would resolve in the host's root
	if rest, ok := strings.CutPrefix(path, "/var/run/"); ok {
		path = "/run/" + rest
	}
	if strings.HasPrefix(path, "/run/netns/") {
		for _, p := range n.procs {
			if p.Name == "containerd" && !p.Exited() {
				return "/proc/" + strconv.Itoa(p.Cmd.Process.Pid) + "/root" + path
			}
		}
	}
	return path
}

// mountNSPath is the file that keeps the node's mount namespace.
func (n *Node) mountNSPath() string { return filepath.Join(nsDir, n.Name) }

// makeNSDir makes the folder of the mount namespace files a private mount of its own, as `ip netns` does for
// /run/netns: a namespace file must not sit on a mount that propagates (the host's root may be shared).
func makeNSDir() error {
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(nsDir, nsDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", nsDir, err)
	}
	if err := unix.Mount("", nsDir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", nsDir, err)
	}
	return nil
}

// makeMountNS makes the node's mount namespace: a slave of the host's (the host's later mounts show in it, its
// own never reach the host), with the node's folders bound over the host paths and its bpf filesystem, mounted
// on the host in the node's folder (where a test reads the pins) and bound to /sys/fs/bpf, shared there so that
// HostToContainer volumes of it are allowed. The host paths that do not exist are created on the host first
// (recorded, as mount points only); those that exist are left as they are: only the node sees its folders.
func (c *Cluster) makeMountNS(n *Node) error {
	script := []string{"set -e"}
	for _, p := range nodePaths {
		if err := os.MkdirAll(n.backing(p), 0o755); err != nil {
			return err
		}
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			if err := c.created(topMissing(p)); err != nil {
				return err
			}
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		}
		script = append(script, fmt.Sprintf("mount --bind %q %q", n.backing(p), p))
	}
	bpffs := n.backing(bpffsPath)
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount a bpf filesystem on %s: %w", bpffs, err)
	}
	// the host's own bpf filesystem goes from the node's view first: containerd judges a volume's propagation by
	// the first mount it finds on the path, not the top one
	script = append(script, "while mountpoint -q "+bpffsPath+"; do umount -l "+bpffsPath+"; done",
		fmt.Sprintf("mount --bind %q %s", bpffs, bpffsPath), "mount --make-shared "+bpffsPath)
	f, err := os.Create(n.mountNSPath())
	if err != nil {
		return err
	}
	f.Close()
	if out, err := exec.Command("unshare", "--mount="+n.mountNSPath(), "--propagation", "slave", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("unshare a mount namespace for %s: %v: %s", n.Name, err, out)
	}
	if out, err := exec.Command("nsenter", "--mount="+n.mountNSPath(), "--", "sh", "-c", strings.Join(script, "\n")).CombinedOutput(); err != nil {
		return fmt.Errorf("mounts of %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// nsenter is the command line that runs bin with args inside the node's mount and network namespaces (nsenter
// execs it: the process started is the component itself).
func (n *Node) nsenter(bin string, args ...string) []string {
	return append([]string{"nsenter", "--mount=" + n.mountNSPath(), "--net=/run/netns/" + n.Name, "--", bin}, args...)
}

// makeCgroup makes the node's cgroup root (the kubelet's cgroupRoot: its pods go below it, apart from the other
// nodes' pods) in every cgroup hierarchy; cgroup v1's cpuset gets its parent's CPUs and memory nodes.
func makeCgroup(name string) error {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return os.Mkdir("/sys/fs/cgroup/"+name, 0o755)
	}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, procs := range hierarchies {
		dir := filepath.Join(filepath.Dir(procs), name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if filepath.Base(filepath.Dir(procs)) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(filepath.Dir(procs), f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %w", filepath.Join(dir, f), err)
				}
			}
		}
	}
	return nil
}
