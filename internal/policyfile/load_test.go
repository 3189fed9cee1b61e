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
		{policy("both-peers", "  namespaceSelector: {}\n  egress: [{action: Deny, to: [{cidr: 10.0.0.0/8, namespaceSelector: {}}]}]\n"), "one of them"},
		{policy("fqdn-deny", "  namespaceSelector: {}\n  egress: [{action: Deny, to: [{fqdn: a.example.com}]}]\n"), "egress Allow rules"},
		{policy("fqdn-ingress", "  namespaceSelector: {}\n  ingress: [{action: Allow, from: [{fqdn: a.example.com}]}]\n"), "egress Allow rules"},
		{policy("fqdn-tld", "  namespaceSelector: {}\n  egress: [{action: Allow, to: [{fqdn: '*.com'}]}]\n"), "whole top-level domain"},
		{policy("fqdn-two-wildcards", "  namespaceSelector: {}\n  egress: [{action: Allow, to: [{fqdn: '*.*.example.com'}]}]\n"), "only the first label"},
		{policy("fqdn-underscore", "  namespaceSelector: {}\n  egress: [{action: Allow, to: [{fqdn: a_b.example.com}]}]\n"), "not a letter"},
		{policy("dnsdeny-empty-label", "  namespaceSelector: {}\n  dnsDeny: [a..example.com]\n"), "spec.dnsDeny[0]"},
		{policy("from-in-egress", "  namespaceSelector: {}\n  egress: [{action: Deny, from: []}]\n"), "from is not a field"},
		{policy("bad-mode", "  namespaceSelector: {}\n  mode: Loud\n"), "spec.mode"},
		{policy("bad-selector", "  namespaceSelector: {matchExpressions: [{key: a, operator: Sometimes}]}\n"), "namespaceSelector"},
		{policy("unknown-field", "  namespaceSelector: {}\n  egres: []\n"), "unknown field"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {defaultEgress: Deny, colour: blue}\n", "unknown field"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: other}\nspec: {}\n", "only the FirewallConfig named"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {dns: {answerEventsPerSecond: -1}}\n", "answerEventsPerSecond"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {hostFirewall: {adminCIDRs: [10.0.0.0/33]}}\n", "spec.hostFirewall.adminCIDRs[0]"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {hostFirewall: {overrides: [everything]}}\n", "spec.hostFirewall.overrides[0]"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {hostFirewall: {probationSeconds: 1}}\n", "spec.hostFirewall.probationSeconds"},
		{"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {hostFirewall: {ports: {etcdClient: 0}}}\n", "spec.hostFirewall.ports.etcdClient"},
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

// Two definitions of one object, in two files or in one, are both refused, each problem naming every definition.
func TestLoadDirDuplicates(t *testing.T) {
	dir := t.TempDir()
	pol := "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: same}\nspec: {namespaceSelector: {}}\n"
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: twice}\n"
	other := "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: once}\nspec: {namespaceSelector: {}}\n"
	for name, body := range map[string]string{"a.yaml": pol + "---\n" + other, "b.yml": pol, "c.yaml": ns + "---\n" + ns,
		"c.txt": "ignored", ".hidden.yaml": "ignored"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	objs, problems, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Policies) != 1 || objs.Policies[0].Object.Name != "once" || len(objs.Namespaces) != 0 {
		t.Errorf("policies %+v, namespaces %+v: want only once, no namespace", objs.Policies, objs.Namespaces)
	}
	want := map[string]bool{"a.yaml (document 1)": true, "b.yml (document 1)": true, "c.yaml (document 1)": true, "c.yaml (document 2)": true}
	for _, p := range problems {
		rel := Origin{File: filepath.Base(p.Origin.File), Document: p.Origin.Document}.String()
		if !want[rel] {
			t.Errorf("unexpected problem %v", p)
			continue
		}
		delete(want, rel)
		var names []string
		if p.Kind == "Namespace" {
			names = []string{"c.yaml (document 1)", "c.yaml (document 2)"}
		} else {
			names = []string{"a.yaml (document 1)", "b.yml (document 1)"}
		}
		for _, n := range names {
			if !strings.Contains(p.Error(), n) {
				t.Errorf("%v does not name %s", p, n)
			}
		}
		if !strings.Contains(p.Error(), "defined 2 times") || !strings.Contains(p.Error(), "refused") || p.Corrected {
			t.Errorf("problem %v", p)
		}
	}
	if len(want) != 0 {
		t.Errorf("no problem for %v", want)
	}
	if _, _, err := LoadDir(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("a missing folder loaded")
	}
}

// What was in force stays in force when a second definition appears, as long as its own file still defines it;
// two definitions new at once leave neither in force.
func TestMergeKeeping(t *testing.T) {
	parse := func(file, name, egress string) Objects {
		t.Helper()
		objs, ps := Parse(file, strings.NewReader("apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: "+name+
			"}\nspec: {namespaceSelector: {}, egress: [{action: "+egress+"}]}\n"))
		if len(ps) != 0 {
			t.Fatal(ps)
		}
		return objs
	}
	a, b, c := parse("a.yaml", "x", "Deny"), parse("b.yaml", "x", "Allow"), parse("c.yaml", "x", "Allow")
	before, problems := MergeKeeping(Objects{}, a)
	if len(problems) != 0 || len(before.Policies) != 1 {
		t.Fatalf("a alone: %v %+v", problems, before)
	}
	got, problems := MergeKeeping(before, a, b)
	if len(problems) != 2 || len(got.Policies) != 1 || got.Policies[0].Origin.File != "a.yaml" ||
		got.Policies[0].Object.Spec.Egress[0].Action != "Deny" {
		t.Errorf("a in force, then b: %v %+v, want a's version kept and two problems", problems, got.Policies)
	}
	edited := parse("a.yaml", "x", "Allow") // a edited while b also defines x: the version in force before stays
	if got, _ := MergeKeeping(got, edited, b); len(got.Policies) != 1 || got.Policies[0].Object.Spec.Egress[0].Action != "Deny" {
		t.Errorf("a edited while b defines x too: %+v, want the version in force before", got.Policies)
	}
	if got, problems := MergeKeeping(Objects{}, a, b); len(problems) != 2 || len(got.Policies) != 0 {
		t.Errorf("both new at once: %v %+v, want neither", problems, got.Policies)
	}
	if got, problems := MergeKeeping(before, b, c); len(problems) != 2 || len(got.Policies) != 0 {
		t.Errorf("a's file no longer defines x: %v %+v, want neither of b and c", problems, got.Policies)
	}
	if got, problems := MergeKeeping(got, b); len(problems) != 0 || len(got.Policies) != 1 || got.Policies[0].Origin.File != "b.yaml" {
		t.Errorf("one definition left: %v %+v", problems, got.Policies)
	}
}

// A Namespace carries kubernetes.io/metadata.name with its own name, as the API server sets it; a file that says
// otherwise is corrected and reported, and the rest of the file loads.
func TestNamespaceNameLabel(t *testing.T) {
	objs, problems := Parse("ns.yaml", strings.NewReader(`apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Namespace
metadata: {name: right, labels: {kubernetes.io/metadata.name: right, moat.dev/zone: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: wrong, labels: {kubernetes.io/metadata.name: prod}}
`))
	if len(objs.Namespaces) != 3 {
		t.Fatalf("namespaces %+v", objs.Namespaces)
	}
	for _, n := range objs.Namespaces {
		if got := n.Object.Labels["kubernetes.io/metadata.name"]; got != n.Object.Name {
			t.Errorf("namespace %s: kubernetes.io/metadata.name=%q", n.Object.Name, got)
		}
	}
	if objs.Namespaces[1].Object.Labels["moat.dev/zone"] != "a" {
		t.Errorf("other labels lost: %v", objs.Namespaces[1].Object.Labels)
	}
	if len(problems) != 1 || !problems[0].Corrected || problems[0].Origin.Document != 3 || problems[0].Name != "wrong" ||
		!strings.Contains(problems[0].Error(), `kubernetes.io/metadata.name="prod"`) || Refuses(problems) {
		t.Errorf("problems %v, want one corrected problem about wrong", problems)
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

// The names example loads, and resolves to what it says: fqdn peers and dnsDeny names normalized.
func TestParseNamesExample(t *testing.T) {
	objs, problems := ParseFile("../../examples/names.yaml")
	if len(problems) != 0 {
		t.Fatalf("problems: %v", problems)
	}
	if len(objs.Policies) != 2 {
		t.Fatalf("%d policies, want 2", len(objs.Policies))
	}
	byName := map[string]int{}
	for i, p := range objs.Policies {
		byName[p.Object.Name] = i
	}
	pay := objs.Policies[byName["payments-by-name"]].Object
	if len(pay.Spec.Egress) != 1 || len(pay.Spec.Egress[0].To) != 2 || pay.Spec.Egress[0].To[1].FQDN != "**.s3.amazonaws.com" {
		t.Errorf("payments-by-name: %+v", pay.Spec)
	}
	if deny := objs.Policies[byName["no-trackers"]].Object.Spec.DNSDeny; len(deny) != 3 {
		t.Errorf("no-trackers' dnsDeny: %v", deny)
	}
}
