package enforcer

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
)

// folderNode is an enforcer running on a real policy folder, with the server moatctl asks.
type folderNode struct {
	t    *testing.T
	dir  string
	e    *Enforcer
	srv  *Server
	logs *logtest.Hook
	run  *folderRun
}

func newFolderNode(t *testing.T, files map[string]string) *folderNode {
	t.Helper()
	_, _, e := newTestEnforcer(t)
	logger, hook := logtest.NewNullLogger()
	e.log = logrus.NewEntry(logger)
	n := &folderNode{t: t, dir: t.TempDir(), e: e, logs: hook}
	for name, content := range files {
		write(t, n.dir, name, content)
	}
	n.srv = &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "folder " + n.dir}
	n.run = runFolder(t, e, n.dir, nil)
	n.settle()
	return n
}

// settle waits until the folder as it is now is in force, and returns the problems of its load.
func (n *folderNode) settle() []string {
	n.t.Helper()
	return n.run.settle()
}

func (n *folderNode) write(name, content string) []string {
	n.t.Helper()
	write(n.t, n.dir, name, content)
	return n.settle()
}

func (n *folderNode) remove(name string) []string {
	n.t.Helper()
	if err := os.Remove(filepath.Join(n.dir, name)); err != nil {
		n.t.Fatal(err)
	}
	return n.settle()
}

// policies is what moatctl policies gets, by name.
func (n *folderNode) policies() map[string]agentapi.Policy {
	n.t.Helper()
	return serverPolicies(n.t, n.srv)
}

// serverPolicies is what a server answers moatctl policies, by name.
func serverPolicies(t *testing.T, srv *Server) map[string]agentapi.Policy {
	t.Helper()
	rec := httptest.NewRecorder()
	srv.policies(rec, httptest.NewRequest(http.MethodGet, "/v1/policies", nil))
	var ps []agentapi.Policy
	if err := json.Unmarshal(rec.Body.Bytes(), &ps); err != nil {
		t.Fatalf("policies: %v\n%s", err, rec.Body.String())
	}
	out := map[string]agentapi.Policy{}
	for _, p := range ps {
		out[p.Name] = p
	}
	return out
}

func (n *folderNode) trace(namespace string, port uint16) agentapi.TraceResult {
	n.t.Helper()
	res, err := n.e.Trace(n.srv.Store, agentapi.TraceRequest{Namespace: namespace, Protocol: "tcp", Port: port, Remote: "198.51.100.1"})
	if err != nil {
		n.t.Fatalf("trace %s:%d: %v", namespace, port, err)
	}
	return res
}

// logged counts the log entries at level with a message containing text.
func (n *folderNode) logged(level logrus.Level, text string) int {
	c := 0
	for _, e := range n.logs.AllEntries() {
		if e.Level == level && strings.Contains(e.Message, text) {
			c++
		}
	}
	return c
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// Folder mode: a second definition of a policy in force (another file, or the same file) does not replace it;
// both are problems naming both places, status and policies say which version is in force; two definitions new
// at once leave neither in force.
func TestFolderDuplicatesKeepTheVersionInForce(t *testing.T) {
	n := newFolderNode(t, map[string]string{"base.yaml": baseYAML, "a.yaml": policyYAML("443")})
	if ps := n.policies(); ps["web-out"].State != "Accepted" || !strings.Contains(ps["web-out"].Origin, "a.yaml") {
		t.Fatalf("before: %+v", ps)
	}

	// b.yaml brings another web-out: a.yaml's version stays, and both are problems naming both files
	problems := n.write("b.yaml", policyYAML("80"))
	if len(problems) != 2 {
		t.Fatalf("problems %v, want one for each definition", problems)
	}
	for _, p := range problems {
		if !containsAll(p, "a.yaml (document 1)", "b.yaml (document 1)", `FirewallPolicy "web-out"`, "refused") {
			t.Errorf("problem %q does not name both definitions", p)
		}
	}
	if r := n.trace("web", 443); r.Verdict != "allowed" || r.Policy != "web-out" {
		t.Errorf("a.yaml's version is no longer in force: 443 %+v", r)
	}
	if r := n.trace("web", 80); r.Verdict != "denied" {
		t.Errorf("b.yaml's version took over: 80 %+v", r)
	}
	p := n.policies()["web-out"]
	if p.State != "Invalid" || !strings.Contains(p.Origin, "a.yaml") || !containsAll(p.Reason, "b.yaml", "last good version stays in force") ||
		strings.Join(p.Namespaces, ",") != "web" {
		t.Errorf("policies says %+v, want in force from a.yaml with the problem", p)
	}
	st := n.srv.Status()
	if !st.Ready || st.InvalidPolicies != 2 || !strings.Contains(strings.Join(st.Problems, "\n"), "b.yaml (document 1)") {
		t.Errorf("status %+v", st)
	}

	// editing a.yaml while b.yaml still defines web-out changes nothing in force
	n.write("a.yaml", policyYAML("443", "8443"))
	if r := n.trace("web", 8443); r.Verdict != "denied" {
		t.Errorf("an edit of a definition that is refused went into force: 8443 %+v", r)
	}

	// b.yaml goes: a.yaml's (edited) version is the only one, in force, with no problem
	if problems := n.remove("b.yaml"); len(problems) != 0 {
		t.Errorf("problems %v after the duplicate went", problems)
	}
	if r := n.trace("web", 8443); r.Verdict != "allowed" {
		t.Errorf("a.yaml's edit is not in force once alone: %+v", r)
	}

	// a duplicate inside one file is refused the same way, and the version in force stays
	problems = n.write("a.yaml", policyYAML("443", "8443")+"---\n"+policyYAML("80"))
	if len(problems) != 2 || !containsAll(strings.Join(problems, "\n"), "a.yaml (document 1)", "a.yaml (document 2)") {
		t.Errorf("problems %v, want two naming both documents", problems)
	}
	if r := n.trace("web", 8443); r.Verdict != "allowed" {
		t.Errorf("a duplicate in the same file replaced the version in force: %+v", r)
	}
	if r := n.trace("web", 80); r.Verdict != "denied" {
		t.Errorf("the second document went into force: %+v", r)
	}
}

// Two definitions that are both new (here: an enforcer starting on a folder that already has them) leave neither
// in force; the name is refused and reported.
func TestFolderDuplicatesBothNew(t *testing.T) {
	n := newFolderNode(t, map[string]string{"base.yaml": baseYAML, "a.yaml": policyYAML("443"), "b.yaml": policyYAML("80")})
	for _, port := range []uint16{443, 80} {
		if r := n.trace("web", port); r.Verdict != "denied" || r.Policy != "" {
			t.Errorf("port %d: %+v, want neither definition in force", port, r)
		}
	}
	p, ok := n.policies()["web-out"]
	if !ok || p.State != "Invalid" || strings.Contains(p.Reason, "last good") || !containsAll(p.Reason, "a.yaml", "b.yaml") {
		t.Errorf("policies says %+v, want web-out refused, in force nowhere", p)
	}
	if st := n.srv.Status(); len(st.Problems) != 2 || st.Policies != 0 {
		t.Errorf("status %+v", st)
	}
}

// Folder mode: a Namespace carries kubernetes.io/metadata.name = its name, so a selector by name works as in a
// cluster; a file that sets it to another name is corrected, and reported.
func TestFolderNamespaceNameLabel(t *testing.T) {
	byName := `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: by-name}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: web}}
  egress: [{action: Allow, ports: [{protocol: TCP, port: 8080}]}]
`
	n := newFolderNode(t, map[string]string{"base.yaml": baseYAML, "by-name.yaml": byName})
	if p := n.policies()["by-name"]; strings.Join(p.Namespaces, ",") != "web" || len(p.Warnings) != 0 {
		t.Errorf("by-name selects %v (warnings %v), want web", p.Namespaces, p.Warnings)
	}
	if r := n.trace("web", 8080); r.Verdict != "allowed" || r.Policy != "by-name" {
		t.Errorf("the policy by name is not in force: %+v", r)
	}
	if st := n.srv.Status(); len(st.Problems) != 0 || len(st.Warnings) != 0 {
		t.Errorf("status %+v", st)
	}

	problems := n.write("base.yaml", strings.Replace(baseYAML, "labels: {moat.dev/zone: web}",
		"labels: {moat.dev/zone: web, kubernetes.io/metadata.name: shop}", 1))
	if len(problems) != 1 || !containsAll(problems[0], "base.yaml (document 2)", `Namespace "web"`, `kubernetes.io/metadata.name="shop"`) {
		t.Errorf("problems %v, want one naming the file, the namespace and the label", problems)
	}
	if r := n.trace("web", 8080); r.Verdict != "allowed" {
		t.Errorf("the corrected namespace lost the policy that selects it by name: %+v", r)
	}
	st := n.srv.Status()
	if !strings.Contains(strings.Join(st.Problems, "\n"), "kubernetes.io/metadata.name") {
		t.Errorf("status problems %v do not report the label", st.Problems)
	}
}

// Folder mode: a label value Moat does not know fails closed and is a problem (status, log, not readiness); a
// policy selecting no namespace is a warning (status, policies, log), logged once however often the state is applied.
func TestFolderLabelProblemsAndUnselectedPolicies(t *testing.T) {
	open := `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {defaultEgress: Allow}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {moat.dev/egress: block}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {moat.dev/egress: DENY}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {moat.dev/mode: audit-please, moat.dev/metadata: Allow}}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: typo}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: paymnets}}
  egress: [{action: Deny}]
`
	n := newFolderNode(t, map[string]string{"objects.yaml": open})
	for ns, want := range map[string]string{"shop": "denied", "dev": "denied", "web": "allowed", "ops": "allowed"} {
		if r := n.trace(ns, 443); r.Verdict != want {
			t.Errorf("%s: %+v, want %s", ns, r, want)
		}
	}
	if r, _ := n.e.Trace(n.srv.Store, agentapi.TraceRequest{Namespace: "ops", Protocol: "tcp", Port: 80, Remote: "169.254.169.254"}); r.Verdict != "denied" {
		t.Errorf("moat.dev/metadata=Allow opened the metadata API: %+v", r)
	}
	st := n.srv.Status()
	problems := strings.Join(st.Problems, "\n")
	if len(st.Problems) != 3 || !containsAll(problems, `Namespace shop: label moat.dev/egress="block"`, "denied until it is fixed",
		`Namespace ops: label moat.dev/metadata="Allow"`, `Namespace ops: label moat.dev/mode="audit-please"`) {
		t.Errorf("status problems:\n%s", problems)
	}
	if !st.Ready {
		t.Errorf("a label read on the closed side made the node unready: %+v", st)
	}
	if len(st.Warnings) != 1 || !containsAll(st.Warnings[0], "FirewallPolicy typo", "selects no namespace") {
		t.Errorf("status warnings %v", st.Warnings)
	}
	if p := n.policies()["typo"]; p.State != "Accepted" || len(p.Warnings) != 1 || p.Warnings[0] != "selects no namespace: its rules apply nowhere" {
		t.Errorf("policies: %+v", p)
	}

	// applied again and again (as the Kubernetes source does at every pod event): each is logged once
	for i := 0; i < 3; i++ {
		if err := n.e.Apply(n.e.Snapshot().State); err != nil {
			t.Fatal(err)
		}
	}
	if c := n.logged(logrus.ErrorLevel, `label moat.dev/egress="block"`); c != 1 {
		t.Errorf("the label problem was logged %d times, want once", c)
	}
	if c := n.logged(logrus.WarnLevel, "selects no namespace"); c != 1 {
		t.Errorf("the warning was logged %d times, want once", c)
	}

	// fixed: the problem and the warning go
	fixed := strings.Replace(strings.Replace(strings.Replace(open, "moat.dev/egress: block", "moat.dev/egress: Deny", 1),
		"paymnets", "web", 1), "{moat.dev/mode: audit-please, moat.dev/metadata: Allow}", "{moat.dev/mode: Audit, moat.dev/metadata: allow}", 1)
	fixed = strings.Replace(fixed, "metadata: {name: web}", "metadata: {name: web, labels: {moat.dev/zone: web}}", 1)
	n.write("objects.yaml", fixed)
	if st := n.srv.Status(); len(st.Problems) != 0 || len(st.Warnings) != 0 {
		t.Errorf("after the fix: problems %v, warnings %v", st.Problems, st.Warnings)
	}
	if r := n.trace("shop", 443); r.Verdict != "denied" || r.Reason != "denied-by-default" {
		t.Errorf("shop after Deny: %+v", r)
	}
}
