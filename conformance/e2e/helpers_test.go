package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"net"

	"github.com/moatfw/moat/conformance/node"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// namespace creates (or relabels) a namespace; the test removes it at the end.
func namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	_, err := suite.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = suite.client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// label sets (or, with an empty value, removes) labels of a namespace.
func label(t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	m := map[string]any{}
	for k, v := range labels {
		if v == "" {
			m[k] = nil
		} else {
			m[k] = v
		}
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": m}})
	if _, err := suite.client.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, body,
		metav1.PatchOptions{}); err != nil {
		t.Fatalf("label namespace %s: %v", ns, err)
	}
}

// pod is an agent pod: it serves TCP echo on 8080 (and probes on request).
type pod struct {
	ns, name string
	node     string // the name of the node it runs on
	v4, v6   netip.Addr
}

func (p pod) String() string { return p.ns + "/" + p.name }

// onNode places an agent pod on a node (an agent pod runs on node A unless told otherwise).
func onNode(n *node.Node) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.NodeName = n.Name }
}

// agent starts an agent pod (on node A, or where a mutate puts it) and waits until it runs.
func agent(t *testing.T, ns, name string, mutate ...func(*corev1.Pod)) pod {
	t.Helper()
	createAgent(t, ns, name, mutate...)
	return running(t, ns, name)
}

// createAgent creates an agent pod and does not wait for it.
func createAgent(t *testing.T, ns, name string, mutate ...func(*corev1.Pod)) {
	t.Helper()
	ctx := context.Background()
	zero := int64(0)
	spec := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                      suite.node.Name,
			TerminationGracePeriodSeconds: &zero,
			AutomountServiceAccountToken:  new(bool),
			Containers: []corev1.Container{{
				Name: "agent", Image: suite.images.Agent.Ref, ImagePullPolicy: corev1.PullNever,
				Args: []string{"--tcp", "8080", "--name", ns + "/" + name}, // the entrypoint is /agent serve
			}},
		},
	}
	for _, m := range mutate {
		m(spec)
	}
	if _, err := suite.client.CoreV1().Pods(ns).Create(ctx, spec, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
}

// running waits until a pod runs with an address and returns it.
func running(t *testing.T, ns, name string) pod {
	t.Helper()
	ctx := context.Background()
	var p pod
	if !eventually(90*time.Second, func() bool {
		got, err := suite.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || got.Status.Phase != corev1.PodRunning {
			return false
		}
		p = pod{ns: ns, name: name, node: got.Spec.NodeName}
		for _, ip := range got.Status.PodIPs {
			a, err := netip.ParseAddr(ip.IP)
			if err != nil {
				continue
			}
			if a.Is4() {
				p.v4 = a
			} else {
				p.v6 = a
			}
		}
		return p.v4.IsValid()
	}) {
		out, _ := suite.cluster.Kubectl(ctx, "-n", ns, "describe", "pod", name)
		t.Fatalf("pod %s/%s never ran:\n%s", ns, name, out)
	}
	return p
}

// deletePod deletes a pod and waits until it is gone.
func deletePod(t *testing.T, p pod) {
	t.Helper()
	ctx := context.Background()
	if err := suite.client.CoreV1().Pods(p.ns).Delete(ctx, p.name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete %s: %v", p, err)
	}
	if !eventually(60*time.Second, func() bool {
		_, err := suite.client.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}) {
		t.Fatalf("%s was never deleted", p)
	}
}

func eventually(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(200 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// probeResult is what the agent's probe prints.
type probeResult struct {
	Target  string `json:"target"`
	Reached bool   `json:"reached"`
	Reply   string `json:"reply"`
	Error   string `json:"error"`
	Local   string `json:"local"`
}

// probe asks a pod's agent to reach target (ADDR:PORT) over proto, through kubectl exec.
func probe(p pod, proto, target string) probeResult {
	var r probeResult
	if err := runAgent(p, &r, "probe", "--timeout", "1s", "--proto", proto, target); err != nil {
		r.Error = err.Error()
	}
	return r
}

// runAgent runs the agent in a pod through kubectl exec and decodes the JSON line it prints last into v; the error
// says what came back when there is no such line.
func runAgent(p pod, v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := suite.cluster.Kubectl(ctx, append([]string{"-n", p.ns, "exec", p.name, "-c", "agent", "--", "/agent"}, args...)...)
	line := strings.TrimSpace(string(out))
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	if jerr := json.Unmarshal([]byte(line), v); jerr != nil {
		return fmt.Errorf("kubectl exec: %v: %s", err, out)
	}
	return nil
}

func verdict(reached bool) string {
	if reached {
		return "reached"
	}
	return "blocked"
}

// expect checks (and records) that a pod reaches target or not; with settle, it waits up to that long for the
// expected verdict (a change being applied), else the first answer counts.
func expect(t *testing.T, p pod, proto, target string, want bool, settle time.Duration) {
	t.Helper()
	start := time.Now()
	var r probeResult
	eventually(settle, func() bool { r = probe(p, proto, target); return r.Reached == want })
	name := fmt.Sprintf("%s -> %s/%s", p, proto, target)
	if !record(t, name, verdict(want), verdict(r.Reached), time.Since(start)) {
		t.Errorf("%s: %s, want %s (%+v)", name, verdict(r.Reached), verdict(want), r)
		explain(t)
	}
}

// fromInternet connects from a World address to addr (a node port, a host port) and reports whether an echo came
// back, and the client address the server saw.
func fromInternet(t *testing.T, from netip.Addr, addr string, want bool, settle time.Duration) string {
	t.Helper()
	start := time.Now()
	var reply string
	var reached bool
	eventually(settle, func() bool {
		reply, reached = exchangeFromInternet(from, addr)
		return reached == want
	})
	name := fmt.Sprintf("Internet %s -> %s", from, addr)
	if !record(t, name, verdict(want), verdict(reached), time.Since(start)) {
		t.Errorf("%s: %s, want %s", name, verdict(reached), verdict(want))
		explain(t)
	}
	return reply
}

// explain logs what tells why a case failed: every node's flow log and enforcer log.
func explain(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, n := range suite.nodes {
		pod, err := moatPodOn(ctx, n.Name)
		if err != nil {
			t.Logf("%s: %v", n.Name, err)
			continue
		}
		flows, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "exec", pod, "-c", "enforcer", "--",
			"moatctl", "flows", "--limit", "15")
		logs, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "logs", pod, "-c", "enforcer", "--tail", "25")
		t.Logf("%s: flow log:\n%s\n%s: enforcer log:\n%s", n.Name, flows, n.Name, logs)
	}
}

// apply runs kubectl apply on a YAML document.
func apply(t *testing.T, yaml string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(kubetest.BinDir(), "kubectl"), "--kubeconfig", suite.cluster.Kubeconfig,
		"apply", "-f", "-")
	cmd.Stdin = bytes.NewBufferString(yaml)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustApply applies a YAML document and deletes it when the test ends.
func mustApply(t *testing.T, yaml string) {
	t.Helper()
	if out, err := apply(t, yaml); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(kubetest.BinDir(), "kubectl"), "--kubeconfig",
			suite.cluster.Kubeconfig, "delete", "--ignore-not-found", "-f", "-")
		cmd.Stdin = bytes.NewBufferString(yaml)
		_ = cmd.Run()
	})
}

// exchangeFromInternet dials addr from a World address inside the Internet's namespace, sends a line and reads
// the reply.
func exchangeFromInternet(from netip.Addr, addr string) (string, bool) {
	var reply string
	err := suite.internet.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := fmt.Fprintf(c, "hello from %s\n", from); err != nil {
			return err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		reply = string(buf[:n])
		return nil
	})
	return reply, err == nil
}
