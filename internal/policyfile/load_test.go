package policyfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseExample(t *testing.T) {
	f, err := os.Open("../../examples/payments.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	objs, problems := Parse("payments.yaml", f)
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	if len(objs.Configs) != 1 || len(objs.Policies) != 1 || len(objs.Namespaces) != 2 {
		t.Fatalf("objects: %d configs, %d policies, %d namespaces", len(objs.Configs), len(objs.Policies), len(objs.Namespaces))
	}
	p := objs.Policies[0]
	if p.Origin.Document != 2 || p.Object.Name != "payments-egress" || len(p.Object.Spec.Egress) != 2 ||
		len(p.Object.Spec.Egress[0].Ports) != 4 || *p.Object.Spec.Priority != 100 {
		t.Errorf("policy %+v", p)
	}
	if objs.Namespaces[1].Object.Labels["moat.dev/zone"] != "shared" {
		t.Errorf("namespace %+v", objs.Namespaces[1])
	}
}

// Every bad document is reported with file, document, kind and name; the good ones load anyway.
func TestParseProblems(t *testing.T) {
	policy := func(name, body string) string {
		return "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: " + name + "}\nspec:\n" + body
	}
	docs := []struct {
		yaml string
		want string // in the problem; "" = loads
	}{
		{policy("good", "  namespaceSelector: {}\n  egress: [{action: Deny}]\n"), ""},
		{policy("no-selector", "  egress: [{action: Deny}]\n"), "spec.namespaceSelector: missing"},
		{policy("bad-cidr", "  namespaceSelector: {}\n  egress: [{action: Deny, to: [{cidr: 10.0.0.0/33}]}]\n"), "cidr"},
		{policy("bad-except", "  namespaceSelector: {}\n  egress: [{action: Deny, to: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]\n"), "not strictly inside"},
		{policy("bad-action", "  namespaceSelector: {}\n  egress: [{action: Maybe}]\n"), "want Allow or Deny"},
		{policy("bad-port", "  namespaceSelector: {}\n  egress: [{action: Deny, ports: [{protocol: TCP, port: 70000}]}]\n"), "port 70000"},
		{policy("bad-range", "  namespaceSelector: {}\n  egress: [{action: Deny, ports: [{protocol: UDP, port: 9, endPort: 8}]}]\n"), "endPort 8"},
		{policy("icmp-port", "  namespaceSelector: {}\n  egress: [{action: Deny, ports: [{protocol: ICMP, port: 8}]}]\n"), "use icmpType"},
		{policy("bad-proto", "  namespaceSelector: {}\n  egress: [{action: Deny, ports: [{protocol: QUIC}]}]\n"), "protocol \"QUIC\""},
		{policy("both-peers", "  namespaceSelector: {}\n  egress: [{action: Deny, to: [{cidr: 10.0.0.0/8, namespaceSelector: {}}]}]\n"), "not both"},
		{policy("from-in-egress", "  namespaceSelector: {}\n  egress: [{action: Deny, from: []}]\n"), "from is not a field"},
		{policy("bad-mode", "  namespaceSelector: {}\n  mode: Loud\n"), "spec.mode"},
		{policy("bad-selector", "  namespaceSelector: {matchExpressions: [{key: a, operator: Sometimes}]}\n"), "namespaceSelector"},
		{policy("unknown-field", "  namespaceSelector: {}\n  egres: []\n"), "unknown field"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {defaultEgress: Deny, colour: blue}\n", "unknown field"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: other}\nspec: {}\n", "only the FirewallConfig named"},
		{"apiVersion: moat.dev/v1\nkind: FirewallPolicy\nmetadata: {name: x}\n", "apiVersion"},
		{"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "kind \"ConfigMap\""},
		{"just a string\n", "not a YAML object"},
		{"# only a comment\n", ""},
		{"apiVersion: v1\nkind: Namespace\nmetadata: {name: team, labels: {moat.dev/zone: a}}\nspec: {finalizers: [kubernetes]}\n", ""},
	}
	var b strings.Builder
	for i, d := range docs {
		if i > 0 {
			b.WriteString("---\n")
		}
		b.WriteString(d.yaml)
	}
	objs, problems := Parse("policies.yaml", strings.NewReader(b.String()))
	byDoc := map[int]Problem{}
	for _, p := range problems {
		byDoc[p.Origin.Document] = p
	}
	for i, d := range docs {
		p, bad := byDoc[i+1]
		switch {
		case d.want == "" && bad:
			t.Errorf("document %d: unexpected problem %v", i+1, p)
		case d.want != "" && !bad:
			t.Errorf("document %d: no problem, want one with %q", i+1, d.want)
		case d.want != "" && !strings.Contains(p.Error(), d.want):
			t.Errorf("document %d: %v, want it to say %q", i+1, p, d.want)
		case d.want != "" && !strings.Contains(p.Error(), "policies.yaml (document"):
			t.Errorf("document %d: %v does not name the file and document", i+1, p)
		}
	}
	if len(objs.Policies) != 1 || len(objs.Namespaces) != 1 {
		t.Errorf("loaded %d policies and %d namespaces, want the good ones (1, 1)", len(objs.Policies), len(objs.Namespaces))
	}
	if p := byDoc[2]; !strings.Contains(p.Error(), `FirewallPolicy "no-selector"`) {
		t.Errorf("problem does not name the object: %v", p)
	}
}

func TestLoadDirDuplicates(t *testing.T) {
	dir := t.TempDir()
	pol := "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: same}\nspec: {namespaceSelector: {}}\n"
	for name, body := range map[string]string{"a.yaml": pol, "b.yml": pol, "c.txt": "ignored", ".hidden.yaml": "ignored"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	objs, problems, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Policies) != 1 || !strings.HasSuffix(objs.Policies[0].Origin.File, "a.yaml") {
		t.Errorf("policies %+v, want the first one, from a.yaml", objs.Policies)
	}
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "already defined in") {
		t.Errorf("problems %v, want one duplicate", problems)
	}
	if _, _, err := LoadDir(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("a missing folder loaded")
	}
}

// FuzzParse: any file content gives objects and problems, never a panic, and every problem names its file.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../../examples/payments.yaml"); err == nil {
		f.Add(string(data))
	}
	f.Add("---\n---\n")
	f.Add("apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: x}\nspec: {namespaceSelector: {}, egress: [{action: Allow, to: [], ports: [{protocol: '47'}]}]}\n")
	f.Add("kind: [\n")
	f.Add("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {moat.dev/mode: Audit}}\n")
	f.Fuzz(func(t *testing.T, content string) {
		objs, problems := Parse("fuzz.yaml", strings.NewReader(content))
		for _, p := range problems {
			if p.Origin.File != "fuzz.yaml" || p.Err == nil {
				t.Fatalf("problem without origin or error: %+v", p)
			}
		}
		for _, p := range objs.Policies {
			if errs := p.Object.Validate(); len(errs) != 0 {
				t.Fatalf("loaded an invalid policy: %v", errs)
			}
		}
	})
}
