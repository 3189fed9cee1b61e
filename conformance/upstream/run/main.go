// Command run is `make conformance`: Kubernetes' [sig-network] conformance tests on the e2e suite's two-node
// cluster (conformance/node), three times: without Moat, with Moat deployed from install/kubernetes (its default
// configuration), and with Moat and a restrictive policy (upstream.RestrictivePolicy). It writes the results,
// test by test, to docs/conformance.md, and keeps the runs' logs and reports in -reports.
//
//	run [-out docs/conformance.md] [-reports /var/tmp/moat-conformance] [-shards 3] [-passes none,default,restrictive]
//	    [-focus RE] [-source VERSION]
//
// It builds Moat and the images first; the e2e binary, agnhost and CoreDNS come from `make conformance-bins`.
// It runs as root from the repository's root, and like `make e2e` it needs the machine to itself (the cluster's
// namespaces and folders have fixed names). The cluster is torn down at the end, on Ctrl-C and on SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/moatfw/moat/conformance/images"
	"github.com/moatfw/moat/conformance/node"
	"github.com/moatfw/moat/conformance/upstream"
	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// source is the Moat version the run builds (-source), named in the document.
var source string

// passes in the order they run: each changes the cluster the next one runs on.
var allPasses = []string{"none", "default", "restrictive"}

func main() {
	out := flag.String("out", "docs/conformance.md", "the document to write")
	reports := flag.String("reports", "/var/tmp/moat-conformance", "the runs' logs and reports (emptied first)")
	shards := flag.Int("shards", 3, "e2e binaries to run at once in a pass (upstream.RunSharded)")
	passes := flag.String("passes", strings.Join(allPasses, ","), "the passes to run, of "+strings.Join(allPasses, ","))
	focus := flag.String("focus", upstream.Focus, "the tests to run")
	flag.StringVar(&source, "source", "", "the Moat version or commit the run builds, for the document")
	flag.Parse()
	var want []string
	for _, p := range strings.Split(*passes, ",") {
		if !slices.Contains(allPasses, p) {
			fmt.Fprintf(os.Stderr, "conformance: unknown pass %q (want %s)\n", p, strings.Join(allPasses, ", "))
			os.Exit(2)
		}
		want = append(want, p)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "conformance: run as root (it starts a cluster of network namespaces)")
		os.Exit(1)
	}
	if err := run(*out, *reports, *focus, *shards, want); err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("conformance: "+format+"\n", args...)
}

func run(out, reports, focus string, shards int, want []string) (err error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Hour)
	defer cancel()
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(repo, "install/kubernetes/moat.yaml")); err != nil {
		return fmt.Errorf("run it from the repository's root: %w", err)
	}
	e2e := filepath.Join(kubetest.BinDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		return fmt.Errorf("%w: run make conformance-bins", err)
	}
	if err := os.RemoveAll(reports); err != nil {
		return err
	}
	if err := os.MkdirAll(reports, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "moat-conformance-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	logf("building Moat, the reference CNI plugins and the images")
	bin := filepath.Join(work, "bin")
	if err := simnode.Build(bin, nil); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	imgs, err := images.Build(ctx, filepath.Join(work, "images"), bin, io.Discard)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	testImgs, err := upstream.BuildImages(ctx, filepath.Join(work, "conformance-images"), true, io.Discard)
	if err != nil {
		return fmt.Errorf("conformance images: %w", err)
	}

	c, err := node.Start(ctx, upstream.NodeConfig(node.Config{Nodes: 2, CNIBinDir: bin,
		PauseArchive: imgs.Pause.Archive, PauseName: imgs.Pause.Name, Log: os.Stdout}))
	if err != nil {
		return fmt.Errorf("start the nodes: %w", err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "conformance: %v: tearing the nodes down\n", s)
		cancel()
		if err := c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: teardown: %v\n", err)
		}
		os.Exit(130)
	}()
	defer func() {
		logf("tearing the nodes down")
		if serr := c.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", serr))
		}
	}()
	if err := upstream.ImportImages(ctx, c, append(testImgs, imgs.Moat)); err != nil {
		return err
	}
	logf("deploying CoreDNS as the cluster DNS (%s)", upstream.ClusterDNSIP)
	if err := upstream.DeployDNS(ctx, c); err != nil {
		return err
	}
	logf("the cluster is up after %s", time.Since(start).Round(time.Second))

	var done []upstream.Pass
	var counted []passCounters
	for _, p := range want {
		pass, cs, err := runPass(ctx, c, repo, e2e, filepath.Join(reports, p), focus, shards, p)
		if err != nil {
			return fmt.Errorf("pass %q: %w", p, err)
		}
		done = append(done, pass)
		if cs != nil {
			counted = append(counted, passCounters{pass.Title, *cs})
		}
		// the document is written after every pass, so a later pass's failure keeps what is known
		if err := writeDoc(out, done, counted); err != nil {
			return err
		}
		c := pass.Report.Counts()
		logf("pass %q: %d passed, %d failed, %d skipped, %d not run in %s; %s written", pass.Title, c[upstream.Passed],
			c[upstream.Failed], c[upstream.Skipped], c[upstream.NotRun], pass.Report.Elapsed.Round(time.Second), out)
	}
	logf("done after %s", time.Since(start).Round(time.Second))
	return nil
}

// runPass sets the cluster up for the pass and runs the tests. With Moat, it also returns what the datapath
// counted during the tests, and leaves each node's flow events in dir.
func runPass(ctx context.Context, c *node.Cluster, repo, e2e, dir, focus string, shards int, name string) (upstream.Pass, *counters, error) {
	pass := upstream.Pass{Title: titles[name], About: abouts[name]}
	switch name {
	case "default":
		if err := deployMoat(ctx, c, repo); err != nil {
			return pass, nil, err
		}
	case "restrictive":
		if !moatDeployed(ctx, c) {
			if err := deployMoat(ctx, c, repo); err != nil {
				return pass, nil, err
			}
		}
		if err := restrict(ctx, c); err != nil {
			return pass, nil, err
		}
	}
	var before counters
	withMoat := name != "none"
	if withMoat {
		var err error
		if before, err = readCounters(ctx, c); err != nil {
			return pass, nil, err
		}
	}
	logf("pass %q: running the tests in %d shards (logs in %s)", pass.Title, shards, dir)
	rep, err := upstream.RunSharded(ctx, upstream.Options{E2E: e2e, Kubeconfig: c.Kubeconfig, ReportDir: dir,
		Focus: focus, Timeout: 90 * time.Minute}, shards, os.Stdout)
	pass.Report = rep
	pass.Why = why[name]
	if err != nil || !withMoat {
		return pass, nil, err
	}
	after, err := readCounters(ctx, c)
	if err != nil {
		return pass, nil, err
	}
	if err := saveFlows(ctx, c, dir); err != nil {
		return pass, nil, err
	}
	cs := after.since(before)
	return pass, &cs, nil
}

var titles = map[string]string{
	"none":        "without Moat",
	"default":     "Moat, default configuration",
	"restrictive": "Moat, restrictive policy",
}

var abouts = map[string]string{
	"none": "the two nodes with the bridge network and portmap, kube-proxy (iptables), CoreDNS; nothing of Moat.",
	"default": "Moat deployed from install/kubernetes/moat.yaml and firewallconfig.yaml (world traffic allowed, " +
		"the metadata API blocked), CoreDNS restarted under it.",
	"restrictive": "the default pass's cluster with conformance/upstream/restrictive.yaml applied: world ingress " +
		"and egress denied, the metadata API blocked, kube-system a zone (moat.dev/zone: system) that serves DNS " +
		"to every namespace and takes nothing else from pods, the tests' namespaces a zone of their own (the " +
		"e2e framework's e2e-framework label) reached from outside it only by nodes and the API server, every " +
		"other namespace closed to pods of other zones.",
}

func moatDeployed(ctx context.Context, c *node.Cluster) bool {
	_, err := c.Kubectl(ctx, "-n", "moat-system", "get", "daemonset", "moat")
	return err == nil
}

// deployMoat applies Moat's manifests as a user would, waits for its DaemonSet, and restarts CoreDNS so that
// the cluster DNS's pods are Moat's (pods that started before Moat are adopted when they restart).
func deployMoat(ctx context.Context, c *node.Cluster, repo string) error {
	logf("deploying Moat with install/kubernetes/moat.yaml and firewallconfig.yaml")
	for _, f := range []string{"moat.yaml", "firewallconfig.yaml"} {
		path := filepath.Join(repo, "install/kubernetes", f)
		if out, err := c.Kubectl(ctx, "apply", "-f", path); err != nil {
			return fmt.Errorf("kubectl apply -f %s: %v\n%s", path, err, out)
		}
	}
	if out, err := c.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "180s"); err != nil {
		pods, _ := c.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-o", "wide")
		return fmt.Errorf("the moat DaemonSet never became ready: %v\n%s\n%s", err, out, pods)
	}
	return upstream.RestartDNS(ctx, c)
}

// restrict applies the restrictive policy and waits until it is accepted and every node's enforcer has it.
func restrict(ctx context.Context, c *node.Cluster) error {
	logf("applying the restrictive policy (conformance/upstream/restrictive.yaml)")
	if out, err := c.Kubectl(ctx, "label", "--overwrite", "namespace", "kube-system",
		"moat.dev/zone="+upstream.SystemZone); err != nil {
		return fmt.Errorf("label kube-system: %v\n%s", err, out)
	}
	doc, err := upstream.RestrictivePolicy(node.HostAddr)
	if err != nil {
		return err
	}
	path := filepath.Join(c.Dir, "restrictive.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		return err
	}
	if out, err := c.Kubectl(ctx, "apply", "-f", path); err != nil {
		return fmt.Errorf("kubectl apply -f %s: %v\n%s", path, err, out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := c.Kubectl(ctx, "get", "firewallpolicies", "-o",
			`jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Accepted")].status}{"\n"}{end}`)
		if err == nil && !strings.Contains(string(out), "=\n") && !strings.Contains(string(out), "=False") &&
			strings.Count(string(out), "=True") >= 4 && enforcersHave(ctx, c, "tenant-zone") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the restrictive policies were not all accepted: %v\n%s", err, out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// enforcersHave says whether every Moat pod's enforcer lists the policy (moatctl policies).
func enforcersHave(ctx context.Context, c *node.Cluster, policy string) bool {
	out, err := c.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-l",
		"app.kubernetes.io/name=moat,app.kubernetes.io/component=enforcer", "-o", "jsonpath={.items[*].metadata.name}")
	pods := strings.Fields(string(out))
	if err != nil || len(pods) != len(c.Nodes) {
		return false
	}
	for _, pod := range pods {
		out, err := c.Kubectl(ctx, "-n", "moat-system", "exec", pod, "-c", "enforcer", "--", "moatctl", "policies")
		if err != nil || !strings.Contains(string(out), policy) {
			return false
		}
	}
	return true
}
