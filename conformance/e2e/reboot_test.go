package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A node's machine restarting (node.Reboot: every process and container killed, the pins, the pods' network
// namespaces, /run/moat and the runtime's state gone, then the components started again): the pods bound to it
// come back, none of them unprotected under failPolicy closed, and the time until Moat and every pod are ready
// again is reported. Each pod has a watcher container that tries a denied destination every 100 ms from its
// first instant: with the pod's sandbox set up before Moat guards it (failPolicy open, or a plugin that let it
// through) its first tries would get through.
func TestNodeReboot(t *testing.T) {
	const zone = "e2e-reboot"
	namespace(t, zone, map[string]string{"moat.dev/zone": zone, "moat.dev/egress": "Deny"})
	mustApply(t, allow443(zone))
	n := suite.nodes[len(suite.nodes)-1]
	watcher := func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{
			Name: "watcher", Image: suite.images.Agent.Ref, ImagePullPolicy: corev1.PullNever,
			Command: []string{"/agent", "probe"},
			Args:    []string{"--every", "100ms", "--timeout", "300ms", "198.51.100.1:80"},
		})
	}
	names := []string{"web-1", "web-2", "web-3"}
	for _, name := range names {
		p := agent(t, zone, name, onNode(n), watcher)
		expect(t, p, "tcp", "198.51.100.1:443", true, applied)
		expect(t, p, "tcp", "198.51.100.1:80", false, 0)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	nodeReady, err := n.Reboot(ctx)
	if err != nil {
		t.Fatalf("reboot %s: %v", n.Name, err)
	}
	var moatReady time.Duration
	back := map[string]time.Duration{}
	if !eventually(5*time.Minute, func() bool {
		if moatReady == 0 && moatPodReadySince(ctx, n.Name, start) {
			moatReady = time.Since(start)
		}
		for _, name := range names {
			if _, ok := back[name]; !ok && podBackSince(ctx, zone, name, start) {
				back[name] = time.Since(start)
			}
		}
		return moatReady > 0 && len(back) == len(names)
	}) {
		out, _ := suite.cluster.Kubectl(ctx, "get", "pods", "-A", "-o", "wide", "--field-selector", "spec.nodeName="+n.Name)
		dumpMoat(ctx)
		t.Fatalf("%s's pods did not all come back after the reboot (Moat ready after %s, pods back %v):\n%s", n.Name, moatReady, back, out)
	}
	var last time.Duration
	for _, d := range back {
		last = max(last, d)
	}
	record(t, n.Name+" rebooted: the node Ready", "yes", "yes", nodeReady)
	record(t, n.Name+" rebooted: its Moat pod Ready", "yes", "yes", moatReady)
	record(t, n.Name+" rebooted: its 3 pods running again", "yes", "yes", last)
	t.Logf("%s rebooted: node Ready after %s, Moat after %s, every pod after %s", n.Name,
		nodeReady.Round(100*time.Millisecond), moatReady.Round(100*time.Millisecond), last.Round(100*time.Millisecond))
	if refused := sandboxFailuresSince(ctx, zone, start); refused > 0 {
		t.Logf("%d pod sandboxes were refused while Moat came back (failPolicy closed)", refused)
	}

	for _, name := range names {
		// the watcher has just started: its first lines come with its first tries (300 ms each when denied)
		var tries, leaked int
		eventually(30*time.Second, func() bool { tries, leaked = watcherSince(ctx, zone, name); return tries >= 5 })
		if !record(t, fmt.Sprintf("%s/%s after the reboot: its watcher's denied tries that got through", zone, name), "0 of N",
			fmt.Sprintf("%d of N", leaked), 0) || tries == 0 {
			t.Errorf("%s/%s: %d of %d tries to a denied destination got through after the reboot", zone, name, leaked, tries)
		}
		p := running(t, zone, name)
		expect(t, p, "tcp", "198.51.100.1:443", true, applied)
		expect(t, p, "tcp", "198.51.100.1:80", false, 0)
	}
	_, err = os.Stat(n.HostPath("/sys/fs/bpf/moat/config"))
	if !record(t, n.Name+" rebooted: the datapath pinned again", "yes", map[bool]string{true: "yes", false: "no"}[err == nil], 0) {
		t.Errorf("%s: no pinned datapath after the reboot: %v", n.Name, err)
	}
}

// moatPodReadySince reports whether the Moat pod of a node is Ready with an enforcer started after since.
func moatPodReadySince(ctx context.Context, nodeName string, since time.Time) bool {
	name, err := moatPodOn(ctx, nodeName)
	if err != nil {
		return false
	}
	return podBackSince(ctx, "moat-system", name, since)
}

// podBackSince reports whether a pod is Ready with every container started after since.
func podBackSince(ctx context.Context, ns, name string, since time.Time) bool {
	p, err := suite.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	ready := false
	for _, c := range p.Status.Conditions {
		ready = ready || c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Running == nil || c.State.Running.StartedAt.Time.Before(since.Truncate(time.Second)) {
			return false
		}
	}
	return ready
}

// sandboxFailuresSince counts the events of a namespace saying a pod's sandbox could not be created, since a
// time.
func sandboxFailuresSince(ctx context.Context, ns string, since time.Time) int {
	events, err := suite.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=FailedCreatePodSandBox"})
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range events.Items {
		if !e.LastTimestamp.Time.Before(since.Truncate(time.Second)) {
			n += int(max(e.Count, 1))
		}
	}
	return n
}

// watcherSince reads the log of a pod's watcher container (its current run) and counts its tries and those that
// reached their denied destination.
func watcherSince(ctx context.Context, ns, name string) (tries, reached int) {
	out, _ := suite.cluster.Kubectl(ctx, "-n", ns, "logs", name, "-c", "watcher")
	for _, line := range strings.Split(string(out), "\n") {
		var r probeResult
		if json.Unmarshal([]byte(line), &r) != nil {
			continue
		}
		tries++
		if r.Reached {
			reached++
		}
	}
	return tries, reached
}
