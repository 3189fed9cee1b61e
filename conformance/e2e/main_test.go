// Package e2e is Moat's end-to-end suite on a real cluster of two nodes (conformance/node; docs/e2e.md): each
// node's kubelet and containerd create the pods, Moat is deployed from install/kubernetes/moat.yaml as a user
// would, and the pods' traffic to a stand-in Internet, the metadata API and each other, on one node and across
// nodes, must follow FirewallConfig, FirewallPolicy and the namespace labels.
//
// It runs with MOAT_E2E=1 as root (`make e2e`); otherwise it skips. It prints a table of every case with the
// expected and the actual result and its runtime; a failing case shows the flow log and the enforcer's log.
package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/client-go/kubernetes"

	"github.com/moatfw/moat/conformance/images"
	"github.com/moatfw/moat/conformance/node"
	"github.com/moatfw/moat/conformance/upstream"
	"github.com/moatfw/moat/internal/ociimage/moatimage"
	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

// suite is what every test shares.
var suite struct {
	cluster  *node.Cluster
	node     *node.Node   // node A: where a case's pods run unless it says otherwise
	nodes    []*node.Node // A, B
	client   kubernetes.Interface
	internet ns.NetNS
	images   images.Images
	next     images.Image // Moat's image under another tag: the DaemonSet's roll
	repo     string       // the repository's root (the manifests)
	dns      *internetDNS // the Internet's authoritative DNS server, CoreDNS's upstream
	mu       sync.Mutex
	results  []result
}

// result is one case of the table.
type result struct {
	test, name, want, got string
	ok                    bool
	took                  time.Duration
}

func record(t *testing.T, name, want, got string, took time.Duration) bool {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	ok := want == got
	suite.results = append(suite.results, result{test: t.Name(), name: name, want: want, got: got, ok: ok, took: took})
	return ok
}

func TestMain(m *testing.M) {
	if os.Getenv("MOAT_E2E") != "1" || os.Geteuid() != 0 {
		fmt.Println("e2e: skipped (run `make e2e` as root: it sets MOAT_E2E=1)")
		os.Exit(0)
	}
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		return 1
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		return fail("%v", err)
	}
	suite.repo = repo
	work, err := os.MkdirTemp("", "moat-e2e-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(work)

	fmt.Println("e2e: building Moat, the reference CNI plugins and the images")
	bin := filepath.Join(work, "bin")
	if err := simnode.Build(bin, nil); err != nil {
		return fail("build: %v", err)
	}
	imgs, err := images.Build(ctx, filepath.Join(work, "images"), bin, os.Stdout)
	if err != nil {
		return fail("images: %v", err)
	}
	suite.images = imgs
	const nextRef = "moatfw/moat:v0.1.1-e2e"
	res, err := moatimage.Build(ctx, moatimage.Options{BinDir: bin, Ref: nextRef}, filepath.Join(work, "images", "moat-next.tar"), io.Discard)
	if err != nil {
		return fail("image %s: %v", nextRef, err)
	}
	suite.next = images.Image{Ref: nextRef, Name: res.Name, Archive: res.Archive}
	// the images of Kubernetes' conformance tests that TestUpstreamConformance runs, and CoreDNS's: the cluster
	// DNS of the DNS tests
	testImgs, err := upstream.BuildImages(ctx, filepath.Join(work, "conformance-images"), true, io.Discard)
	if err != nil {
		return fail("the conformance tests' images (make e2e-bins builds what they need): %v", err)
	}

	// every controller a cluster runs by default, as the conformance tests expect (ReplicationControllers,
	// Endpoints, ServiceCIDRs, ...)
	c, err := node.Start(ctx, node.Config{Nodes: 2, CNIBinDir: bin, PauseArchive: imgs.Pause.Archive,
		PauseName: imgs.Pause.Name, Log: os.Stdout, Controllers: []string{"*"}, ClusterDNS: upstream.ClusterDNSIP})
	if err != nil {
		return fail("start the nodes: %v", err)
	}
	suite.cluster, suite.nodes, suite.node = c, c.Nodes, c.Nodes[0]
	suite.client = c.Client()
	// Ctrl-C or a CI timeout's SIGTERM: the host is restored before the process ends
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "e2e: %v: tearing the nodes down\n", s)
		if err := c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		}
		os.Exit(130)
	}()
	defer func() {
		fmt.Println("e2e: tearing the nodes down")
		if err := c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
			code = 1
		}
	}()
	if err := importImages(ctx, imgs.Agent.Archive, imgs.Moat.Archive, suite.next.Archive); err != nil {
		return fail("%v", err)
	}
	if err := upstream.ImportImages(ctx, c, testImgs); err != nil {
		return fail("%v", err)
	}
	if suite.internet, err = ns.GetNS("/run/netns/" + node.InternetNS); err != nil {
		return fail("%v", err)
	}
	defer suite.internet.Close()
	stopServers, err := serveInternet(suite.internet)
	if err != nil {
		return fail("the Internet's servers: %v", err)
	}
	defer stopServers()

	fmt.Println("e2e: deploying Moat with install/kubernetes/moat.yaml")
	if err := deployMoat(ctx); err != nil {
		dumpMoat(ctx)
		return fail("deploy Moat: %v", err)
	}
	// the cluster DNS, under Moat from its start: CoreDNS forwarding names outside the cluster to the
	// Internet's authoritative server
	if suite.dns, err = serveInternetDNS(suite.internet); err != nil {
		return fail("the Internet's DNS server: %v", err)
	}
	defer suite.dns.stop()
	if err := upstream.DeployDNS(ctx, c, node.InternetDNS.String()); err != nil {
		return fail("deploy CoreDNS: %v", err)
	}
	fmt.Printf("e2e: %d nodes are up with Moat after %s\n", len(suite.nodes), time.Since(start).Round(time.Second))

	code = m.Run()
	printResults(time.Since(start))
	return code
}

// importImages puts the archives into every node's containerd, the nodes side by side.
func importImages(ctx context.Context, archives ...string) error {
	errs := make([]error, len(suite.nodes))
	var wg sync.WaitGroup
	for i, n := range suite.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, a := range archives {
				if err := n.Import(ctx, a); err != nil {
					errs[i] = fmt.Errorf("%s: %w", n.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// deployMoat applies the manifest as a user would and waits until the DaemonSet's pods (one a node) are ready.
func deployMoat(ctx context.Context) error {
	manifest := filepath.Join(suite.repo, "install/kubernetes/moat.yaml")
	if out, err := suite.cluster.Kubectl(ctx, "apply", "-f", manifest); err != nil {
		return fmt.Errorf("kubectl apply -f %s: %v\n%s", manifest, err, out)
	}
	if cfg := filepath.Join(suite.repo, "install/kubernetes/firewallconfig.yaml"); exists(cfg) {
		if out, err := suite.cluster.Kubectl(ctx, "apply", "-f", cfg); err != nil {
			return fmt.Errorf("kubectl apply -f %s: %v\n%s", cfg, err, out)
		}
	}
	out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "180s")
	if err != nil {
		return fmt.Errorf("the moat DaemonSet never became ready: %v\n%s", err, out)
	}
	out, _ = suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-o", "wide") // shown as it is
	fmt.Printf("e2e: Moat's pods:\n%s", out)
	return nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// dumpMoat prints what explains a failure: the Moat pods' state, and on every node the enforcer's log and the
// recent flows.
func dumpMoat(ctx context.Context) {
	cmds := [][]string{
		{"-n", "moat-system", "get", "pods", "-o", "wide"},
		{"-n", "moat-system", "describe", "pods"},
	}
	for _, n := range suite.nodes {
		pod, err := moatPodOn(ctx, n.Name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "--- %s: %v\n", n.Name, err)
			continue
		}
		cmds = append(cmds, []string{"-n", "moat-system", "logs", pod, "-c", "install", "--tail", "40"},
			[]string{"-n", "moat-system", "logs", pod, "-c", "enforcer", "--tail", "60"},
			[]string{"-n", "moat-system", "exec", pod, "-c", "enforcer", "--", "moatctl", "flows", "--limit", "30"})
	}
	for _, args := range cmds {
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		out, err := suite.cluster.Kubectl(c, args...)
		cancel()
		fmt.Fprintf(os.Stderr, "--- kubectl %s (%v)\n%s\n", strings.Join(args, " "), err, out)
	}
}

// moatPodOn is the name of the DaemonSet's pod on a node.
func moatPodOn(ctx context.Context, nodeName string) (string, error) {
	out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-l",
		"app.kubernetes.io/name=moat,app.kubernetes.io/component=enforcer", "--field-selector", "spec.nodeName="+nodeName,
		"-o", "jsonpath={.items[*].metadata.name}")
	if err != nil || len(strings.Fields(string(out))) == 0 {
		return "", fmt.Errorf("no Moat pod on %s: %v %s", nodeName, err, out)
	}
	return strings.Fields(string(out))[0], nil
}

// moatctlOn runs moatctl with args in the enforcer container of the Moat pod on a node.
func moatctlOn(ctx context.Context, nodeName string, args ...string) ([]byte, error) {
	pod, err := moatPodOn(ctx, nodeName)
	if err != nil {
		return nil, err
	}
	return suite.cluster.Kubectl(ctx, append([]string{"-n", "moat-system", "exec", pod, "-c", "enforcer", "--", "moatctl"}, args...)...)
}

func printResults(total time.Duration) {
	suite.mu.Lock()
	defer suite.mu.Unlock()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nTEST\tCASE\tEXPECTED\tACTUAL\tTOOK\t")
	bad := 0
	for _, r := range suite.results {
		mark := ""
		if !r.ok {
			mark = "<-- FAIL"
			bad++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.test, r.name, r.want, r.got, r.took.Round(time.Millisecond), mark)
	}
	_ = tw.Flush()
	fmt.Printf("e2e: %d cases, %d as expected, %d not; %s in all\n", len(suite.results), len(suite.results)-bad, bad,
		total.Round(time.Second))
}

// serveInternet runs TCP echo servers on every World address and port, and UDP on 53, in the Internet's
// namespace. Each answers a line with "<server address> <client address> <the line>", so a test sees the source
// address that reached the Internet.
func serveInternet(inet ns.NetNS) (stop func(), err error) {
	var closers []func() error
	stop = func() {
		for _, c := range closers {
			_ = c()
		}
	}
	err = inet.Do(func(ns.NetNS) error {
		for _, a := range append(append([]netip.Addr{}, node.World...), node.MetadataV4, node.MetadataV6) {
			for _, port := range node.WorldPorts {
				ln, err := net.Listen("tcp", netip.AddrPortFrom(a, port).String())
				if err != nil {
					return err
				}
				closers = append(closers, ln.Close)
				go testutil.Serve(ln, echoTCP)
			}
			pc, err := net.ListenPacket("udp", netip.AddrPortFrom(a, 53).String())
			if err != nil {
				return err
			}
			closers = append(closers, pc.Close)
			go echoUDP(pc)
		}
		return nil
	})
	if err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// echoTCP answers every line of a connection with "<server address> <client address> <the line>".
func echoTCP(c net.Conn) {
	rd := bufio.NewReader(c)
	for {
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		line, err := rd.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "%s %s %s", c.LocalAddr(), c.RemoteAddr(), line); err != nil {
			return
		}
	}
}

func echoUDP(pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s %s", pc.LocalAddr(), from, buf[:n])), from)
	}
}
