package e2e

import (
	"context"
	"strings"
	"testing"
)

// Bad input from a user: the API server refuses what the schema rules out (unknown fields, a malformed CIDR, an
// unknown action); odd namespace labels are reported, never crash the enforcer, and never open anything: an
// unknown world default denies, and only "allow" opens the metadata API.
func TestBadInput(t *testing.T) {
	for _, c := range []struct{ name, yaml, says string }{
		{"a FirewallConfig with an unknown field", `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec:
  defaultEgress: Allow
  defaultEgres: Deny
`, "defaultEgres"},
		{"a FirewallPolicy with a /33", `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-bad-cidr}
spec:
  namespaceSelector: {}
  egress: [{action: Deny, to: [{cidr: 10.0.0.0/33}]}]
`, "10.0.0.0/33"},
		{"a FirewallPolicy without a namespaceSelector", `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-no-selector}
spec:
  egress: [{action: Deny, to: [{cidr: 10.0.0.0/8}]}]
`, "namespaceSelector"},
		{"a FirewallConfig not named default", `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: other}
spec: {defaultEgress: Deny}
`, "default"},
		{"YAML that is not an object", "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: [1, 2]\n", "metadata"},
	} {
		out, err := apply(t, c.yaml)
		rejected := err != nil && strings.Contains(out, c.says)
		if !record(t, "kubectl apply of "+c.name, "rejected", map[bool]string{true: "rejected", false: "admitted"}[rejected], 0) {
			t.Errorf("%s: %v\n%s", c.name, err, out)
		}
	}

	restartsBefore := moatRestarts(t)
	namespace(t, "e2e-odd", map[string]string{"moat.dev/zone": "e2e-odd", "moat.dev/egress": "sideways",
		"moat.dev/metadata": "Yes", "moat.dev/mode": "loud"})
	p := agent(t, "e2e-odd", "client")
	expect(t, p, "tcp", "203.0.113.1:80", false, applied) // an unknown egress value fails closed: Deny
	expect(t, p, "tcp", "169.254.169.254:80", false, 0)   // only "allow" opens the metadata API
	if after := moatRestarts(t); !record(t, "enforcer restarts after odd labels", restartsBefore, after, 0) {
		t.Errorf("the enforcer restarted: %s -> %s", restartsBefore, after)
	}
}

// moatRestarts is the restart counts of the enforcers, one a node.
func moatRestarts(t *testing.T) string {
	t.Helper()
	out, err := suite.cluster.Kubectl(context.Background(), "-n", "moat-system", "get", "pods", "-l", "app.kubernetes.io/name=moat,app.kubernetes.io/component=enforcer",
		"-o", "jsonpath={.items[*].status.containerStatuses[0].restartCount}")
	if err != nil {
		t.Fatalf("the Moat pod's restarts: %v %s", err, out)
	}
	return strings.TrimSpace(string(out))
}
