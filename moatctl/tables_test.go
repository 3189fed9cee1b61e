package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/moatfw/moat/internal/agentapi"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name (go test ./moatctl -run Tables -update rewrites them).
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (-update rewrites it):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

var (
	now     = time.Date(2026, 11, 24, 3, 12, 0, 0, time.UTC)
	started = now.Add(-26*time.Hour - 5*time.Minute)
)

// The table outputs of every command, for a healthy and a troubled node.
func TestTables(t *testing.T) {
	healthy := agentapi.Status{Version: "v0.3.0", APIVersion: "v1", Started: started, Source: "kubernetes", Ready: true,
		AttachModes: map[string]int{"tcx": 12}, Generation: 41, Applied: now.Add(-95 * time.Second), Endpoints: 12,
		Namespaces: 7, Policies: 5, Maps: map[string]agentapi.MapFill{
			"conntrack": {Entries: 1822, Capacity: 262144}, "ipcache": {Entries: 640, Capacity: 65536},
			"policy": {Entries: 318, Capacity: 65536}}}
	troubled := healthy
	troubled.Ready = false
	troubled.AttachModes = map[string]int{"tcx": 11, "": 1}
	troubled.InvalidPolicies = 1
	troubled.LostEvents = 17
	troubled.ServiceRanges = "Services' cluster IPs and FirewallConfig clusterCIDRs (the API server does not serve networking.k8s.io/v1)"
	troubled.Problems = []string{"FirewallPolicy broken is invalid: egress[0].action: \"Perhaps\" is not Allow or Deny",
		"pod shop/cart-7d9 (veth3a1b2c) is not attached: link not found"}
	troubled.Warnings = []string{"FirewallPolicy legacy-egress: selects no namespace: its rules apply nowhere"}
	troubled.LastErrors = []agentapi.LogLine{{Time: now.Add(-time.Minute), Message: "attach failed",
		Fields: map[string]string{"pod": "shop/cart-7d9", "veth": "veth3a1b2c"}}}
	for name, st := range map[string]agentapi.Status{"status-healthy.txt": healthy, "status-troubled.txt": troubled} {
		var b bytes.Buffer
		if err := statusTable(&b, st, now); err != nil {
			t.Fatal(err)
		}
		golden(t, name, b.Bytes())
	}

	var b bytes.Buffer
	if err := endpointsTable(&b, []agentapi.Endpoint{
		{Pod: "api-5c8f", Namespace: "payments", Identity: 3, Addresses: []string{"10.251.0.7", "fd00:250::7"},
			HostVeth: "veth91ac02", Mode: "tcx", Attached: true},
		{Pod: "cart-7d9", Namespace: "shop", Identity: 5, Addresses: []string{"10.251.0.9"}, HostVeth: "veth3a1b2c",
			Problem: "link not found"},
		{Namespace: "dev", Identity: 4, Addresses: []string{"10.251.0.12"}, HostVeth: "veth0e0e0e", Mode: "clsact", Attached: true},
	}); err != nil {
		t.Fatal(err)
	}
	golden(t, "endpoints.txt", b.Bytes())

	b.Reset()
	if err := policiesTable(&b, []agentapi.Policy{
		{Name: "payments", State: "Accepted", Priority: 100, Mode: "Enforce", Namespaces: []string{"payments"}, Rules: 4},
		{Name: "audit-egress", State: "Accepted", Priority: 1000, Mode: "Audit", Namespaces: []string{"dev", "ops"}, Rules: 1},
		{Name: "broken", State: "Invalid", Reason: "egress[0].action: \"Perhaps\" is not Allow or Deny", Mode: "Enforce"},
		{Name: "legacy-egress", State: "Accepted", Priority: 1000, Mode: "Enforce", Rules: 2, Namespaces: []string{},
			Warnings: []string{"selects no namespace: its rules apply nowhere"}},
	}); err != nil {
		t.Fatal(err)
	}
	golden(t, "policies.txt", b.Bytes())

	b.Reset()
	for _, res := range []agentapi.TraceResult{
		{Verdict: "allowed", Reason: "rule", Policy: "payments", Rule: "egress[0]", Identity: 3, Remote: "198.51.100.1",
			RemoteClass: "world", Explanation: "egress to 198.51.100.1 tcp/443: FirewallPolicy payments egress[0] allows it"},
		{Verdict: "denied", Reason: "rule", Policy: "payments", Rule: "ingress[2]", Identity: 3, Remote: "10.251.0.12",
			RemoteClass: "pod", RemoteNamespace: "dev", PeerVerdict: "allowed",
			Explanation: "ingress from dev tcp/9090: FirewallPolicy payments ingress[2] denies it"},
		{Verdict: "denied", Reason: "metadata", Identity: 4, Remote: "169.254.169.254", RemoteClass: "metadata",
			AuditPolicy: "audit-egress", AuditRule: "egress[0]",
			Explanation: "the metadata API is closed to namespaces without moat.dev/metadata=allow"},
	} {
		if err := traceTable(&b, res); err != nil {
			t.Fatal(err)
		}
		b.WriteString("\n")
	}
	golden(t, "trace.txt", b.Bytes())

	b.Reset()
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	tw.Write([]byte(flowHeader + "\n"))
	flowRow(tw, agentapi.Flow{Time: now, Direction: "egress", Verdict: "denied", Reason: "rule", Proto: "tcp",
		Src: "10.251.0.7", Sport: 40112, Dst: "198.51.100.1", Dport: 80, Namespace: "payments", Pod: "api-5c8f",
		Remote: "world", Policy: "payments", Rule: "egress[1]"}, time.UTC)
	flowRow(tw, agentapi.Flow{Time: now.Add(1500 * time.Millisecond), Direction: "egress", Verdict: "denied",
		Reason: "metadata", Proto: "tcp", Src: "fd00:250::9", Sport: 51000, Dst: "fd00:ec2::254", Dport: 80,
		Namespace: "dev", Remote: "metadata"}, time.UTC)
	flowRow(tw, agentapi.Flow{Time: now.Add(2 * time.Second), Direction: "ingress", Verdict: "audit", Reason: "rule",
		Proto: "icmp", Src: "203.0.113.9", Sport: 4711, Dst: "10.251.0.12", Dport: 4711, Namespace: "dev", Pod: "web-1",
		Remote: "world", Policy: "audit-ingress", Rule: "ingress[0]"}, time.UTC)
	tw.Flush()
	golden(t, "flows.txt", b.Bytes())
}
