package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/moatfw/moat/conformance/images"
	"github.com/moatfw/moat/conformance/node"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// What a conformance/node cluster needs for the pass, beyond the e2e suite's: the tests' images in every node's
// containerd, the kubelets' clusterDNS at the kube-dns Service that DeployDNS creates, and the controllers the
// tests rely on (ReplicationControllers, Endpoints, EndpointSlice mirroring, ServiceCIDRs, pod garbage
// collection: every controller enabled by default). The API server is advertised on the management network
// (node.HostAddr) with its endpoint reconciler on, so the tests' pods reach it through the `kubernetes` Service.

// NodeConfig is cfg with what the pass needs of the cluster (ClusterDNS, Controllers) filled in.
func NodeConfig(cfg node.Config) node.Config {
	cfg.ClusterDNS = ClusterDNSIP
	cfg.Controllers = []string{"*"}
	return cfg
}

// BuildImages packs the tests' images into dir from the kube-bins cache's agnhost and coredns
// (images.BuildConformance); withDNS false leaves CoreDNS out, for a pass that deploys no DNS.
func BuildImages(ctx context.Context, dir string, withDNS bool, log io.Writer) ([]images.Image, error) {
	return images.BuildConformance(ctx, dir, images.ConformanceOptions{KubeBinDir: kubetest.BinDir(),
		WithoutCoreDNS: !withDNS}, log)
}

// ImportImages puts the images into every node's containerd, the nodes side by side.
func ImportImages(ctx context.Context, c *node.Cluster, imgs []images.Image) error {
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, img := range imgs {
				if err := n.Import(ctx, img.Archive); err != nil {
					errs[i] = fmt.Errorf("%s: %w", n.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// DeployDNS deploys CoreDNS as the cluster's DNS Service (CoreDNSManifest: the kube-dns Service at
// ClusterDNSIP, forwarding other names to upstreams; none: the nodes have none to give) and waits until both
// replicas are ready.
func DeployDNS(ctx context.Context, c *node.Cluster, upstreams ...string) error {
	manifest, err := CoreDNSManifest(CoreDNS{Upstreams: upstreams})
	if err != nil {
		return err
	}
	path := filepath.Join(c.Dir, "coredns.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		return err
	}
	if out, err := c.Kubectl(ctx, "apply", "-f", path); err != nil {
		return fmt.Errorf("kubectl apply -f %s: %v\n%s", path, err, out)
	}
	return WaitDNS(ctx, c)
}

// RestartDNS restarts CoreDNS's pods (a rollout) and waits for the new ones: pods that started before Moat are
// not Moat's until they restart, and the cluster DNS must be under the policy the pass tests.
func RestartDNS(ctx context.Context, c *node.Cluster) error {
	if out, err := c.Kubectl(ctx, "-n", "kube-system", "rollout", "restart", "deployment/coredns"); err != nil {
		return fmt.Errorf("restart CoreDNS: %v\n%s", err, out)
	}
	return WaitDNS(ctx, c)
}

// WaitDNS waits until CoreDNS's Deployment has rolled out.
func WaitDNS(ctx context.Context, c *node.Cluster) error {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	out, err := c.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout", "180s")
	if err != nil {
		pods, _ := c.Kubectl(ctx, "-n", "kube-system", "get", "pods", "-o", "wide")
		return fmt.Errorf("CoreDNS never became ready: %v\n%s\n%s", err, out, pods)
	}
	return nil
}
