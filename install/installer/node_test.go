package installer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/conflist"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

const shopPolicy = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {moat.dev/zone: shop, moat.dev/egress: Deny}}
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: shop}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: shop}}
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.0/24}]
    ports: [{protocol: TCP, port: 443}]
`

// moat-install, the binary, on a simulated node: it chains moat into a network the "cluster's CNI" wrote, and
// --uninstall takes Moat off while pods run: no stale enforcement, running pods keep working, new pods start
// without Moat, and it refuses while the enforcer lives.
func TestMoatInstallOnANode(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	built := t.TempDir()
	if err := simnode.Build(built, nil); err != nil {
		t.Fatal(err)
	}
	// the node's CNI bin folder holds the reference plugins; moat-install brings moat and moat-ipam
	cniBin := t.TempDir()
	for _, name := range []string{"bridge", "host-local", "loopback", "portmap", "moat-enforcer"} {
		if _, err := copyAtomic(filepath.Join(built, name), filepath.Join(cniBin, name)); err != nil {
			t.Fatal(err)
		}
	}
	node, err := simnode.New(t.TempDir(), cniBin, simnode.Options{Unchained: true, Ports: []uint16{80, 443}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("enforcer log:\n%s", node.EnforcerLog())
		}
		if err := node.Close(); err != nil {
			t.Errorf("close the node: %v", err)
		}
	}()
	primary := filepath.Join(node.ConfDir, "10-simnode.conflist")
	original, err := os.ReadFile(primary)
	if err != nil {
		t.Fatal(err)
	}
	set := node.ChainSettings("closed")
	install := func(args ...string) (string, error) {
		base := []string{"--cni-bin-dir", cniBin, "--cni-conf-dir", node.ConfDir, "--source-dir", built,
			"--pin-root", node.PinRoot, "--endpoint-dir", node.EndpointDir(), "--socket", node.Socket,
			"--ipam-shim", "--fail-policy", "closed", "--plugin-log-file", set.LogFile}
		out, err := exec.CommandContext(ctx, filepath.Join(built, "moat-install"), append(base, args...)...).CombinedOutput()
		return string(out), err
	}

	out, err := install()
	if err != nil {
		t.Fatalf("moat-install: %v\n%s", err, out)
	}
	chained, _ := os.ReadFile(primary)
	if !conflist.Chained(chained) || !strings.Contains(string(chained), `"moat-ipam"`) {
		t.Fatalf("moat-install did not chain moat:\n%s\n%s", chained, out)
	}
	// what moat-install wrote is what the enforcer's repair loop wants: the two never rewrite each other
	if want, err := conflist.Chain(original, set.Options()); err != nil || string(want) != string(chained) {
		t.Errorf("moat-install and the repair loop disagree:\n%s\n%s", chained, want)
	}
	if err := node.WritePolicy("shop.yaml", shopPolicy); err != nil {
		t.Fatal(err)
	}
	if err := node.StartEnforcer(ctx, "--cni-conf-dir", node.ConfDir, "--cni-ipam-shim", "--cni-fail-policy", "closed"); err != nil {
		t.Fatal(err)
	}
	before, err := node.AddPod(ctx, "shop", "before")
	if err != nil {
		t.Fatal(err)
	}
	web := simnode.WorldAddr(0).String()
	if err := before.Connect(web+":443", time.Second); err != nil {
		t.Errorf("allowed 443 before uninstall: %v", err)
	}
	if err := before.Connect(web+":80", 300*time.Millisecond); err == nil {
		t.Errorf("port 80 open under the policy")
	}
	// the default mode starts the pod in clsact; the enforcer's mover takes it to tcx soon after
	var recs []*endpoint.Record
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		recs, err = endpoint.Store{Dir: node.EndpointDir()}.List("")
		if err != nil || len(recs) != 1 {
			t.Fatalf("records: %v %v", recs, err)
		}
		if recs[0].AttachMode == bpf.ModeTCX || time.Now().After(deadline) {
			break
		}
	}
	veth := recs[0].HostIfindex
	if n := programsOn(t, node.Host, veth); n != 2 {
		t.Fatalf("%d tcx programs on the pod's veth, want 2", n)
	}

	// refused while the enforcer runs: it would chain moat back
	out, err = install("--uninstall")
	if err == nil || !strings.Contains(out, "still running") {
		t.Errorf("uninstall with a running enforcer: %v\n%s", err, out)
	}
	if now, _ := os.ReadFile(primary); string(now) != string(chained) {
		t.Errorf("a refused uninstall changed the network")
	}

	if err := node.StopEnforcer(); err != nil {
		t.Fatal(err)
	}
	out, err = install("--uninstall")
	if err != nil {
		t.Fatalf("moat-install --uninstall: %v\n%s", err, out)
	}
	t.Logf("uninstall:\n%s", out)
	now, _ := os.ReadFile(primary)
	if conflist.Mentions(now) || !jsonEqual(t, now, original) {
		t.Errorf("the network after uninstall:\n%s\nwant as the CNI wrote it:\n%s", now, original)
	}
	for _, name := range Binaries {
		if _, err := os.Stat(filepath.Join(cniBin, name)); !os.IsNotExist(err) {
			t.Errorf("%s is still in the bin folder (%v)", name, err)
		}
	}
	left, _ := os.ReadDir(node.PinRoot)
	for _, e := range left {
		if e.Name() != "maps.debug" && e.Name() != "progs.debug" { // the kernel's, at the root of a bpf mount
			t.Errorf("pinned state left: %s", e.Name())
		}
	}
	if _, err := os.Stat(node.EndpointDir()); !os.IsNotExist(err) {
		t.Errorf("endpoint records left (%v)", err)
	}
	if n := programsOn(t, node.Host, veth); n != 0 {
		t.Errorf("%d programs still on the running pod's veth", n)
	}
	// the running pod keeps its network, and nothing enforces a policy any more
	if err := before.Connect(web+":443", time.Second); err != nil {
		t.Errorf("the running pod lost its network: %v", err)
	}
	if err := before.Connect(web+":80", time.Second); err != nil {
		t.Errorf("port 80 still denied after uninstall (stale enforcement): %v", err)
	}
	// new pods start without Moat; old pods are deleted through the new chain
	after, err := node.AddPod(ctx, "shop", "after")
	if err != nil {
		t.Fatalf("a pod created after uninstall: %v", err)
	}
	if err := after.Connect(web+":80", time.Second); err != nil {
		t.Errorf("a new pod cannot reach the world: %v", err)
	}
	if _, err := os.Stat(node.EndpointDir()); !os.IsNotExist(err) {
		t.Errorf("a new pod left a Moat record (%v)", err)
	}
	if err := before.Delete(ctx); err != nil {
		t.Errorf("deleting a pod created under Moat: %v", err)
	}
	// and again: nothing left to do
	if out, err := install("--uninstall"); err != nil || !strings.Contains(out, "pods=0") {
		t.Errorf("second uninstall: %v\n%s", err, out)
	}
}

// programsOn counts the tcx programs attached to an interface of a namespace.
func programsOn(t *testing.T, netns ns.NetNS, ifindex int) int {
	t.Helper()
	n := 0
	err := netns.Do(func(ns.NetNS) error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return fmt.Errorf("query %v: %w", at, err)
			}
			n += len(res.Programs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
