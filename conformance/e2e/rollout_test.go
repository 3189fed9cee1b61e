package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/conformance/node"
)

// The release the upgrade starts from: main's last commit whose datapath has layout 4 (the next one, 2b47ca6,
// made layout 5, which migrates the maps of layout 4). Its image gets a tag of its own.
const (
	layout4Commit = "453f30b5322fab6deefad781f7f012363328228d"
	layout4Ref    = "moatfw/moat:v0.0.4-layout4"
)

// Upgrading across datapath layouts under traffic, as a user would: the release of layout 4 installed by its own
// manifest, then `kubectl apply` of this tree's manifest rolls every node to layout 5 (its enforcer migrates the
// maps and swaps every pod's programs in place), then `kubectl rollout undo` goes back to layout 4, whose enforcer
// refuses the newer maps and leaves them enforcing, and a second undo rolls forward again. On both nodes an
// allowed stream and allowed datagrams run, and denied connections are tried, all along: none of the allowed is
// lost, none of the denied gets through. It reinstalls Moat: its file sorts before TestUninstall's, last.
func TestUpgradeAcrossLayouts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	older := buildRelease(t, ctx, layout4Commit, layout4Ref)
	dir := filepath.Join(suite.repo, "install/kubernetes")
	current := []string{filepath.Join(dir, "moat.yaml"), filepath.Join(dir, "firewallconfig.yaml")}

	// a release never installs over a newer layout: the working tree's Moat goes first, as docs/install.md says
	start := time.Now()
	uninstallMoat(t, ctx)
	kubectl(t, ctx, "apply", "-f", older[0], "-f", older[1])
	rollout(t, ctx)
	t.Logf("the layout 4 release runs on every node %s after the uninstall began", time.Since(start).Round(time.Second))

	const zone = "e2e-upgrade"
	namespace(t, zone, map[string]string{"moat.dev/zone": zone, "moat.dev/egress": "Deny"})
	mustApply(t, allowStreams(zone))
	var clients []pod
	for _, n := range suite.nodes {
		p := agent(t, zone, "client-"+n.Name, onNode(n))
		expect(t, p, "tcp", "198.51.100.1:443", true, applied)
		expect(t, p, "tcp", "198.51.100.1:80", false, 0)
		clients = append(clients, p)
	}
	run := func() []*traffic {
		var trs []*traffic
		for _, p := range clients {
			netns := podNetns(t, p)
			tr := startTraffic(t, netns, "198.51.100.1:443", "198.51.100.1:80")
			tr.withDatagrams(t, netns, "198.51.100.1:53")
			trs = append(trs, tr)
		}
		time.Sleep(time.Second)
		return trs
	}
	finish := func(trs []*traffic, what string) {
		time.Sleep(time.Second)
		for i, tr := range trs {
			tr.finish(t, fmt.Sprintf("%s (%s)", what, clients[i].node))
		}
	}

	// up: layout 4 -> 5
	trs := run()
	start = time.Now()
	kubectl(t, ctx, "apply", "-f", current[0], "-f", current[1])
	rollout(t, ctx)
	t.Logf("rolled to layout 5 in %s", time.Since(start).Round(time.Second))
	for _, n := range suite.nodes {
		logs := moatLogs(t, ctx, n, false)
		migrated := "no"
		if strings.Contains(logs, "datapath migration committed") {
			migrated = "committed"
		}
		if !record(t, n.Name+": the layout 5 enforcer migrates the layout 4 maps", "committed", migrated, 0) {
			t.Errorf("%s: no committed migration in the enforcer's log:\n%s", n.Name, tail(logs, 30))
		}
		_, err := os.Stat(n.HostPath("/sys/fs/bpf/moat/next"))
		if !record(t, n.Name+": the migration's stage after the commit", "gone", map[bool]string{true: "gone", false: "present"}[os.IsNotExist(err)], 0) {
			t.Errorf("%s: the migration's stage %s is still there", n.Name, n.HostPath("/sys/fs/bpf/moat/next"))
		}
	}
	finish(trs, "layout 4 -> 5")
	for _, n := range suite.nodes {
		p := agent(t, zone, "after-up-"+n.Name, onNode(n))
		expect(t, p, "tcp", "198.51.100.1:443", true, 0)
		expect(t, p, "tcp", "198.51.100.1:80", false, 0)
	}

	// back: layout 5 -> 4 is refused by the older enforcer, and the newer maps keep enforcing
	trs = run()
	kubectl(t, ctx, "-n", "moat-system", "rollout", "undo", "daemonset/moat")
	var back *node.Node
	var refusal string
	if !eventually(3*time.Minute, func() bool {
		for _, n := range suite.nodes {
			if pod, err := moatPodOn(ctx, n.Name); err == nil && moatImage(ctx, pod) == layout4Ref {
				refusal = moatLogs(t, ctx, n, true) + moatLogs(t, ctx, n, false)
				if strings.Contains(refusal, "use layout 5, this build uses 4") {
					back = n
					return true
				}
			}
		}
		return false
	}) {
		out, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-o", "wide")
		record(t, "the layout 4 enforcer, rolled back to, refuses the layout 5 maps", "refused", "not refused", 0)
		t.Fatalf("no node's layout 4 enforcer refused the layout 5 maps:\n%s\n%s", out, tail(refusal, 30))
	}
	record(t, back.Name+": the layout 4 enforcer, rolled back to, refuses the layout 5 maps", "refused", "refused", 0)
	t.Logf("%s: the older enforcer says: %s", back.Name, lineWith(refusal, "use layout 5"))
	for _, n := range suite.nodes {
		if n == back {
			continue
		}
		pod, _ := moatPodOn(ctx, n.Name)
		if !record(t, n.Name+": the node not yet rolled back keeps the layout 5 release", suite.images.Moat.Ref, moatImage(ctx, pod), 0) {
			t.Errorf("the DaemonSet rolled %s back although %s's older enforcer never became ready", n.Name, back.Name)
		}
	}
	// a pod created meanwhile on that node is not started: the older plugin refuses the newer maps too
	createAgent(t, zone, "during-back", onNode(back))
	var why string
	if !eventually(2*time.Minute, func() bool { why = sandboxFailure(ctx, zone, "during-back"); return why != "" }) {
		t.Errorf("a pod created on %s after the rollback never had its sandbox refused", back.Name)
	}
	started := "not started (fail closed)"
	if p, err := suite.client.CoreV1().Pods(zone).Get(ctx, "during-back", metav1.GetOptions{}); err == nil && p.Status.Phase == corev1.PodRunning {
		started = "running"
	}
	if !record(t, back.Name+": a pod created after the rollback", "not started (fail closed)", started, 0) {
		t.Errorf("a pod started on %s while its enforcer refused the maps", back.Name)
	}
	t.Logf("its sandbox: %s", why)
	// the stream, datagrams and probes keep running on the newer maps a while
	time.Sleep(5 * time.Second)

	// and forward again: the second undo takes the layout 5 template back
	kubectl(t, ctx, "-n", "moat-system", "rollout", "undo", "daemonset/moat")
	rollout(t, ctx)
	finish(trs, "layout 5 -> 4 refused, rolled forward again")
	p := running(t, zone, "during-back")
	expect(t, p, "tcp", "198.51.100.1:443", true, 0)
	expect(t, p, "tcp", "198.51.100.1:80", false, 0)
}

// allowStreams opens 198.51.100.0/24 on TCP 443 and UDP 53 to the zone named like itself.
func allowStreams(zone string) string {
	return allowWorld(zone, "{protocol: TCP, port: 443}, {protocol: UDP, port: 53}")
}

// buildRelease builds the image of an earlier commit of the repository (its own Makefile, from a copy of its
// tree) under ref, imports it into every node, and returns that commit's manifest and FirewallConfig with ref
// as the image.
func buildRelease(t *testing.T, ctx context.Context, commit, ref string) [2]string {
	t.Helper()
	start := time.Now()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	sh := fmt.Sprintf("git -C %q archive --format=tar %s | tar -x -C %q", suite.repo, commit, src)
	if out, err := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", sh).CombinedOutput(); err != nil {
		t.Fatalf("the tree of %s (a shallow clone lacks it: fetch the history): %v\n%s", commit, err, out)
	}
	epoch, err := exec.CommandContext(ctx, "git", "-C", suite.repo, "show", "-s", "--format=%ct", commit).Output()
	if err != nil {
		t.Fatal(err)
	}
	mk := exec.CommandContext(ctx, "make", "-C", src, "image", "IMAGE="+ref, "VERSION="+commit[:7],
		"SOURCE_DATE_EPOCH="+strings.TrimSpace(string(epoch)))
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("build %s at %s: %v\n%s", ref, commit, err, tail(string(out), 40))
	}
	if err := importImages(ctx, filepath.Join(src, "bin", "moat-image.tar")); err != nil {
		t.Fatal(err)
	}
	var files [2]string
	for i, name := range []string{"moat.yaml", "firewallconfig.yaml"} {
		data, err := os.ReadFile(filepath.Join(src, "install/kubernetes", name))
		if err != nil {
			t.Fatal(err)
		}
		data = regexp.MustCompile(`(?m)^(\s*image:\s*)moatfw/moat:\S+$`).ReplaceAll(data, []byte("${1}"+ref))
		files[i] = filepath.Join(dir, name)
		if err := os.WriteFile(files[i], data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("built and imported %s from %s in %s", ref, commit[:7], time.Since(start).Round(time.Second))
	return files
}

// uninstallMoat takes Moat off every node as docs/install.md says (the uninstall DaemonSet), leaving its
// custom resources.
func uninstallMoat(t *testing.T, ctx context.Context) {
	t.Helper()
	uninstall := filepath.Join(suite.repo, "install/kubernetes/uninstall.yaml")
	kubectl(t, ctx, "-n", "moat-system", "delete", "daemonset", "moat", "--wait=true")
	kubectl(t, ctx, "apply", "-f", uninstall)
	kubectl(t, ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat-uninstall", "--timeout", "120s")
	kubectl(t, ctx, "delete", "-f", uninstall, "--wait=true")
}

func kubectl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := suite.cluster.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rollout waits until the DaemonSet's pods run its template on every node and are ready.
func rollout(t *testing.T, ctx context.Context) {
	t.Helper()
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "240s"); err != nil {
		dumpMoat(ctx)
		t.Fatalf("the moat DaemonSet did not roll: %v\n%s", err, out)
	}
}

// moatImage is the image of a Moat pod's enforcer container.
func moatImage(ctx context.Context, pod string) string {
	out, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "pod", pod, "-o",
		`jsonpath={.spec.containers[?(@.name=="enforcer")].image}`)
	return string(out)
}

// moatLogs is the log of the enforcer of a node's Moat pod (previous: of its last run that ended).
func moatLogs(t *testing.T, ctx context.Context, n *node.Node, previous bool) string {
	t.Helper()
	pod, err := moatPodOn(ctx, n.Name)
	if err != nil {
		return err.Error()
	}
	out, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "logs", pod, "-c", "enforcer", fmt.Sprintf("--previous=%t", previous))
	return string(out)
}

// sandboxFailure is the message of the latest event saying a pod's sandbox could not be created, or "".
func sandboxFailure(ctx context.Context, ns, name string) string {
	events, err := suite.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + name + ",reason=FailedCreatePodSandBox"})
	if err != nil || len(events.Items) == 0 {
		return ""
	}
	return events.Items[len(events.Items)-1].Message
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
