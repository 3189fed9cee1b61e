package enforcer

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// The Kubernetes source against a real API server: a namespace label value Moat does not know fails closed (a
// real pod's world egress is denied) and is a problem in the status; label values are read in any case; a
// FirewallPolicy that selects no namespace is a warning in the status and in policies, until a namespace matches.
func TestKubernetesLabelProblemsAndUnselectedPolicies(t *testing.T) {
	cluster := kubetest.Start(t)
	dyn, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	root, dp, e := newTestEnforcer(t)
	k := &Kubernetes{Config: cluster.Config, NodeName: "node-a", Log: logrus.NewEntry(logrus.New())}
	runSource(t, e, k)
	srv := &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "kubernetes"}

	// the world default is Deny; the namespace's label opens it, in upper case (the baseline: a real pod reaches
	// the world)
	if _, err := dyn.Resource(ConfigsResource).Create(ctx, fromYAML(t,
		"apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {defaultEgress: Deny}\n"),
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{"moat.dev/egress": "ALLOW"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(PoliciesResource).Create(ctx, fromYAML(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: typo}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: paymnets}}
  egress: [{action: Deny, ports: [{protocol: TCP, port: 8443}]}]
`), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var shop uint32
	if !poll(20*time.Second, func() bool {
		id, ok, _ := dp.NamespaceIdentity("shop")
		shop = id
		return ok
	}) {
		t.Fatal("namespace shop never got an identity")
	}
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	testutil.Listen(t, pl.Host, "198.51.100.1:443")
	rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "shop", Pod: "client",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}}
	if err := pl.Host.Do(func(ns.NetNS) error { return guard(dp, rec, shop, root) }); err != nil {
		t.Fatal(err)
	}
	reach := func() bool { return testutil.Exchange(pl.Pod, "198.51.100.1:443", 500*time.Millisecond) == nil }
	status := func() (problems, warnings string, ready bool) {
		st := srv.Status()
		return strings.Join(st.Problems, "\n"), strings.Join(st.Warnings, "\n"), st.Ready
	}
	if !poll(20*time.Second, reach) {
		t.Fatalf("moat.dev/egress=ALLOW did not open the world to shop (the baseline)")
	}
	// the policy may come through the watch a little after the namespace did
	poll(20*time.Second, func() bool {
		_, warnings, _ := status()
		return strings.Contains(warnings, "FirewallPolicy typo: selects no namespace")
	})
	if problems, warnings, _ := status(); problems != "" || !strings.Contains(warnings, "FirewallPolicy typo: selects no namespace") {
		t.Errorf("with ALLOW: problems %q, warnings %q", problems, warnings)
	}
	p := serverPolicies(t, srv)["typo"]
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "selects no namespace") {
		t.Errorf("policies: %+v, want the warning", p)
	}

	patch := func(name, labels string) {
		t.Helper()
		body := fmt.Sprintf(`{"metadata":{"labels":%s}}`, labels)
		if _, err := client.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// the cluster's default opens the world: a value Moat does not know must not
	if _, err := dyn.Resource(ConfigsResource).Patch(ctx, "default", types.MergePatchType,
		[]byte(`{"spec":{"defaultEgress":"Allow"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.state.Config != nil && e.state.Config.Spec.DefaultEgress == "Allow"
	}) {
		t.Fatal("the FirewallConfig edit never reached the enforcer")
	}

	// a value Moat does not know: closed, and a problem that leaves the node ready
	patch("shop", `{"moat.dev/egress":"block"}`)
	if !poll(20*time.Second, func() bool {
		problems, _, _ := status()
		return strings.Contains(problems, `Namespace shop: label moat.dev/egress="block": want Allow or Deny`)
	}) {
		problems, _, _ := status()
		t.Errorf("status problems %q lack the label", problems)
	}
	if reach() {
		t.Errorf("moat.dev/egress=block left the world open")
	}
	if _, _, ready := status(); !ready {
		t.Errorf("a label problem made the node unready")
	}

	// lower-case deny is Deny (over the cluster's Allow), and no problem; a namespace that matches the policy ends
	// its warning
	patch("shop", `{"moat.dev/egress":"deny","moat.dev/zone":"paymnets"}`)
	if !poll(20*time.Second, func() bool { problems, warnings, _ := status(); return problems == "" && warnings == "" }) {
		problems, warnings, _ := status()
		t.Errorf("after fixing both: problems %q, warnings %q", problems, warnings)
	}
	if reach() {
		t.Errorf("moat.dev/egress=deny left the world open")
	}
	if p := serverPolicies(t, srv)["typo"]; len(p.Warnings) != 0 || strings.Join(p.Namespaces, ",") != "shop" {
		t.Errorf("policies: %+v, want shop and no warning", p)
	}
}
