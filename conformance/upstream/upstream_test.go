package upstream

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/moatfw/moat/conformance/images"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

func recordedReport(t *testing.T) Report {
	t.Helper()
	f, err := os.Open("testdata/report.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := ParseReport(f, regexp.MustCompile(Focus), regexp.MustCompile(Skip))
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestParseReport(t *testing.T) {
	rep := recordedReport(t)
	want := []Row{
		{"[sig-network] DNS should provide DNS for services [Conformance]", Passed, "", 14300 * time.Millisecond},
		{"[sig-network] EndpointSlice should support creating EndpointSlice API operations [Conformance]", NotRun,
			"the suite stopped before it", 0},
		{"[sig-network] LoadBalancers should be able to change the type and ports of a TCP service [Slow] [Conformance]",
			Skipped, SkipReason, 0},
		{"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp [LinuxOnly] " +
			"[NodeConformance] [Conformance]", Skipped, "Requires at least 2 nodes (not 1)", 300 * time.Millisecond},
		{"[sig-network] Proxy version v1 should proxy through a service and a pod [Conformance]", Failed,
			"timedout: A spec timeout occurred", 300 * time.Second},
		{"[sig-network] Services should serve a basic endpoint from pods [Conformance]", Failed,
			"failed to validate endpoints for service endpoint-test2 in namespace: services-4021", 62 * time.Second},
	}
	if !slices.Equal(rep.Rows, want) {
		t.Errorf("rows:\n%s\nwant:\n%s", rowsText(rep.Rows), rowsText(want))
	}
	if len(rep.SuiteFailures) != 1 || rep.SuiteFailures[0] != "SynchronizedAfterSuite failed: namespace e2e-tests-x not deleted" {
		t.Errorf("suite failures %q", rep.SuiteFailures)
	}
	if c := rep.Counts(); c[Passed] != 1 || c[Failed] != 2 || c[Skipped] != 2 || c[NotRun] != 1 {
		t.Errorf("counts %v", c)
	}
}

func rowsText(rows []Row) string {
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(r.Name + " | " + string(r.Result) + " | " + r.Reason + " | " + r.Duration.String() + "\n")
	}
	return b.String()
}

func TestParseReportErrors(t *testing.T) {
	focus := regexp.MustCompile(Focus)
	for _, in := range []string{"", "{}", "[]", `[{"SpecReports":[{"LeafNodeType":"It","LeafNodeText":"[sig-network] x [Conformance]","State":"weird"}]}]`} {
		if _, err := ParseReport(strings.NewReader(in), focus, nil); err == nil {
			t.Errorf("ParseReport(%q) took it", in)
		}
	}
}

func TestRenderMarkdown(t *testing.T) {
	base := recordedReport(t)
	base.Elapsed = 190 * time.Second
	// With Moat: the DNS test fails (a rule), the Services test passes.
	moat := Report{Rows: slices.Clone(base.Rows)}
	moat.Rows[0] = Row{Name: moat.Rows[0].Name, Result: Failed, Reason: "dig | timed out\nline 2"}
	moat.Rows[5] = Row{Name: moat.Rows[5].Name, Result: Passed}
	moat.Rows = moat.Rows[:5] // the Services test was not in this pass
	var b bytes.Buffer
	err := RenderMarkdown(&b, "Two nodes.", []Pass{
		{Title: "without Moat", About: "plain cluster", Report: base},
		{Title: "Moat | default", Report: moat, Why: map[string]string{moat.Rows[0].Name: "rule x denies it"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	for _, s := range []string{
		"# Kubernetes' networking conformance with Moat\n\nTwo nodes.\n",
		"| without Moat | 1 | 2 | 2 | 1 | 3m10s |",
		"| Moat \\| default | 0 | 2 | 2 | 1 | 0s |",
		"- **without Moat**: plain cluster\n",
		"| # | test | without Moat | Moat \\| default |\n| ---: | --- | --- | --- |\n",
		"| 1 | [sig-network] DNS should provide DNS for services [Conformance] | passed | failed [1] |\n",
		"| 6 | [sig-network] Services should serve a basic endpoint from pods [Conformance] | failed [10] | not in this pass |",
		"1. Moat | default, [sig-network] DNS should provide DNS for services [Conformance]: dig | timed out line 2 " +
			"**Why:** rule x denies it\n",
		"[sig-network] Proxy version v1 should proxy through a service and a pod [Conformance]: timedout: A spec " +
			"timeout occurred (failed in \"without Moat\" too)\n",
		"## Passing in \"without Moat\", not in another pass\n\n- Moat | default: [sig-network] DNS should provide DNS for services [Conformance] (failed)\n",
		"## Failures of the suite's setup or teardown\n\n- without Moat: SynchronizedAfterSuite failed: namespace e2e-tests-x not deleted\n",
	} {
		if !strings.Contains(doc, s) {
			t.Errorf("the document lacks %q:\n%s", s, doc)
		}
	}
	if err := RenderMarkdown(&b, "", nil); err == nil {
		t.Error("no pass: no error")
	}
}

func TestArgs(t *testing.T) {
	o := Options{E2E: "/cache/bin/e2e.test", Kubeconfig: "/k/admin.conf", ReportDir: "/r", DryRun: true,
		Extra: []string{"--ginkgo.v"}}
	args := o.Args()
	for _, a := range []string{"--provider=local", `--ginkgo.focus=\[sig-network\].*\[Conformance\]`,
		"--ginkgo.skip=LoadBalancer|\\[Feature:", "--ginkgo.json-report=/r/report.json", "--kubeconfig=/k/admin.conf",
		"--kubectl-path=/cache/bin/kubectl", "--dns-domain=cluster.local", "--ginkgo.dry-run", "--ginkgo.timeout=3h0m0s"} {
		if !slices.Contains(args, a) {
			t.Errorf("args %q lack %q", args, a)
		}
	}
	if args[len(args)-1] != "--ginkgo.v" {
		t.Errorf("extra flags not last: %q", args)
	}
	env := o.Env()
	if !slices.Contains(env, "KUBERNETES_CONFORMANCE_TEST=y") || !slices.Contains(env, "KUBECONFIG=/k/admin.conf") {
		t.Errorf("env lacks the conformance variables")
	}
}

// fakeE2E is a shell script in place of e2e.test: it checks its flags and environment, writes the recorded
// report where --ginkgo.json-report says (unless told not to) and exits 1, as the binary does when a test fails.
func fakeE2E(t *testing.T, writeReport bool) string {
	t.Helper()
	report, err := filepath.Abs("testdata/report.json")
	if err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
[ "$KUBERNETES_CONFORMANCE_TEST" = y ] || { echo "no KUBERNETES_CONFORMANCE_TEST" >&2; exit 3; }
for a in "$@"; do
	case "$a" in --ginkgo.json-report=*) out=${a#--ginkgo.json-report=} ;; esac
done
echo "running $#"
`
	if writeReport {
		script += "cp '" + report + "' \"$out\"\n"
	}
	script += "exit 1\n"
	path := filepath.Join(t.TempDir(), "e2e.test")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRun(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var out bytes.Buffer
	rep, err := Run(ctx, Options{E2E: fakeE2E(t, true), Kubeconfig: "/nowhere", ReportDir: dir, Output: &out})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ExitStatus != 1 || len(rep.Rows) != 6 || rep.Elapsed <= 0 {
		t.Errorf("exit status %d, %d rows, elapsed %v", rep.ExitStatus, len(rep.Rows), rep.Elapsed)
	}
	if log, err := os.ReadFile(filepath.Join(dir, LogFile)); err != nil || !strings.HasPrefix(string(log), "running ") ||
		!strings.HasPrefix(out.String(), "running ") {
		t.Errorf("log %q (%v), output %q", log, err, out.String())
	}

	names, err := List(ctx, Options{E2E: fakeE2E(t, true), ReportDir: t.TempDir()})
	if err != nil || !slices.Equal(names, []string{"[sig-network] DNS should provide DNS for services [Conformance]"}) {
		t.Errorf("List: %q, %v", names, err)
	}

	_, err = Run(ctx, Options{E2E: fakeE2E(t, false), Kubeconfig: "/nowhere", ReportDir: dir})
	if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), LogFile) {
		t.Errorf("no report: %v", err)
	}
	if _, err := Run(ctx, Options{E2E: "/bin/true", ReportDir: dir}); err == nil {
		t.Error("a run without a kubeconfig: no error")
	}
}

func TestCoreDNSManifest(t *testing.T) {
	_, svcRange, err := net.ParseCIDR(kubetest.ServiceClusterIPRange)
	if err != nil {
		t.Fatal(err)
	}
	if !svcRange.Contains(net.ParseIP(ClusterDNSIP)) {
		t.Errorf("ClusterDNSIP %s is outside the API server's service range %s", ClusterDNSIP, svcRange)
	}
	for _, upstreams := range [][]string{nil, {"192.0.2.53", "/etc/resolv.conf"}} {
		doc, err := CoreDNSManifest(CoreDNS{Upstreams: upstreams})
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		var svc *corev1.Service
		var dep *appsv1.Deployment
		var cm *corev1.ConfigMap
		for _, part := range strings.Split(doc, "\n---\n") {
			obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(part), nil, nil)
			if err != nil {
				t.Fatalf("decode %q: %v", part, err)
			}
			kinds = append(kinds, gvk.Kind)
			switch o := obj.(type) {
			case *corev1.Service:
				svc = o
			case *appsv1.Deployment:
				dep = o
			case *corev1.ConfigMap:
				cm = o
			}
			if m, ok := obj.(interface{ GetNamespace() string }); ok && gvk.Kind != "ClusterRole" &&
				gvk.Kind != "ClusterRoleBinding" && m.GetNamespace() != "kube-system" {
				t.Errorf("%s in namespace %q", gvk.Kind, m.GetNamespace())
			}
		}
		if want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
			"Service"}; !slices.Equal(kinds, want) {
			t.Errorf("kinds %q, want %q", kinds, want)
		}
		if svc.Name != "kube-dns" || svc.Spec.ClusterIP != ClusterDNSIP || len(svc.Spec.Ports) != 3 {
			t.Errorf("service %s %s %v", svc.Name, svc.Spec.ClusterIP, svc.Spec.Ports)
		}
		c := dep.Spec.Template.Spec.Containers[0]
		if c.Image != images.CoreDNSRef || *dep.Spec.Replicas != 2 || dep.Spec.Template.Labels["k8s-app"] != "kube-dns" {
			t.Errorf("deployment image %s replicas %d labels %v", c.Image, *dep.Spec.Replicas, dep.Spec.Template.Labels)
		}
		corefile := cm.Data["Corefile"]
		if !strings.Contains(corefile, "kubernetes cluster.local in-addr.arpa ip6.arpa {") {
			t.Errorf("Corefile lacks the kubernetes plugin:\n%s", corefile)
		}
		if hasForward := strings.Contains(corefile, "forward . 192.0.2.53 /etc/resolv.conf {"); hasForward != (upstreams != nil) {
			t.Errorf("upstreams %q, Corefile:\n%s", upstreams, corefile)
		}
	}
	for _, bad := range []CoreDNS{{ClusterIP: "10.96.0"}, {Upstreams: []string{"dns.example"}}, {Replicas: -1},
		{Image: "a b"}} {
		if _, err := CoreDNSManifest(bad); err == nil {
			t.Errorf("CoreDNSManifest(%+v) took it", bad)
		}
	}
}

// TestDryRun lists the focus with the real e2e binary when `make conformance-bins` has built it: the 47
// [sig-network] conformance tests of Kubernetes v1.37.2, none left out by Skip.
func TestDryRun(t *testing.T) {
	e2e := filepath.Join(kubetest.BinDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		t.Skipf("no e2e binary (make conformance-bins): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	names, err := List(ctx, Options{E2E: e2e, ReportDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	focus := regexp.MustCompile(Focus)
	for _, n := range names {
		if !focus.MatchString(n) {
			t.Errorf("listed %q, outside the focus", n)
		}
	}
	if len(names) != 47 || !slices.Contains(names, "[sig-network] DNS should provide DNS for services [Conformance]") {
		t.Errorf("%d tests listed, want v1.37.2's 47:\n%s", len(names), strings.Join(names, "\n"))
	}
}

// apiTests are the seven tests APIFocus selects in v1.37.2.
var apiTests = []string{
	"[sig-network] EndpointSlice should support creating EndpointSlice API operations [Conformance]",
	"[sig-network] Ingress API should support creating Ingress API operations [Conformance]",
	"[sig-network] IngressClass API should support creating IngressClass API operations [Conformance]",
	"[sig-network] ServiceCIDR and IPAddress API should support IPAddress API operations [Conformance]",
	"[sig-network] ServiceCIDR and IPAddress API should support ServiceCIDR API operations [Conformance]",
	"[sig-network] Services should delete a collection of services [Conformance]",
	"[sig-network] Services should find a service from listing all namespaces [Conformance]",
}

// TestParseRecordedRun reads the report of a real run (TestRunAgainstAPIServer's, cut down to its focused tests,
// three others and the suite's nodes).
func TestParseRecordedRun(t *testing.T) {
	f, err := os.Open("testdata/apiserver-run.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := ParseReport(f, regexp.MustCompile(Focus), regexp.MustCompile(Skip))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rep.Rows {
		names = append(names, r.Name)
		if r.Result != Passed || r.Reason != "" || r.Duration <= 0 {
			t.Errorf("%s: %s %q %v, want passed", r.Name, r.Result, r.Reason, r.Duration)
		}
	}
	if !slices.Equal(names, apiTests) || len(rep.SuiteFailures) != 0 {
		t.Errorf("rows %q, suite failures %q", names, rep.SuiteFailures)
	}
}

// TestRunAgainstAPIServer runs the real e2e binary's API-only tests against a bare control plane, when
// `make conformance-bins` has built it.
func TestRunAgainstAPIServer(t *testing.T) {
	e2e := filepath.Join(kubetest.BinDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		t.Skipf("no e2e binary (make conformance-bins): %v", err)
	}
	if testing.Short() {
		t.Skip("starts an API server")
	}
	c := kubetest.Start(t, kubetest.WithControllers("*"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	rep, err := Run(ctx, Options{E2E: e2e, Kubeconfig: c.Kubeconfig, ReportDir: dir, Focus: APIFocus,
		Extra: []string{"--allowed-not-ready-nodes=-1", "--num-nodes=1"}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rep.Rows {
		names = append(names, r.Name)
		if r.Result != Passed {
			t.Errorf("%s: %s: %s", r.Name, r.Result, r.Reason)
		}
	}
	if !slices.Equal(names, apiTests) || rep.ExitStatus != 0 || len(rep.SuiteFailures) != 0 {
		log, _ := os.ReadFile(filepath.Join(dir, LogFile))
		t.Errorf("rows %q, exit status %d, suite failures %q; log:\n%s", names, rep.ExitStatus, rep.SuiteFailures, log)
	}
}

func TestShard(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	got := Shard(names, 2)
	if len(got) != 2 || strings.Join(got[0], ",") != "a,c,e" || strings.Join(got[1], ",") != "b,d" {
		t.Errorf("Shard(5 names, 2) = %q", got)
	}
	if got := Shard(names[:1], 3); len(got) != 1 {
		t.Errorf("Shard(1 name, 3) = %q, want one group", got)
	}
	focus := regexp.MustCompile(FocusOn([]string{"[sig-network] DNS x [Conformance]", "b.c"}))
	for s, want := range map[string]bool{"[sig-network] DNS x [Conformance]": true, "b.c": true, "bxc": false,
		"[sig-network] DNS y [Conformance]": false} {
		if focus.MatchString(s) != want {
			t.Errorf("FocusOn matches %q: %v, want %v", s, !want, want)
		}
	}
}

// TestFocusOnWithTheBinary checks that the binary's focus, given FocusOn of three listed names, selects exactly
// them (the names are the text Ginkgo matches), when `make conformance-bins` has built it.
func TestFocusOnWithTheBinary(t *testing.T) {
	e2e := filepath.Join(kubetest.BinDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		t.Skipf("no e2e binary (make conformance-bins): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	names, err := List(ctx, Options{E2E: e2e, ReportDir: t.TempDir()})
	if err != nil || len(names) < 3 {
		t.Fatalf("%d names, %v", len(names), err)
	}
	for _, a := range names {
		for _, b := range names {
			if a != b && strings.Contains(b, a) {
				t.Errorf("%q is inside %q: FocusOn(%[1]q) would select both", a, b)
			}
		}
	}
	want := []string{names[0], names[len(names)/2], names[len(names)-1]}
	got, err := List(ctx, Options{E2E: e2e, ReportDir: t.TempDir(), Focus: FocusOn(want)})
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("FocusOn(%q) selects %q (%v)", want, got, err)
	}
}

// TestSubsetTests checks that every test of the e2e suite's subset is one of the pass's, when `make
// conformance-bins` has built the binary: a name that changed would select nothing.
func TestSubsetTests(t *testing.T) {
	e2e := filepath.Join(kubetest.BinDir(), "e2e.test")
	if _, err := os.Stat(e2e); err != nil {
		t.Skipf("no e2e binary (make conformance-bins): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	got, err := List(ctx, Options{E2E: e2e, ReportDir: t.TempDir(), Focus: FocusOn(SubsetTests)})
	want := slices.Sorted(slices.Values(SubsetTests))
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("the subset selects %q (%v), want %q", got, err, want)
	}
	for _, name := range apiTests {
		if !slices.Contains(SubsetTests, name) {
			t.Errorf("the subset lacks the API test %q", name)
		}
	}
}
