package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/moatfw/moat/internal/testutil/kubetest"
	"github.com/moatfw/moat/internal/testutil/procs"
)

// run starts a component inside the node's network and mount namespaces, logging to <node dir>/logs/<name>.log.
func (n *Node) run(name, bin string, args ...string) (*procs.Proc, error) {
	logDir := filepath.Join(n.dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	env := append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	argv := n.nsenter(bin, args...)
	p, err := procs.Start(name, argv[0], argv[1:], filepath.Join(logDir, name+".log"), "", env, nil)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// waitUntil polls cond until it holds, the process ends, ctx ends, or d passes.
func waitUntil(ctx context.Context, p *procs.Proc, d time.Duration, what string, cond func() bool) error {
	if err := p.WaitUntil(ctx.Done(), d, 200*time.Millisecond, what, cond); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return nil
}

// IPAMDir is where the bridge network's host-local IPAM keeps the node's leases (one file an address, and
// last_reserved_ip.N), at the same path on the host and in the node.
func (n *Node) IPAMDir() string { return filepath.Join(runDir, n.Name, "cni-ipam", "e2e-bridge") }

// bridgeConflist is the node's primary network: what a cluster's CNI would have written.
func (n *Node) bridgeConflist() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "e2e-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q}], [{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, filepath.Dir(n.IPAMDir()), n.PodCIDR, n.PodCIDRv6)
}

// installCNI puts the reference plugins into the node's /opt/cni/bin and the bridge network into its
// /etc/cni/net.d.
func (n *Node) installCNI() error {
	for _, name := range []string{"bridge", "host-local", "loopback", "portmap"} {
		data, err := os.ReadFile(filepath.Join(n.cluster.CNIBinDir, name))
		if err != nil {
			return fmt.Errorf("reference CNI plugin: %w", err)
		}
		if err := os.WriteFile(filepath.Join(n.backing("/opt/cni/bin"), name), data, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(n.backing("/etc/cni/net.d"), "10-bridge.conflist"), []byte(n.bridgeConflist()), 0o644)
}

func (n *Node) startContainerd(ctx context.Context) error {
	root := filepath.Join(n.dir, "containerd")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
`, root, filepath.Dir(n.sock), n.sock, n.pauseRef())
	path := filepath.Join(n.dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	n.logf("containerd")
	p, err := n.run("containerd", "containerd", "--config", path)
	if err != nil {
		return err
	}
	return waitUntil(ctx, p, 30*time.Second, "socket", func() bool {
		out, err := n.ctr(ctx, "version")
		return err == nil && strings.Contains(string(out), "Server")
	})
}

// pauseRef is the sandbox image's name as containerd knows it.
func (n *Node) pauseRef() string {
	if n.cluster.PauseName == "" {
		return "moat.test/pause:1"
	}
	return n.cluster.PauseName
}

func (n *Node) ctr(ctx context.Context, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, "ctr", append([]string{"--address", n.sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
}

// Import puts an OCI image archive into the node's containerd, where the kubelet finds it.
func (n *Node) Import(ctx context.Context, archive string) error {
	out, err := n.ctr(ctx, "images", "import", "--no-unpack=false", archive)
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", archive, err, out)
	}
	n.logf("imported %s", strings.TrimSpace(string(out)))
	return nil
}

// removeContainers ends every container and sandbox of the node's containerd (the kubelet is stopped by then).
func (n *Node) removeContainers() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := n.ctr(ctx, "tasks", "ls", "-q")
	if err != nil {
		return nil // containerd is not answering: killShims ends what is left
	}
	for _, id := range strings.Fields(string(out)) {
		_, _ = n.ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
	}
	for _, id := range strings.Fields(string(out)) {
		for i := 0; i < 20; i++ {
			if _, err := n.ctr(ctx, "tasks", "delete", id); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, err := n.ctr(ctx, "containers", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(string(out)) {
			_, _ = n.ctr(ctx, "containers", "delete", id)
		}
	}
	return nil
}

func (n *Node) startKubelet(ctx context.Context) error {
	root := filepath.Join(n.dir, "kubelet")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
oomScoreAdj: 0
failSwapOn: false
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
clusterDomain: cluster.local
resolvConf: ""
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "0%%", "nodefs.available": "0%%", "imagefs.available": "0%%"}
protectKernelDefaults: false
podLogsDir: %s
syncFrequency: 10s
nodeStatusUpdateFrequency: 4s
maxPods: 110
`, n.Name, n.IP, n.sock, filepath.Join(n.dir, "pod-logs"))
	if dns := n.cluster.ClusterDNS; dns != "" {
		// pods of dnsPolicy ClusterFirst get it as their nameserver, with the cluster domain's search list
		cfg += fmt.Sprintf("clusterDNS: [%q]\n", dns)
	}
	path := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	n.logf("kubelet")
	p, err := n.run("kubelet", filepath.Join(kubetest.BinDir(), "kubelet"), "--config", path, "--kubeconfig", n.cluster.Kubeconfig,
		"--root-dir", root, "--node-ip", n.IP.String(), "--hostname-override", n.Name, "--v", "1")
	if err != nil {
		return err
	}
	client := n.cluster.Client()
	var patchErr error
	err = waitUntil(ctx, p, 120*time.Second, "Ready node with its pod ranges", func() bool {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		node, err := client.CoreV1().Nodes().Get(c, n.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		if !n.hasPodCIDRs(node) {
			// registered: give it its ranges, as a cluster's IPAM controller would, before anything reads them
			patchErr = n.setPodCIDRs(c, node)
			return false
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
	if err != nil && patchErr != nil {
		return fmt.Errorf("%w (setting its pod ranges: %v)", err, patchErr)
	}
	return err
}

// podCIDRs are the node's pod ranges as its Node object carries them: IPv4 first (spec.podCIDR is the first).
func (n *Node) podCIDRs() []string { return []string{n.PodCIDR.String(), n.PodCIDRv6.String()} }

// hasPodCIDRs says whether the Node object carries the node's pod ranges.
func (n *Node) hasPodCIDRs(node *corev1.Node) bool {
	return node.Spec.PodCIDR == n.PodCIDR.String() && slices.Equal(node.Spec.PodCIDRs, n.podCIDRs())
}

// setPodCIDRs sets the Node's spec.podCIDR and spec.podCIDRs to its bridge network's ranges. The API server
// takes them once: a Node that has other ranges already is an error.
func (n *Node) setPodCIDRs(ctx context.Context, node *corev1.Node) error {
	if len(node.Spec.PodCIDRs) > 0 {
		return fmt.Errorf("node %s has pod ranges %v, not %v", n.Name, node.Spec.PodCIDRs, n.podCIDRs())
	}
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": n.PodCIDR.String(), "podCIDRs": n.podCIDRs()}})
	if err != nil {
		return err
	}
	if _, err := n.cluster.Client().CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, body,
		metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch node %s: %w", n.Name, err)
	}
	n.logf("pod ranges %s", strings.Join(n.podCIDRs(), ", "))
	return nil
}

func (n *Node) startKubeProxy() error {
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
mode: iptables
hostnameOverride: %s
bindAddress: %s
clusterCIDR: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
conntrack: {maxPerCore: 0, min: 0}
`, n.cluster.Kubeconfig, n.Name, n.IP, ClusterCIDR)
	path := filepath.Join(n.dir, "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	n.logf("kube-proxy")
	_, err := n.run("kube-proxy", filepath.Join(kubetest.BinDir(), "kube-proxy"), "--config", path)
	return err
}

func (n *Node) logf(format string, args ...any) {
	n.cluster.logf(n.Name+": "+format, args...)
}
