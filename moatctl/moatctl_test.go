package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/report"
	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "moatctl-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if err := simnode.Build(dir, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := os.Chmod(dir, 0o755); err != nil { // the not-root test runs moatctl as nobody
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

const nodePolicy = `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {clusterCIDRs: [10.251.0.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: payments, labels: {moat.dev/zone: payments, moat.dev/egress: Deny, moat.dev/ingress: Deny}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {moat.dev/zone: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {moat.dev/zone: ops, moat.dev/metadata: allow}}
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: payments}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: payments}}
  priority: 100
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.0/24}]
    ports: [{protocol: TCP, port: 443}]
  ingress:
  - action: Allow
    from: [{cidr: 203.0.113.0/24}]
    ports: [{protocol: TCP, port: 8443}]
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: dev}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{namespaceSelector: {}}]
`

const brokenPolicy = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: broken}
spec:
  namespaceSelector: {}
  egress: [{action: Perhaps}]
`

// run runs moatctl in this process with args, returning what it printed and its error.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRoot(&out)
	root.SetArgs(args)
	root.SetErr(&out)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// Every command against a real enforcer on a simulated node with real pods: rows, exit codes, trace verdicts
// that agree with real connections, and a report that agrees with a connection matrix actually attempted.
func TestMoatctlOnASimulatedNode(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	node, err := simnode.New(t.TempDir(), binDir, simnode.Options{Ports: []uint16{80, 443, 8443}})
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
	if err := node.WritePolicy("policy.yaml", nodePolicy); err != nil {
		t.Fatal(err)
	}
	if err := node.StartEnforcer(ctx); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*simnode.Pod{}
	for _, ns := range []string{"payments", "dev", "ops"} {
		p, err := node.AddPod(ctx, ns, ns+"-0")
		if err != nil {
			t.Fatalf("%v\n%s", err, node.EnforcerLog())
		}
		for _, port := range []uint16{8080, 8443} {
			if err := p.Serve(port); err != nil {
				t.Fatal(err)
			}
		}
		pods[ns] = p
	}
	sock := "--socket=" + node.Socket

	// a pod starts staged (Moat's filters first) and the enforcer moves it to tcx once the node is quiet
	var out string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		out, err = run(t, sock, "status")
		if err == nil && strings.Contains(out, "3 (tcx 3)") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !strings.Contains(out, "Ready:") || !strings.Contains(out, "yes") || !strings.Contains(out, "3 (tcx 3)") {
		t.Errorf("status (%v):\n%s", err, out)
	}
	out, err = run(t, sock, "endpoints")
	if err != nil {
		t.Fatal(err)
	}
	for ns, p := range pods {
		if !containsRow(out, ns, ns+"-0", p.Addr.String(), "tcx", "true") {
			t.Errorf("endpoints lacks the row of %s/%s:\n%s", ns, p.Name, out)
		}
	}

	// trace agrees with real connections
	type tcase struct {
		from, to, direction string
		real                func() error
	}
	world, other, meta := simnode.WorldAddr(0), simnode.WorldAddr(1), simnode.Metadata
	connect := func(p *simnode.Pod, addr netip.Addr, port uint16) func() error {
		return func() error { return p.Connect(netip.AddrPortFrom(addr, port).String(), time.Second) }
	}
	inbound := func(from netip.Addr, p *simnode.Pod, port uint16) func() error {
		return func() error {
			return node.ConnectFromInternet(from, netip.AddrPortFrom(p.Addr, port).String(), time.Second)
		}
	}
	cases := []tcase{
		{"payments/payments-0", world.String() + ":443", "egress", connect(pods["payments"], world, 443)},
		{"payments/payments-0", world.String() + ":80", "egress", connect(pods["payments"], world, 80)},
		{"payments/payments-0", other.String() + ":443", "egress", connect(pods["payments"], other, 443)},
		{"payments", meta.String() + ":80", "egress", connect(pods["payments"], meta, 80)},
		{"dev/dev-0", world.String() + ":80", "egress", connect(pods["dev"], world, 80)},
		{"dev/dev-0", meta.String() + ":80", "egress", connect(pods["dev"], meta, 80)},
		{"ops/ops-0", meta.String() + ":80", "egress", connect(pods["ops"], meta, 80)},
		{"dev/dev-0", "payments/payments-0:8080", "egress", connect(pods["dev"], pods["payments"].Addr, 8080)},
		{"ops/ops-0", "payments/payments-0:8080", "egress", connect(pods["ops"], pods["payments"].Addr, 8080)},
		{"dev/dev-0", "payments/payments-0:8443", "egress", connect(pods["dev"], pods["payments"].Addr, 8443)},
		{"payments/payments-0", other.String() + ":8443", "ingress", inbound(other, pods["payments"], 8443)},
		{"payments/payments-0", world.String() + ":8443", "ingress", inbound(world, pods["payments"], 8443)},
		{"dev/dev-0", world.String() + ":8080", "ingress", inbound(world, pods["dev"], 8080)},
	}
	for _, c := range cases {
		out, err := run(t, sock, "trace", "--from", c.from, "--to", c.to, "--direction", c.direction, "-o", "json")
		if err != nil {
			t.Fatalf("trace %s -> %s: %v", c.from, c.to, err)
		}
		var res agentapi.TraceResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("trace output: %v\n%s", err, out)
		}
		realErr := c.real()
		if (res.Verdict == "allowed") != (realErr == nil) {
			t.Errorf("trace %s %s %s says %s (%s), a real connection: %v", c.from, c.direction, c.to, res.Verdict,
				res.Explanation, realErr)
		}
	}
	out, err = run(t, sock, "trace", "--from", "payments/payments-0", "--to", world.String()+":443")
	if err != nil || !containsRow(out, "Verdict:", "ALLOWED") || !containsRow(out, "FirewallPolicy", "payments,", "egress[0]") {
		t.Errorf("trace table (%v):\n%s", err, out)
	}

	// flows: the denied connection to port 80 is there, filtered by namespace and verdict
	var flows []agentapi.Flow
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err = run(t, sock, "flows", "--namespace", "payments", "--verdict", "denied", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		flows = nil
		dec := json.NewDecoder(strings.NewReader(out))
		for dec.More() {
			var f agentapi.Flow
			if err := dec.Decode(&f); err != nil {
				t.Fatal(err)
			}
			flows = append(flows, f)
		}
		if hasFlow(flows, world.String(), 80) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !hasFlow(flows, world.String(), 80) {
		t.Errorf("flows lack the denied connection to %s:80: %+v", world, flows)
	}
	for _, f := range flows {
		if f.Namespace != "payments" || f.Verdict != "denied" {
			t.Errorf("flow %+v passed the filters", f)
		}
	}
	out, err = run(t, sock, "flows", "--verdict", "denied", "--limit", "1")
	if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 1 || !strings.Contains(out, "denied") {
		t.Errorf("flows table, limit 1 (%v):\n%s", err, out)
	}

	// the report agrees with a connection matrix
	out, err = run(t, sock, "report", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	byName := map[string]report.Namespace{}
	for _, n := range rep.Namespaces {
		byName[n.Name] = n
	}
	for ns, p := range pods {
		rn, ok := byName[ns]
		if !ok {
			t.Fatalf("report lacks namespace %s", ns)
		}
		for _, dst := range []netip.AddrPort{netip.AddrPortFrom(world, 443), netip.AddrPortFrom(world, 80), netip.AddrPortFrom(other, 443)} {
			real := p.Connect(dst.String(), time.Second) == nil
			if says := rn.Egress.Allows("tcp", dst.Port(), dst.Addr()); says != real {
				t.Errorf("report: %s world egress to %s %v (%s), a real connection: %v", ns, dst, says, rn.Egress.Summary(), real)
			}
		}
		real := p.Connect(netip.AddrPortFrom(meta, 80).String(), time.Second) == nil
		if says := rn.Metadata.Allows("tcp", 80, meta); says != real {
			t.Errorf("report: %s metadata %v, a real connection: %v", ns, says, real)
		}
		for _, src := range []netip.Addr{world, other} {
			real := node.ConnectFromInternet(src, netip.AddrPortFrom(p.Addr, 8443).String(), time.Second) == nil
			if says := rn.Ingress.Allows("tcp", 8443, src); says != real {
				t.Errorf("report: %s world ingress from %s to 8443 %v (%s), a real connection: %v", ns, src, says, rn.Ingress.Summary(), real)
			}
		}
		for _, peer := range rn.Peers {
			for _, port := range []uint16{8080, 8443} {
				real := p.Connect(netip.AddrPortFrom(pods[peer.Namespace].Addr, port).String(), time.Second) == nil
				if says := peer.Allows("tcp", port, pods[peer.Namespace].Addr); says != real {
					t.Errorf("report: %s to %s:%d %v (%s), a real connection: %v", ns, peer.Namespace, port, says, peer.Summary(), real)
				}
			}
		}
	}
	for _, format := range []string{"table", "markdown", "html"} {
		out, err := run(t, sock, "report", "--format", format)
		if err != nil || !strings.Contains(out, "payments") || !strings.Contains(out, "ops") {
			t.Errorf("report --format %s (%v):\n%s", format, err, out)
		}
	}

	// a broken policy: policies shows why, and status exits non-zero
	if err := node.WritePolicy("zz-broken.yaml", brokenPolicy); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, err = run(t, sock, "policies")
		if strings.Contains(out, "broken") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || !containsRow(out, "broken", "Invalid") || !containsRow(out, "payments", "Accepted", "100", "Enforce", "4", "payments") ||
		!strings.Contains(out, "Perhaps") {
		t.Errorf("policies (%v):\n%s", err, out)
	}
	out, err = run(t, sock, "status")
	if ee, ok := err.(exitError); !ok || ee.code != 1 || !strings.Contains(out, "zz-broken.yaml") {
		t.Errorf("status with an invalid policy: %v, want exit 1 naming the file:\n%s", err, out)
	}

	// errors people meet
	if _, err := run(t, sock, "trace", "--from", "nope", "--to", "198.51.100.1:443"); err == nil || !strings.Contains(err.Error(), `unknown namespace "nope"`) {
		t.Errorf("trace from an unknown namespace: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if _, err := run(t, "--socket", missing, "status"); err == nil || !strings.Contains(err.Error(), missing) ||
		!strings.Contains(err.Error(), "moat-enforcer") {
		t.Errorf("no enforcer: %v", err)
	}
	if _, err := run(t, sock, "-o", "xml", "endpoints"); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Errorf("a bad output format: %v", err)
	}
	// not root: the socket (0600, in a root-only folder) refuses, and moatctl says so
	cmd := exec.Command(filepath.Join(binDir, "moatctl"), sock, "status")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stderr, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(stderr), "permission denied") || !strings.Contains(string(stderr), "root") {
		t.Errorf("moatctl as nobody: %v\n%s", err, stderr)
	}
}

func hasFlow(flows []agentapi.Flow, dst string, dport uint16) bool {
	for _, f := range flows {
		if f.Dst == dst && f.Dport == dport {
			return true
		}
	}
	return false
}

// containsRow reports whether a line of out holds every field, in order.
func containsRow(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		rest := line
		ok := true
		for _, f := range fields {
			i := strings.Index(rest, f)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(f):]
		}
		if ok {
			return true
		}
	}
	return false
}
