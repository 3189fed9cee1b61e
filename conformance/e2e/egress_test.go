package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// applied is how long a change may take to reach the datapath (the enforcer's target is 100 ms; the API's watch
// and the kubelet add their share).
const applied = 20 * time.Second

// Egress by CIDR, except, port and port range, IPv4 and IPv6, in a namespace whose world egress is denied by its
// label; replies of allowed flows come back (the probe waits for the echo).
func TestEgressRules(t *testing.T) {
	namespace(t, "e2e-pay", map[string]string{"moat.dev/zone": "e2e-pay", "moat.dev/egress": "Deny"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-pay-egress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-pay}}
  priority: 100
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.0/24, except: [198.51.100.2/32]}]
    ports: [{protocol: TCP, port: 443}]
  - action: Allow
    to: [{cidr: 203.0.113.0/24}]
    ports: [{protocol: TCP, port: 9000, endPort: 9001}]
  - action: Allow
    to: [{cidr: "2001:db8::/32"}]
    ports: [{protocol: TCP, port: 443}]
`)
	client := agent(t, "e2e-pay", "client")
	expect(t, client, "tcp", "198.51.100.1:443", true, applied)
	expect(t, client, "tcp", "198.51.100.2:443", false, 0) // the except
	expect(t, client, "tcp", "198.51.100.1:80", false, 0)  // another port
	expect(t, client, "tcp", "203.0.113.1:9000", true, 0)  // the range
	expect(t, client, "tcp", "203.0.113.1:9001", true, 0)
	expect(t, client, "tcp", "203.0.113.1:9002", false, 0)
	expect(t, client, "udp", "198.51.100.1:53", false, 0)
	expect(t, client, "tcp", "[2001:db8::1]:443", true, 0)
	expect(t, client, "tcp", "[2001:db8::1]:80", false, 0)
}

// The metadata API (IPv4 and IPv6) is closed by default, open to a namespace labelled for it, and the label takes
// effect on running pods.
func TestMetadataAPI(t *testing.T) {
	namespace(t, "e2e-dev", map[string]string{"moat.dev/zone": "e2e-dev"})
	namespace(t, "e2e-ops", map[string]string{"moat.dev/zone": "e2e-ops", "moat.dev/metadata": "allow"})
	dev := agent(t, "e2e-dev", "sandbox")
	ops := agent(t, "e2e-ops", "agent")
	expect(t, dev, "tcp", "203.0.113.1:80", true, applied)
	expect(t, dev, "tcp", "169.254.169.254:80", false, 0)
	expect(t, dev, "tcp", "[fd00:ec2::254]:80", false, 0)
	expect(t, ops, "tcp", "169.254.169.254:80", true, applied)
	expect(t, ops, "tcp", "[fd00:ec2::254]:80", true, 0)

	label(t, "e2e-dev", map[string]string{"moat.dev/metadata": "allow"})
	expect(t, dev, "tcp", "169.254.169.254:80", true, applied)
	label(t, "e2e-dev", map[string]string{"moat.dev/metadata": ""})
	expect(t, dev, "tcp", "169.254.169.254:80", false, applied)
}

// Zones: a database namespace takes connections from one zone only.
func TestZones(t *testing.T) {
	namespace(t, "e2e-db", map[string]string{"moat.dev/zone": "e2e-db"})
	namespace(t, "e2e-app", map[string]string{"moat.dev/zone": "e2e-app"})
	namespace(t, "e2e-other", map[string]string{"moat.dev/zone": "e2e-other"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-db-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-db}}
  priority: 100
  ingress:
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-app}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{namespaceSelector: {}}]
`)
	db := agent(t, "e2e-db", "db")
	app := agent(t, "e2e-app", "app")
	other := agent(t, "e2e-other", "other")
	expect(t, other, "tcp", db.v4.String()+":8080", false, applied)
	expect(t, app, "tcp", db.v4.String()+":8080", true, applied)
	if db.v6.IsValid() {
		expect(t, app, "tcp", "["+db.v6.String()+"]:8080", true, 0)
		expect(t, other, "tcp", "["+db.v6.String()+"]:8080", false, 0)
	}
	expect(t, db, "tcp", other.v4.String()+":8080", true, 0) // the other way is not restricted
}

// Live changes: a namespace label and a policy edit change running pods' traffic.
func TestLiveChanges(t *testing.T) {
	namespace(t, "e2e-live", map[string]string{"moat.dev/zone": "e2e-live"})
	p := agent(t, "e2e-live", "client")
	expect(t, p, "tcp", "203.0.113.1:80", true, applied)
	label(t, "e2e-live", map[string]string{"moat.dev/egress": "Deny"})
	expect(t, p, "tcp", "203.0.113.1:80", false, applied)
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-live}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-live}}
  egress:
  - action: Allow
    to: [{cidr: 203.0.113.0/24}]
    ports: [{protocol: TCP, port: 80}]
`)
	expect(t, p, "tcp", "203.0.113.1:80", true, applied)
	expect(t, p, "tcp", "203.0.113.1:443", false, 0)
	if out, err := apply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-live}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-live}}
  egress:
  - action: Allow
    to: [{cidr: 203.0.113.0/24}]
    ports: [{protocol: TCP, port: 443}]
`); err != nil {
		t.Fatalf("edit the policy: %v\n%s", err, out)
	}
	expect(t, p, "tcp", "203.0.113.1:443", true, applied)
	expect(t, p, "tcp", "203.0.113.1:80", false, applied)
}

var policies = schema.GroupVersionResource{Group: "moat.dev", Version: "v1alpha1", Resource: "firewallpolicies"}

// A policy the API server refuses is refused at apply time; one it admits but the enforcer refuses is marked
// Invalid, and traffic keeps the last good version.
func TestInvalidPolicies(t *testing.T) {
	p := guardedClient(t, "e2e-inv")
	good := allow443("e2e-inv")

	out, err := apply(t, strings.Replace(good, "action: Allow", "action: Perhaps", 1))
	rejected := err != nil && strings.Contains(out, "Perhaps")
	if !record(t, "kubectl apply of action: Perhaps", "rejected", map[bool]string{true: "rejected", false: "admitted"}[rejected], 0) {
		t.Errorf("the API server admitted an unknown action: %v\n%s", err, out)
	}

	bad := strings.Replace(good, "to: [{cidr: 198.51.100.0/24}]", "to: [{cidr: 198.51.100.0/24, except: [203.0.113.0/24]}]", 1)
	bad = strings.Replace(bad, "port: 443", "port: 80", 1)
	if out, err := apply(t, bad); err != nil {
		t.Fatalf("the API server refused what only the enforcer can judge: %v\n%s", err, out)
	}
	dyn, err := dynamic.NewForConfig(suite.cluster.ControlPlane.Config)
	if err != nil {
		t.Fatal(err)
	}
	state := func() string {
		u, err := dyn.Resource(policies).Get(context.Background(), "e2e-inv", metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Accepted" && m["observedGeneration"] == u.GetGeneration() {
				return m["reason"].(string)
			}
		}
		return "pending"
	}
	start := time.Now()
	var got string
	eventually(applied, func() bool { got = state(); return got == "Invalid" })
	if !record(t, "an except outside its cidr: Accepted condition", "Invalid", got, time.Since(start)) {
		t.Errorf("policy state %q, want Invalid", got)
	}
	expect(t, p, "tcp", "198.51.100.1:443", true, 0) // the last good version stays
	expect(t, p, "tcp", "198.51.100.1:80", false, 0)
}
