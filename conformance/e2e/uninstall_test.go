package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Uninstalling Moat as docs/install.md says: running pods keep working and lose their filters (no stale
// enforcement), new pods start without Moat, and nothing of Moat is left on any node. It runs last (the file
// sorts last): every other test needs Moat.
func TestUninstall(t *testing.T) {
	namespace(t, "e2e-uninst", map[string]string{"moat.dev/zone": "e2e-uninst", "moat.dev/egress": "Deny"})
	p := agent(t, "e2e-uninst", "before")
	expect(t, p, "tcp", "203.0.113.1:80", false, applied)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := filepath.Join(suite.repo, "install/kubernetes")
	steps := [][]string{
		{"-n", "moat-system", "delete", "daemonset", "moat", "--wait=true"},
		{"apply", "-f", filepath.Join(dir, "uninstall.yaml")},
		{"-n", "moat-system", "rollout", "status", "daemonset/moat-uninstall", "--timeout", "120s"},
	}
	for _, s := range steps {
		if out, err := suite.cluster.Kubectl(ctx, s...); err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	expect(t, p, "tcp", "203.0.113.1:80", true, applied) // its filters went with Moat
	for _, n := range suite.nodes {
		conflist, _ := os.ReadFile(n.HostPath("/etc/cni/net.d/10-bridge.conflist"))
		chained := strings.Contains(string(conflist), `"moat"`)
		if !record(t, "moat in "+n.Name+"'s conflist", "no", map[bool]string{true: "yes", false: "no"}[chained], 0) {
			t.Errorf("%s's conflist still names moat:\n%s", n.Name, conflist)
		}
		for _, left := range []string{"/opt/cni/bin/moat", "/opt/cni/bin/moat-ipam", "/sys/fs/bpf/moat/ipcache", "/run/moat/endpoints"} {
			_, err := os.Stat(n.HostPath(left))
			if !record(t, n.Name+": "+left+" after uninstall", "gone", map[bool]string{true: "gone", false: "present"}[os.IsNotExist(err)], 0) {
				t.Errorf("%s: %s is still there", n.Name, left)
			}
		}
	}
	after := agent(t, "e2e-uninst", "after")
	expect(t, after, "tcp", "203.0.113.1:80", true, 0)
	if out, err := suite.cluster.Kubectl(ctx, "delete", "--ignore-not-found", "-f", filepath.Join(dir, "uninstall.yaml"),
		"-f", filepath.Join(dir, "firewallconfig.yaml"), "-f", filepath.Join(dir, "moat.yaml")); err != nil {
		t.Errorf("kubectl delete: %v\n%s", err, out)
	}
}
