// Package node runs a real Kubernetes node on this machine for the end-to-end suite: the control plane
// (internal/testutil/kubetest: etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on the host, and
// containerd, kubelet and kube-proxy in a network namespace of their own, wired to a stand-in Internet (documentation
// addresses and a metadata API) that is the node's default route. Pods are created by the kubelet through
// containerd's CRI and the CNI chain in /etc/cni/net.d, exactly as on a cluster node.
//
// Everything it changes on the host is recorded in a state file before it is changed (global sysctls, folders it
// creates, folders it moves aside), and Stop undoes it, also after a failed start; Recover undoes what a killed
// run left.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/internal/testutil/kubetest"
	"github.com/moatfw/moat/internal/testutil/procs"
)

// Config says where the node keeps its state and what it runs.
type Config struct {
	Dir          string    // state, logs; default /var/lib/moat-e2e
	CNIBinDir    string    // reference plugins to install into /opt/cni/bin (bridge, host-local, loopback, portmap)
	PauseArchive string    // the sandbox image (an OCI archive), imported before the kubelet starts
	PauseName    string    // its name as containerd knows it (containerd's sandbox_image)
	Log          io.Writer // progress
}

// Node is a running node.
type Node struct {
	Config
	Cluster    *kubetest.Cluster
	Kubeconfig string // admin, reaching the apiserver on HostAddr
	netns      ns.NetNS
	procs      []*procs.Proc
	state      *hostState
	sock       string
}

// The host folders the node uses as a real node does (Moat's manifests mount them).
var hostDirs = []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/run/moat", "/sys/fs/bpf/moat",
	"/var/log/pods", "/var/log/containers"}

// Global (not per network namespace) sysctls kubelet and kube-proxy may change.
var globalSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/netfilter/nf_conntrack_max"}

// hostState is what Stop restores, kept in a file so that a later run can restore it after a crash.
type hostState struct {
	Sysctls map[string]string `json:"sysctls"`
	// mount points the node made shared (HostToContainer volumes need a shared or slave host mount, as systemd
	// makes every mount); they are made private again
	Shared  []string          `json:"shared"`
	Created []string          `json:"created"` // folders that did not exist
	Moved   map[string]string `json:"moved"`   // folders that existed: where they were moved aside
}

func (n *Node) logf(format string, args ...any) {
	if n.Log != nil {
		fmt.Fprintf(n.Log, "node: "+format+"\n", args...)
	}
}

func statePath(dir string) string { return filepath.Join(dir, "host-state.json") }

// Start brings the node up: it returns once the node is Ready. On failure everything is undone.
func Start(ctx context.Context, cfg Config) (n *Node, err error) {
	if cfg.Dir == "" {
		cfg.Dir = "/var/lib/moat-e2e"
	}
	if err := Recover(cfg.Dir, cfg.Log); err != nil {
		return nil, fmt.Errorf("undo a previous run: %w", err)
	}
	n = &Node{Config: cfg, sock: "/run/moat-e2e/containerd/containerd.sock"}
	defer func() {
		if err != nil {
			n.logf("start failed: %v; undoing", err)
			if serr := n.Stop(); serr != nil {
				err = fmt.Errorf("%w (and undoing it: %v)", err, serr)
			}
		}
	}()
	if err := n.saveHost(); err != nil {
		return n, err
	}
	n.logf("network: namespace %s (node %s), the Internet in %s", NodeNS, NodeIP, InternetNS)
	if err := wire(); err != nil {
		return n, err
	}
	if n.netns, err = ns.GetNS("/run/netns/" + NodeNS); err != nil {
		return n, err
	}
	n.logf("control plane on %s", HostAddr)
	if n.Cluster, err = kubetest.New(filepath.Join(cfg.Dir, "control-plane"), kubetest.WithHost(HostAddr.String()),
		kubetest.WithScheduler(), kubetest.WithControllers("namespace-controller", "garbage-collector-controller",
			"serviceaccount-controller", "root-ca-certificate-publisher-controller", "daemonset-controller",
			"endpointslice-controller", "node-lifecycle-controller", "replicaset-controller", "deployment-controller"),
		kubetest.WithAPIServerFlags(map[string]string{"service-node-port-range": "30000-32767",
			// exec and logs reach the kubelet at the node's address: its name resolves nowhere
			"kubelet-preferred-address-types": "InternalIP"})); err != nil {
		return n, err
	}
	n.Kubeconfig = n.Cluster.Kubeconfig
	if err := n.installCNI(); err != nil {
		return n, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	if cfg.PauseArchive != "" {
		if err := n.Import(ctx, cfg.PauseArchive); err != nil {
			return n, err
		}
	}
	if err := n.startKubelet(ctx); err != nil {
		return n, err
	}
	if err := n.startKubeProxy(); err != nil {
		return n, err
	}
	return n, nil
}

// saveHost records the host's state before anything changes, and moves existing folders aside.
func (n *Node) saveHost() error {
	st := &hostState{Sysctls: map[string]string{}, Moved: map[string]string{}}
	for _, k := range globalSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			st.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return err
	}
	n.state = st
	if err := n.writeState(); err != nil {
		return err
	}
	if !isShared("/sys/fs/bpf") {
		st.Shared = append(st.Shared, "/sys/fs/bpf")
		if err := n.writeState(); err != nil {
			return err
		}
		if err := unix.Mount("", "/sys/fs/bpf", "", unix.MS_SHARED, ""); err != nil {
			return fmt.Errorf("make /sys/fs/bpf a shared mount: %w", err)
		}
	}
	for _, d := range append(append([]string{}, hostDirs...), "/run/moat-e2e") {
		if _, err := os.Stat(d); err == nil {
			if d == "/sys/fs/bpf/moat" || d == "/run/moat-e2e" {
				return fmt.Errorf("%s exists: is Moat or another e2e run using this machine? Remove it first", d)
			}
			aside := filepath.Join(n.Dir, "moved-aside", strings.ReplaceAll(strings.Trim(d, "/"), "/", "_"))
			if err := os.MkdirAll(filepath.Dir(aside), 0o700); err != nil {
				return err
			}
			if err := os.Rename(d, aside); err != nil {
				return fmt.Errorf("move %s aside: %w", d, err)
			}
			st.Moved[d] = aside
		}
		created := topMissing(d)
		if d != "/sys/fs/bpf/moat" { // Moat's to create
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		st.Created = append(st.Created, created)
		if err := n.writeState(); err != nil {
			return err
		}
	}
	return nil
}

// topMissing is the outermost folder of path that does not exist (path itself when its parent exists).
func topMissing(path string) string {
	top := path
	for p := filepath.Dir(path); p != "/" && p != "."; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		top = p
	}
	return top
}

func (n *Node) writeState() error {
	b, err := json.MarshalIndent(n.state, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(statePath(n.Dir), b, 0o600)
}

// Stop tears the node down and restores the host. It goes on past errors and reports them all.
func (n *Node) Stop() error {
	var errs []error
	for i := len(n.procs) - 1; i >= 0; i-- {
		p := n.procs[i]
		if p.Name == "containerd" {
			errs = append(errs, n.removeContainers())
		}
		p.Terminate(15 * time.Second)
	}
	n.procs = nil
	errs = append(errs, killShims(n.sock))
	if n.Cluster != nil {
		errs = append(errs, n.Cluster.Stop())
		n.Cluster = nil
	}
	if n.netns != nil {
		n.netns.Close()
		n.netns = nil
	}
	errs = append(errs, restoreHost(n.Dir, n.Log))
	return errors.Join(errs...)
}

// Recover undoes what a run that was killed left behind (its state file says what), and does nothing when there
// is none.
func Recover(dir string, log io.Writer) error {
	if _, err := os.Stat(statePath(dir)); err != nil {
		return nil
	}
	if log != nil {
		fmt.Fprintf(log, "node: a previous run left %s: undoing it\n", statePath(dir))
	}
	errs := []error{killShims("/run/moat-e2e/containerd/containerd.sock"), killLeftovers(dir)}
	errs = append(errs, restoreHost(dir, log))
	return errors.Join(errs...)
}

// restoreHost unmounts what the node mounted, removes its network, restores the sysctls and the folders.
func restoreHost(dir string, log io.Writer) error {
	var errs []error
	errs = append(errs, unmountUnder(dir, "/run/moat-e2e", "/run/netns/cni-"))
	errs = append(errs, unwire())
	errs = append(errs, removeCNINetns())
	data, err := os.ReadFile(statePath(dir))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var st hostState
	if err := json.Unmarshal(data, &st); err != nil {
		return errors.Join(append(errs, fmt.Errorf("state file: %w", err))...)
	}
	for k, v := range st.Sysctls {
		if cur, err := os.ReadFile("/proc/sys/" + k); err == nil && strings.TrimSpace(string(cur)) != v {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore sysctl %s: %w", k, err))
			}
		}
	}
	for _, mp := range st.Shared {
		if err := unix.Mount("", mp, "", unix.MS_PRIVATE, ""); err != nil {
			errs = append(errs, fmt.Errorf("make %s private again: %w", mp, err))
		}
	}
	for i := len(st.Created) - 1; i >= 0; i-- {
		if err := os.RemoveAll(st.Created[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for d, aside := range st.Moved {
		if err := os.Rename(aside, d); err != nil {
			errs = append(errs, fmt.Errorf("put %s back: %w", d, err))
		}
	}
	errs = append(errs, removeCgroups("kubepods"))
	err = errors.Join(errs...)
	if err == nil {
		// the state is restored: the folder (logs included) goes too
		_ = os.RemoveAll(dir)
	} else if log != nil {
		fmt.Fprintf(log, "node: restoring the host: %v (state kept in %s)\n", err, dir)
	}
	return err
}

// isShared reports whether a mount point propagates to peers (mountinfo's optional field shared:N).
func isShared(mp string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	shared := false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[4] != mp {
			continue
		}
		shared = false // the last mount on the point is the one that counts
		for _, opt := range f[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") {
				shared = true
			}
		}
	}
	return shared
}

// unmountUnder unmounts every mount point below the prefixes, deepest first.
func unmountUnder(prefixes ...string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := strings.ReplaceAll(f[4], `\040`, " ")
		for _, p := range prefixes {
			if strings.HasPrefix(mp, p) {
				points = append(points, mp)
				break
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// removeCNINetns removes the pod network namespaces containerd made (cni-*) that are left.
func removeCNINetns() error {
	matches, _ := filepath.Glob("/run/netns/cni-*")
	var errs []error
	for _, m := range matches {
		_ = unix.Unmount(m, unix.MNT_DETACH)
		if err := os.Remove(m); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the kubelet's cgroup tree (name) in every hierarchy, deepest first. Processes still in
// it are the node's containers (a killed run leaves them: ending a shim does not end its container): they are
// killed by PID first.
func removeCgroups(name string) error {
	var errs []error
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	if m, _ := filepath.Glob("/sys/fs/cgroup/" + name); len(m) > 0 {
		roots = append(roots, m...)
	}
	var pids []int
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Name() == "cgroup.procs" {
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					var pid int
					if _, err := fmt.Sscanf(f, "%d", &pid); err == nil && pid > 1 && pid != os.Getpid() {
						pids = append(pids, pid)
					}
				}
			}
			return nil
		})
	}
	killAndWait(pids)
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// killShims ends the containerd shims (and so the containers) that the node's containerd started: those whose
// command line names its socket. By PID, never by name.
func killShims(sock string) error {
	return killWhere(func(cmdline string) bool {
		return strings.Contains(cmdline, "containerd-shim") && strings.Contains(cmdline, sock)
	})
}

// killLeftovers ends the node's own processes a killed run left: those started with the state folder in their
// command line (containerd, kubelet, kube-proxy, the control plane).
func killLeftovers(dir string) error {
	return killWhere(func(cmdline string) bool { return strings.Contains(cmdline, dir+"/") })
}

// killAndWait SIGKILLs the processes and waits up to 10 s for them to be gone.
func killAndWait(pids []int) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func killWhere(match func(cmdline string) bool) error {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !match(strings.ReplaceAll(string(b), "\x00", " ")) {
			continue
		}
		pids = append(pids, pid)
	}
	killAndWait(pids)
	return nil
}

// Exec runs a command inside the node's network namespace (the host's mounts and processes).
func (n *Node) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out []byte
	err := n.netns.Do(func(ns.NetNS) error {
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return out, err
}
