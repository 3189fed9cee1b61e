// Package node runs a small real Kubernetes cluster on this machine for the end-to-end suite: the control plane
// (internal/testutil/kubetest: etcd, kube-apiserver, kube-controller-manager, kube-scheduler) on the host, and N
// nodes, each with containerd, kubelet and kube-proxy in a network namespace and a mount namespace of its own. The
// nodes share a datacenter network with a stand-in Internet (documentation addresses and a metadata API) behind
// it, their default route (network.go). Pods are created by each node's kubelet through its containerd's CRI and
// the CNI chain in the node's own /etc/cni/net.d, exactly as on a cluster node (mounts.go).
//
// Everything it changes on the host is recorded in a state file before it is changed (global sysctls, folders it
// creates, the nodes whose namespaces, links and cgroups it makes), and Stop undoes it, also after a failed start;
// Recover undoes what a killed run left.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"

	"github.com/moatfw/moat/internal/testutil/kubetest"
	"github.com/moatfw/moat/internal/testutil/procs"
)

// Config says where the cluster keeps its state and what it runs.
type Config struct {
	Dir          string    // state, logs; default /var/lib/moat-e2e
	Nodes        int       // how many nodes; default 1
	CNIBinDir    string    // reference plugins to install into each node's /opt/cni/bin (bridge, host-local, loopback, portmap)
	PauseArchive string    // the sandbox image (an OCI archive), imported before the kubelets start
	PauseName    string    // its name as containerd knows it (containerd's sandbox_image)
	Log          io.Writer // progress
	// ClusterDNS is the kubelets' clusterDNS, the cluster IP of the DNS Service the caller deploys (the
	// conformance pass: upstream.ClusterDNSIP); empty: pods get no cluster DNS (the e2e suite dials addresses).
	ClusterDNS string
	// Controllers replaces the kube-controller-manager controllers the cluster runs (DefaultControllers); "*"
	// runs every controller enabled by default, as the conformance pass needs (Endpoints, EndpointSlice
	// mirroring, ReplicationControllers, ServiceCIDRs, pod garbage collection and more).
	Controllers []string
}

// DefaultControllers are the kube-controller-manager controllers of the e2e suite's cluster: what Moat's
// manifests and the suite's cases use.
var DefaultControllers = []string{"namespace-controller", "garbage-collector-controller",
	"serviceaccount-controller", "root-ca-certificate-publisher-controller", "daemonset-controller",
	"endpointslice-controller", "node-lifecycle-controller", "replicaset-controller", "deployment-controller"}

// Cluster is the control plane and its running nodes.
type Cluster struct {
	Config
	ControlPlane *kubetest.Cluster
	Kubeconfig   string // admin, reaching the apiserver on HostAddr
	Nodes        []*Node
	state        *hostState
}

// Node is a running node.
type Node struct {
	Name      string       // its Node object, network namespace, mount namespace file and cgroup root
	IP, IPv6  netip.Addr   // on the datacenter network (kubelet --node-ip)
	MgmtIP    netip.Addr   // on the management network, where it reaches the apiserver
	PodCIDR   netip.Prefix // its pods' addresses (the bridge network's host-local ranges)
	PodCIDRv6 netip.Prefix
	cluster   *Cluster
	dir       string // its state, logs, and the folders bound over host paths
	procs     []*procs.Proc
	sock      string // containerd's socket
}

// Global (not per network namespace) sysctls kubelet and kube-proxy may change.
var globalSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/netfilter/nf_conntrack_max"}

// hostState is what Stop restores, kept in a file so that a later run can restore it after a crash.
type hostState struct {
	Sysctls map[string]string `json:"sysctls"`
	Created []string          `json:"created"` // folders that did not exist (mount points of the nodes' folders)
	Nodes   []string          `json:"nodes"`   // each a network namespace, a mount namespace file, a cgroup
}

func (c *Cluster) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "node: "+format+"\n", args...)
	}
}

func statePath(dir string) string { return filepath.Join(dir, "host-state.json") }

// Start brings the control plane and the nodes up: it returns once every node is Ready. On failure everything
// is undone.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.Dir == "" {
		cfg.Dir = "/var/lib/moat-e2e"
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 1
	}
	if cfg.Nodes < 1 || cfg.Nodes > maxNodes {
		return nil, fmt.Errorf("%d nodes: between 1 and %d", cfg.Nodes, maxNodes)
	}
	if err := Recover(cfg.Dir, cfg.Log); err != nil {
		return nil, fmt.Errorf("undo a previous run: %w", err)
	}
	if _, err := os.Stat(runDir); err == nil {
		return nil, fmt.Errorf("%s exists: is another e2e run using this machine? Remove it first", runDir)
	}
	c = &Cluster{Config: cfg}
	for i := 0; i < cfg.Nodes; i++ {
		n := &Node{cluster: c}
		n.addresses(i)
		n.dir = filepath.Join(cfg.Dir, "nodes", n.Name)
		n.sock = filepath.Join(runDir, n.Name, "containerd", "containerd.sock")
		c.Nodes = append(c.Nodes, n)
	}
	defer func() {
		if err != nil {
			c.logf("start failed: %v; undoing", err)
			if serr := c.Stop(); serr != nil {
				err = fmt.Errorf("%w (and undoing it: %v)", err, serr)
			}
		}
	}()
	if err := c.saveHost(); err != nil {
		return c, err
	}
	start := time.Now()
	c.logf("network: nodes %s on the datacenter network %s, %s (namespace %s), the Internet in %s at %s",
		strings.Join(c.names(), ", "), dcNet, dcNet6, DatacenterNS, InternetNS, inetV4)
	if err := wire(c.Nodes); err != nil {
		return c, err
	}
	if err := makeNSDir(); err != nil {
		return c, err
	}
	for _, n := range c.Nodes {
		if err := c.makeMountNS(n); err != nil {
			return c, err
		}
		if err := makeCgroup(n.Name); err != nil {
			return c, err
		}
		if err := n.installCNI(); err != nil {
			return c, err
		}
	}
	c.logf("control plane on %s", HostAddr)
	controllers := DefaultControllers
	if cfg.Controllers != nil {
		controllers = cfg.Controllers
	}
	if c.ControlPlane, err = kubetest.New(filepath.Join(cfg.Dir, "control-plane"), kubetest.WithHost(HostAddr.String()),
		kubetest.WithScheduler(), kubetest.WithControllers(controllers...),
		kubetest.WithAPIServerFlags(map[string]string{"service-node-port-range": "30000-32767",
			// exec and logs reach the kubelet at the node's address: its name resolves nowhere
			"kubelet-preferred-address-types": "InternalIP"})); err != nil {
		return c, err
	}
	c.Kubeconfig = c.ControlPlane.Kubeconfig
	planeUp := time.Since(start)
	// the nodes start side by side: each waits mostly for its own components
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = n.start(ctx); errs[i] != nil {
				errs[i] = fmt.Errorf("%s: %w", n.Name, errs[i])
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	c.logf("%d nodes Ready %s after the start (the control plane took %s)", len(c.Nodes),
		time.Since(start).Round(100*time.Millisecond), planeUp.Round(100*time.Millisecond))
	return c, nil
}

func (c *Cluster) names() []string {
	var names []string
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	return names
}

// start runs the node's components, each once the one before is ready.
func (n *Node) start(ctx context.Context) error {
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if n.cluster.PauseArchive != "" {
		if err := n.Import(ctx, n.cluster.PauseArchive); err != nil {
			return err
		}
	}
	if err := n.startKubelet(ctx); err != nil {
		return err
	}
	return n.startKubeProxy()
}

// Client is an admin client of the cluster's apiserver.
func (c *Cluster) Client() kubernetes.Interface { return c.ControlPlane.Client() }

// saveHost records the host's state before anything changes.
func (c *Cluster) saveHost() error {
	c.state = &hostState{Sysctls: map[string]string{}, Nodes: c.names()}
	for _, k := range globalSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			c.state.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	if err := c.writeState(); err != nil {
		return err
	}
	return c.created(runDir)
}

// created records a host folder the run is about to create.
func (c *Cluster) created(dir string) error {
	c.state.Created = append(c.state.Created, dir)
	return c.writeState()
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

func (c *Cluster) writeState() error {
	b, err := json.MarshalIndent(c.state, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(statePath(c.Dir), b, 0o600)
}

// Stop tears the nodes and the control plane down and restores the host. It goes on past errors and reports
// them all.
func (c *Cluster) Stop() error {
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = n.stop() }()
	}
	wg.Wait()
	if c.ControlPlane != nil {
		errs = append(errs, c.ControlPlane.Stop())
		c.ControlPlane = nil
	}
	if c.state == nil {
		return errors.Join(errs...) // nothing of the host was touched
	}
	errs = append(errs, restoreHost(c.Dir, c.Log))
	return errors.Join(errs...)
}

// stop ends the node's processes, newest first, and the containers of its containerd.
func (n *Node) stop() error {
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
	errs := []error{killShims(runDir + "/"), killLeftovers(dir)}
	errs = append(errs, restoreHost(dir, log))
	return errors.Join(errs...)
}

// restoreHost removes what the nodes' processes left (containers, cgroups), unmounts what the run mounted (the
// nodes' bpf filesystems and mount namespaces), removes the network, restores the sysctls and the folders.
func restoreHost(dir string, log io.Writer) error {
	var errs []error
	data, err := os.ReadFile(statePath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil // restored already
	}
	if err != nil {
		return err
	}
	var st hostState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	for _, name := range st.Nodes {
		errs = append(errs, removeCgroups(name))
	}
	errs = append(errs, unmountUnder(dir+"/", runDir+"/", "/run/netns/cni-"))
	errs = append(errs, unwire(st.Nodes))
	errs = append(errs, removeCNINetns())
	for k, v := range st.Sysctls {
		if cur, err := os.ReadFile("/proc/sys/" + k); err == nil && strings.TrimSpace(string(cur)) != v {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restore sysctl %s: %w", k, err))
			}
		}
	}
	for i := len(st.Created) - 1; i >= 0; i-- {
		if err := os.RemoveAll(st.Created[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	err = errors.Join(errs...)
	if err == nil {
		// the state is restored: the folder (logs included) goes too
		_ = os.RemoveAll(dir)
	} else if log != nil {
		fmt.Fprintf(log, "node: restoring the host: %v (state kept in %s)\n", err, dir)
	}
	return err
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
			if strings.HasPrefix(mp, p) || mp+"/" == p {
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

// removeCgroups removes a node's cgroup tree (name: the kubelet's cgroupRoot) in every hierarchy, deepest first.
// Processes still in it are the node's containers (a killed run leaves them: ending a shim does not end its
// container): they are killed by PID first.
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

// killShims ends the containerd shims (and so the containers) that a node's containerd started: those whose
// command line names its socket (or a socket below that folder). By PID, never by name.
func killShims(sock string) error {
	return killWhere(func(cmdline string) bool {
		return strings.Contains(cmdline, "containerd-shim") && strings.Contains(cmdline, sock)
	})
}

// killLeftovers ends the cluster's own processes a killed run left: those started with the state folder in
// their command line (containerd, kubelet, kube-proxy, the control plane).
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

// Exec runs a command inside the node's network and mount namespaces.
func (n *Node) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := n.nsenter(name, args...)
	return exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
}

// Kubectl runs the cached kubectl against the cluster.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(kubetest.BinDir(), "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	return cmd.CombinedOutput()
}

// Kubectl runs the cached kubectl against the node's cluster.
func (n *Node) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return n.cluster.Kubectl(ctx, args...)
}
