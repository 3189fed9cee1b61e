package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/report"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// An edit the schema admits but the enforcer refuses: the except lies outside its cidr.
const badExceptPolicy = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: bad-except}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: dev}}
  egress:
  - action: Deny
    to: [{cidr: 198.51.100.0/24, except: [203.0.113.0/24]}]
`

func fromYAMLDoc(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// policies and report with --kubeconfig answer from a real API server: the policies' states as the enforcers
// wrote them (or as moatctl judges them itself), and the report of what the cluster holds.
func TestMoatctlAgainstACluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster := kubetest.Start(t, kubetest.WithControllers("serviceaccount-controller"))
	crds, err := filepath.Glob("../install/kubernetes/crds/*.yaml")
	if err != nil || len(crds) == 0 {
		t.Fatalf("CRD files: %v %v", crds, err)
	}
	if err := cluster.InstallCRDs(ctx, crds...); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	gvr := map[string]schema.GroupVersionResource{
		"Namespace":      {Version: "v1", Resource: "namespaces"},
		"FirewallPolicy": v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.ResourceFirewallPolicies),
		"FirewallConfig": v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.ResourceFirewallConfigs),
	}
	for _, doc := range strings.Split(nodePolicy+"---\n"+badExceptPolicy, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: obj}
		if _, err := dyn.Resource(gvr[u.GetKind()]).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	// the API server itself refuses the broken policy (an action that is not Allow or Deny)
	var broken map[string]any
	if err := yaml.Unmarshal([]byte(brokenPolicy), &broken); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(gvr["FirewallPolicy"]).Create(ctx, &unstructured.Unstructured{Object: broken},
		metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "Perhaps") {
		t.Errorf("the API server admitted the broken policy: %v", err)
	}

	kc := []string{"--kubeconfig", cluster.Kubeconfig}
	policies := func() map[string]agentapi.Policy {
		t.Helper()
		out, err := run(t, append(kc, "policies", "-o", "json")...)
		if err != nil {
			t.Fatalf("moatctl policies: %v\n%s", err, out)
		}
		var ps []agentapi.Policy
		if err := json.Unmarshal([]byte(out), &ps); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		m := map[string]agentapi.Policy{}
		for _, p := range ps {
			m[p.Name] = p
		}
		return m
	}
	ps := policies()
	if p := ps["payments"]; len(ps) != 2 || p.State != "Pending" || p.Priority != 100 || p.Rules != 4 ||
		strings.Join(p.Namespaces, ",") != "payments" || p.Origin != "kubernetes" {
		t.Errorf("before any enforcer judged them: %+v", ps)
	}
	if p := ps["bad-except"]; p.State != "Invalid" || !strings.Contains(p.Reason, "203.0.113.0/24") ||
		strings.Join(p.Namespaces, ",") != "dev" {
		t.Errorf("bad-except: %+v, want Invalid naming the except", p)
	}

	// what an enforcer writes: Accepted
	pols := dyn.Resource(gvr["FirewallPolicy"])
	u, err := pols.Get(ctx, "payments", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cond := map[string]any{"type": v1alpha1.ConditionAccepted, "status": "True", "reason": v1alpha1.ReasonValid,
		"message": "in force", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		"observedGeneration": u.GetGeneration()}
	if err := unstructured.SetNestedSlice(u.Object, []any{cond}, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	if _, err := pols.UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if p := policies()["payments"]; p.State != "Accepted" || p.Reason != "" {
		t.Errorf("after the enforcer's status: %+v, want Accepted", p)
	}
	out, err := run(t, append(kc, "policies")...)
	if err != nil || !containsRow(out, "payments", "Accepted", "100", "Enforce", "4", "payments") ||
		!containsRow(out, "bad-except", "Invalid", "0", "Enforce", "1", "dev") {
		t.Errorf("policies table (%v):\n%s", err, out)
	}

	// a policy that selects no namespace: noted in both forms, as a warning beside its state
	if _, err := pols.Create(ctx, fromYAMLDoc(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: nobody}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: nowhere}}
  egress: [{action: Deny}]
`), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if p := policies()["nobody"]; len(p.Namespaces) != 0 || len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "selects no namespace") ||
		len(policies()["payments"].Warnings) != 0 {
		t.Errorf("nobody: %+v, want a warning that it selects no namespace (and none for payments)", p)
	}
	out, err = run(t, append(kc, "policies")...)
	if err != nil || !containsRow(out, "nobody", "Pending", "1000", "Enforce", "1", "-", "warning: selects no namespace") {
		t.Errorf("policies table (%v):\n%s", err, out)
	}

	// the report: what the cluster's valid policies and labels allow
	out, err = run(t, append(kc, "report", "--format", "json")...)
	if err != nil {
		t.Fatalf("moatctl report: %v\n%s", err, out)
	}
	var r report.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	byName := map[string]report.Namespace{}
	for _, n := range r.Namespaces {
		byName[n.Name] = n
	}
	a := netip.MustParseAddr
	pay, dev, ops := byName["payments"], byName["dev"], byName["ops"]
	switch {
	case !pay.Egress.Allows("tcp", 443, a("198.51.100.1")) || pay.Egress.Allows("tcp", 80, a("198.51.100.1")):
		t.Errorf("payments egress: %+v", pay.Egress)
	case !pay.Ingress.Allows("tcp", 8443, a("203.0.113.1")) || pay.Ingress.Allows("tcp", 80, a("203.0.113.1")):
		t.Errorf("payments ingress: %+v", pay.Ingress)
	case pay.Metadata.Open != "none" || ops.Metadata.Open != "all" || dev.Metadata.Open != "none":
		t.Errorf("metadata: payments %s, ops %s, dev %s", pay.Metadata.Open, ops.Metadata.Open, dev.Metadata.Open)
	case dev.Egress.Open != "all": // bad-except is invalid, so it denies nothing
		t.Errorf("dev egress: %+v", dev.Egress)
	}
	if _, ok := byName["kube-system"]; !ok {
		t.Errorf("the report leaves out the cluster's own namespaces: %v", r.Namespaces)
	}

	// commands that answer about one node refuse --kubeconfig instead of silently asking the local socket
	for _, cmd := range [][]string{{"status"}, {"endpoints"}, {"flows"}, {"trace", "--from", "dev", "--to", "198.51.100.1:80"}} {
		out, err := run(t, append(kc, cmd...)...)
		if err == nil || !strings.Contains(err.Error(), "drop --kubeconfig") {
			t.Errorf("moatctl --kubeconfig %s: %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
	// a kubeconfig that leads nowhere names itself
	missing := filepath.Join(t.TempDir(), "nope.kubeconfig")
	if out, err := run(t, "--kubeconfig", missing, "policies"); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("a missing kubeconfig: %v\n%s", err, out)
	}
}
