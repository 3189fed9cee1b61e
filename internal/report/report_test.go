package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/policyfile"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// example is the payments example plus namespaces that show the other answers.
func example(t *testing.T) Input {
	t.Helper()
	objs, problems := policyfile.ParseFile("../../examples/payments.yaml")
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	extra, problems := policyfile.Parse("extra.yaml", bytes.NewReader([]byte(`apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {moat.dev/zone: dev}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {moat.dev/zone: ops, moat.dev/metadata: allow, moat.dev/ingress: Deny}}
`)))
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	merged, _ := policyfile.Merge(objs, extra)
	in := Input{}
	for _, c := range merged.Configs {
		cfg := c.Object
		in.Config = &cfg
	}
	for _, p := range merged.Policies {
		in.Policies = append(in.Policies, p.Object)
	}
	for _, n := range merged.Namespaces {
		in.Namespaces = append(in.Namespaces, n.Object)
	}
	return in
}

func find(t *testing.T, r Report, name string) Namespace {
	t.Helper()
	for _, n := range r.Namespaces {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no namespace %s in the report", name)
	return Namespace{}
}

func TestReportAnswers(t *testing.T) {
	r := Build(example(t))
	pay := find(t, r, "payments")
	a := netip.MustParseAddr
	for _, c := range []struct {
		proto string
		port  uint16
		addr  string
		want  bool
	}{
		{"tcp", 443, "203.0.113.10", true},
		{"tcp", 443, "203.0.113.200", false}, // the except
		{"tcp", 80, "203.0.113.10", false},
		{"udp", 8050, "203.0.113.10", true},
		{"udp", 8101, "203.0.113.10", false},
		{"icmp", 8, "203.0.113.10", true},
		{"47", 0, "203.0.113.10", true},
		{"tcp", 443, "198.51.100.1", false},
		{"tcp", 443, "2001:db8::1", false},
	} {
		if got := pay.Egress.Allows(c.proto, c.port, a(c.addr)); got != c.want {
			t.Errorf("payments egress %s/%d to %s: %v, want %v (%+v)", c.proto, c.port, c.addr, got, c.want, pay.Egress.Grants)
		}
	}
	if pay.Egress.Open != "some" || len(pay.Egress.Policies) != 1 || pay.Egress.Policies[0] != "payments-egress" {
		t.Errorf("payments egress %+v", pay.Egress)
	}
	if pay.Metadata.Open != "none" {
		t.Errorf("payments reaches the metadata API: %+v", pay.Metadata)
	}
	if pay.Ingress.Open != "all" || !pay.Ingress.Allows("tcp", 22, a("203.0.113.5")) { // world ingress defaults to Allow
		t.Errorf("payments ingress %+v", pay.Ingress)
	}
	dev := find(t, r, "dev")
	if dev.Egress.Open != "all" || dev.Metadata.Open != "none" || dev.Ingress.Open != "all" {
		t.Errorf("dev: %+v %+v %+v", dev.Egress, dev.Metadata, dev.Ingress)
	}
	ops := find(t, r, "ops")
	if ops.Metadata.Open != "all" || ops.Ingress.Open != "none" || ops.Ingress.Why() != "denied by the world default, and no rule allows it" {
		t.Errorf("ops: metadata %+v ingress %+v", ops.Metadata, ops.Ingress)
	}
	for _, p := range pay.Peers {
		switch p.Namespace {
		case "shared-services": // the payments rule opens it on its ports
			if p.Open != "some" || !p.Allows("tcp", 443, netip.Addr{}) || p.Allows("tcp", 80, netip.Addr{}) {
				t.Errorf("payments to shared-services: %+v", p.Reach)
			}
		default: // payments' deny to 0.0.0.0/0 covers the pod range, and the answer names it
			if p.Open != "none" || p.Why() != "denied by payments-egress egress[1]" || len(p.Policies) != 1 {
				t.Errorf("payments to %s: %+v", p.Namespace, p.Reach)
			}
		}
	}
}

// A namespace that may reach the metadata API, but whose world egress default is Deny, is told the default that
// denies it, not the metadata API's block.
func TestReportMetadataDeniedByWorldDefault(t *testing.T) {
	objs, problems := policyfile.Parse("closed.yaml", bytes.NewReader([]byte(`apiVersion: v1
kind: Namespace
metadata: {name: closed, labels: {moat.dev/metadata: allow, moat.dev/egress: Deny}}
`)))
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	in := Input{}
	for _, n := range objs.Namespaces {
		in.Namespaces = append(in.Namespaces, n.Object)
	}
	n := find(t, Build(in), "closed")
	const want = "denied by the world default, and no rule allows it"
	if n.Metadata.Open != OpenNone || n.Metadata.Why() != want || n.Egress.Why() != want {
		t.Errorf("metadata %+v (%s), egress %+v (%s)", n.Metadata, n.Metadata.Why(), n.Egress, n.Egress.Why())
	}
}

// What moatctl reads from the enforcer's JSON is the report the enforcer built, and renders the same.
func TestReportJSONRoundTrip(t *testing.T) {
	r := Build(example(t))
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("read back:\n%+v\nbuilt:\n%+v", back, r)
	}
	var md, mdBack bytes.Buffer
	if err := r.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := back.Markdown(&mdBack); err != nil {
		t.Fatal(err)
	}
	if md.String() != mdBack.String() {
		t.Errorf("the report read back renders otherwise:\n%s", mdBack.String())
	}

	// a peer's grants are to its pods, even for a namespace whose name reads as an address range
	var p Peer
	if err := json.Unmarshal([]byte(`{"namespace": "any", "open": "some", "grants": [{"protocol": "tcp", "ports": "443",
		"remote": "any", "policy": "p", "rule": "egress[2]"}]}`), &p); err != nil {
		t.Fatal(err)
	}
	want := Grant{Protocol: 6, Ports: Ports{443, 443}, Remote: Remote{Namespace: "any"}, Rule: RuleKey{Policy: "p", Direction: Egress, Index: 2}}
	if len(p.Grants) != 1 || !reflect.DeepEqual(p.Grants[0], want) || !p.Allows("tcp", 443, netip.Addr{}) {
		t.Errorf("peer read as %+v", p)
	}
	for _, bad := range []string{`{"protocol": "tcp", "ports": "8-1", "remote": "any", "default": "no rule matches; the egress default allows it"}`,
		`{"protocol": "tcp", "ports": "all", "remote": "any", "policy": "p", "rule": "sideways[0]"}`,
		`{"protocol": "tcp", "ports": "all", "remote": "any"}`} {
		var g Grant
		if err := json.Unmarshal([]byte(bad), &g); err == nil {
			t.Errorf("%s read as %+v", bad, g)
		}
	}
}

// The formats against golden files (go test ./internal/report -update rewrites them).
func TestReportFormats(t *testing.T) {
	r := Build(example(t))
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		t.Fatal(err)
	}
	var table, md, page bytes.Buffer
	if err := r.Table(&table); err != nil {
		t.Fatal(err)
	}
	if err := r.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := r.HTML(&page, time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"report.json": js.Bytes(), "report.txt": table.Bytes(), "report.md": md.Bytes(),
		"report.html": page.Bytes()} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./internal/report -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the golden file; run go test ./internal/report -update and review the diff\n%s", name, got)
		}
	}
	if !bytes.Contains(page.Bytes(), []byte("<!DOCTYPE html>")) || bytes.Contains(page.Bytes(), []byte("http://")) ||
		bytes.Contains(page.Bytes(), []byte("https://")) {
		t.Errorf("the HTML page is not one self-contained document")
	}
}
