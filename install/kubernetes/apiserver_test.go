package kubernetes_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	manifests "github.com/moatfw/moat/install/kubernetes"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// systemNodeCritical is the priority of the system-node-critical PriorityClass.
const systemNodeCritical = 2000001000

const serviceAccount = "system:serviceaccount:" + namespace + ":moat-enforcer"

// TestManifestsOnAPIServer creates every object of moat.yaml, then of firewallconfig.yaml, then of uninstall.yaml,
// on a real API server (strict field validation: an unknown or misspelt field is an error), has it admit each
// DaemonSet's pod, checks the enforcer's permissions with SubjectAccessReviews, and has it validate the chart's
// objects under other values.
func TestManifestsOnAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := newApplier(t, c)

	objs := decodeFile(t, manifests.ManifestFile)
	for _, u := range objs {
		if u.GetKind() == "CustomResourceDefinition" {
			a.create(ctx, t, u)
		}
	}
	for _, u := range objs {
		if u.GetKind() == "CustomResourceDefinition" {
			a.waitEstablished(ctx, t, u.GetName())
		}
	}
	a.mapper.Reset() // the new kinds
	for _, u := range objs {
		if u.GetKind() != "CustomResourceDefinition" {
			a.create(ctx, t, u)
		}
	}
	config := decodeFile(t, manifests.ConfigFile)
	for _, u := range config {
		a.create(ctx, t, u)
	}

	t.Run("FirewallConfig kept as written", func(t *testing.T) {
		want := find(t, config, "FirewallConfig", "default")
		got := a.get(ctx, t, want)
		if diff := cmp.Diff(asJSON(t, want.Object["spec"]), asJSON(t, got.Object["spec"])); diff != "" {
			t.Errorf("the API server changed the spec (-sent +stored):\n%s", diff)
		}
	})
	t.Run("FirewallPolicy names", func(t *testing.T) {
		policy := func(spec map[string]any) *unstructured.Unstructured {
			return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "moat.dev/v1alpha1",
				"kind": "FirewallPolicy", "metadata": map[string]any{"name": "names"}, "spec": spec}}
		}
		good := policy(map[string]any{"namespaceSelector": map[string]any{},
			"egress": []any{map[string]any{"action": "Allow", "to": []any{map[string]any{"fqdn": "*.example.com"}},
				"ports": []any{map[string]any{"protocol": "TCP", "port": int64(443)}}}},
			"dnsDeny": []any{"**.bad.example", "tracker.example.org"}})
		if _, err := a.resource(t, good).Create(ctx, good, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			t.Errorf("a policy with an fqdn peer and dnsDeny: %v", err)
		}
		for what, spec := range map[string]map[string]any{
			"fqdn in a Deny rule": {"namespaceSelector": map[string]any{},
				"egress": []any{map[string]any{"action": "Deny", "to": []any{map[string]any{"fqdn": "a.example.com"}}}}},
			"fqdn in an ingress rule": {"namespaceSelector": map[string]any{},
				"ingress": []any{map[string]any{"action": "Allow", "from": []any{map[string]any{"fqdn": "a.example.com"}}}}},
			"fqdn and cidr in one peer": {"namespaceSelector": map[string]any{},
				"egress": []any{map[string]any{"action": "Allow", "to": []any{map[string]any{"fqdn": "a.example.com", "cidr": "198.51.100.0/24"}}}}},
		} {
			u := policy(spec)
			if _, err := a.resource(t, u).Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); !apierrors.IsInvalid(err) {
				t.Errorf("%s: want Invalid, got %v", what, err)
			}
		}
	})
	t.Run("CRD validation is live", func(t *testing.T) {
		// the same object with a name or a value the CRD refuses: proof that the config above met its schema
		for _, mutate := range []func(u *unstructured.Unstructured){
			func(u *unstructured.Unstructured) { u.SetName("other") },
			func(u *unstructured.Unstructured) {
				_ = unstructured.SetNestedField(u.Object, "deny", "spec", "defaultEgress")
			},
			func(u *unstructured.Unstructured) {
				_ = unstructured.SetNestedField(u.Object, []any{"169.254.169.254"}, "spec", "metadataAPI", "addresses")
			},
		} {
			u := find(t, config, "FirewallConfig", "default").DeepCopy()
			mutate(u)
			if _, err := a.resource(t, u).Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); !apierrors.IsInvalid(err) {
				t.Errorf("%v: want Invalid, got %v", u.Object["spec"], err)
			}
		}
	})

	// A pod of each DaemonSet goes through admission (dry run): the service account exists, privileged and
	// hostPath are allowed, system-node-critical resolves outside kube-system.
	a.waitServiceAccount(ctx, t, "default") // the uninstall pod's; the controller manager makes it
	t.Run("moat pod admitted", func(t *testing.T) {
		a.admitPod(ctx, t, find(t, objs, "DaemonSet", "moat"))
	})

	t.Run("enforcer permissions", func(t *testing.T) {
		type access struct {
			verb, group, resource, subresource, namespace string
		}
		allowed := []access{
			{"update", "moat.dev", "firewallpolicies", "status", ""},
			{"patch", "moat.dev", "firewallpolicies", "status", ""},
		}
		for _, r := range []struct{ group, resource string }{
			{"", "namespaces"}, {"", "services"}, {"", "nodes"}, {"networking.k8s.io", "servicecidrs"},
			{"moat.dev", "firewallpolicies"}, {"moat.dev", "firewallconfigs"}, {"moat.dev", "addressslices"},
			{"discovery.k8s.io", "endpointslices"},
		} {
			for _, verb := range []string{"get", "list", "watch"} {
				allowed = append(allowed, access{verb, r.group, r.resource, "", ""})
			}
		}
		allowed = append(allowed, access{"list", "", "services", "", "kube-system"}) // namespaced resources in every namespace
		denied := []access{
			// pods come from the address feed (nodes too, but for the enforcer's own); the feed is the publisher's
			{"list", "", "pods", "", ""},
			{"watch", "", "pods", "", ""},
			{"create", "moat.dev", "addressslices", "", ""},
			{"update", "moat.dev", "addressslices", "", ""},
			{"delete", "moat.dev", "addressslices", "", ""},
			{"update", "moat.dev", "firewallpolicies", "", ""},
			{"patch", "moat.dev", "firewallpolicies", "", ""},
			{"create", "moat.dev", "firewallpolicies", "", ""},
			{"delete", "moat.dev", "firewallpolicies", "", ""},
			{"deletecollection", "moat.dev", "firewallpolicies", "", ""},
			{"update", "moat.dev", "firewallconfigs", "", ""},
			{"patch", "moat.dev", "firewallconfigs", "", ""},
			{"create", "moat.dev", "firewallconfigs", "", ""},
			{"delete", "moat.dev", "firewallconfigs", "", ""},
			{"get", "", "secrets", "", namespace},
			{"list", "", "secrets", "", ""},
			{"get", "", "configmaps", "", "kube-system"},
			{"create", "", "pods", "", namespace},
			{"delete", "", "pods", "", namespace},
			{"create", "", "pods", "exec", namespace},
			{"patch", "", "namespaces", "", ""},
			{"update", "", "namespaces", "", ""},
			{"delete", "", "namespaces", "", ""},
			{"patch", "", "nodes", "", ""},
			{"patch", "", "nodes", "status", ""},
			{"delete", "", "nodes", "", ""},
			{"update", "", "services", "", namespace},
			{"delete", "", "services", "", namespace},
			{"create", "", "serviceaccounts", "token", namespace},
			{"update", "networking.k8s.io", "servicecidrs", "", ""},
			{"update", "apiextensions.k8s.io", "customresourcedefinitions", "", ""},
			{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", ""},
			{"bind", "rbac.authorization.k8s.io", "clusterroles", "", ""},
			{"update", "rbac.authorization.k8s.io", "clusterroles", "", ""},
		}
		check := func(user string, groups []string, r access, want bool) {
			t.Helper()
			sar, err := c.Client().AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
				Spec: authzv1.SubjectAccessReviewSpec{
					User:   user,
					Groups: groups,
					ResourceAttributes: &authzv1.ResourceAttributes{Verb: r.verb, Group: r.group, Resource: r.resource,
						Subresource: r.subresource, Namespace: r.namespace},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed != want {
				t.Errorf("%s: %+v allowed %v, want %v (%s)", user, r, sar.Status.Allowed, want, sar.Status.Reason)
			}
		}
		// the groups a service account's token carries, so what every authenticated user may do counts too
		groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
		for _, r := range allowed {
			check(serviceAccount, groups, r, true)
		}
		for _, r := range denied {
			check(serviceAccount, groups, r, false)
		}
		// the grants are the binding's: the namespace's other service account has none of them
		for _, r := range allowed {
			check("system:serviceaccount:"+namespace+":default", groups, r, false)
		}
		// the feed publisher reads pods and nodes, writes address slices and its Lease, and nothing else
		feedSA := "system:serviceaccount:" + namespace + ":moat-feed"
		for _, r := range []access{{"list", "", "pods", "", ""}, {"watch", "", "pods", "", ""}, {"list", "", "nodes", "", ""},
			{"watch", "", "nodes", "", ""}, {"create", "moat.dev", "addressslices", "", ""}, {"patch", "moat.dev", "addressslices", "", ""},
			{"delete", "moat.dev", "addressslices", "", ""}, {"update", "coordination.k8s.io", "leases", "", namespace}} {
			check(feedSA, groups, r, true)
		}
		for _, r := range []access{{"get", "", "secrets", "", namespace}, {"update", "", "pods", "", namespace},
			{"patch", "", "nodes", "", ""}, {"update", "moat.dev", "firewallpolicies", "status", ""},
			{"update", "coordination.k8s.io", "leases", "", "kube-system"}} {
			check(feedSA, groups, r, false)
		}
	})

	uninstall := decodeFile(t, uninstallFile)
	for _, u := range uninstall {
		a.create(ctx, t, u)
	}
	t.Run("moat-uninstall pod admitted", func(t *testing.T) {
		a.admitPod(ctx, t, find(t, uninstall, "DaemonSet", "moat-uninstall"))
	})

	// The chart under other values: every object (CRDs aside, the same files) passes the API server's validation
	// (a dry-run server-side apply, which takes new and existing objects alike).
	for _, values := range []string{
		"cni: {failPolicy: open, ipamShim: true, binDir: /home/kubernetes/bin}",
		"flowLog: {enabled: true}\nlogLevel: debug",
		"flowLog: {enabled: true, path: '-'}\nmetrics: {enabled: false}",
		"metrics: {address: '[::1]:9600'}",
		"config: {defaultIngress: Deny, defaultEgress: Deny, clusterCIDRs: [10.244.0.0/16, 'fd00:10:244::/56'], metadataAPI: {action: Allow}}",
		"config: {defaultIngress: null, defaultEgress: null, metadataAPI: null, clusterCIDRs: null}",
		"tolerations: []\npriorityClassName: ''\nnodeSelector: {}\nresources: {}",
	} {
		t.Run("chart "+values, func(t *testing.T) {
			objs, _, err := renderChart(values)
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range objs {
				if u.GetKind() != "CustomResourceDefinition" {
					a.dryRunApply(ctx, t, u)
				}
			}
		})
	}
}

// TestKubectlApply runs the commands docs/install.md gives, with kubectl, on a cluster that has never seen Moat:
// install (moat.yaml, which must succeed the first time, then firewallconfig.yaml), then the three steps of
// uninstall.yaml.
func TestKubectlApply(t *testing.T) {
	kubectlPath := filepath.Join(kubetest.BinDir(), "kubectl")
	if _, err := os.Stat(kubectlPath); err != nil {
		t.Fatalf("kubectl missing from %s: run `make kube-bins`", kubetest.BinDir())
	}
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kubectl := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, kubectlPath, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
		return string(out), err
	}
	must := func(args ...string) {
		t.Helper()
		if _, err := kubectl(args...); err != nil {
			t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
		}
	}

	// The first apply on a cluster without the CRDs succeeds and creates every object of moat.yaml (kubectl maps
	// every object's kind before it creates any, so a custom resource in the file would fail it).
	must("apply", "-f", manifests.ManifestFile)
	a := newApplier(t, c)
	for _, u := range decodeFile(t, manifests.ManifestFile) {
		a.get(ctx, t, u)
	}
	// then the FirewallConfig, as docs/install.md says: its CRD may take a moment to be served after the first
	// apply, which a script waits for
	// (and the AddressSlice CRD too, though nothing here creates one: in one CI run under load, the uninstall's
	// delete below timed out after 120 s waiting for that CRD, the only one nothing had waited to be served)
	must("wait", "--for=condition=Established", "--timeout=60s", "crd/firewallpolicies.moat.dev", "crd/firewallconfigs.moat.dev",
		"crd/addressslices.moat.dev")
	must("apply", "-f", manifests.ConfigFile)
	a.mapper.Reset() // discovery ran before the CRDs were served
	cfg := find(t, decodeFile(t, manifests.ConfigFile), "FirewallConfig", "default")
	if diff := cmp.Diff(asJSON(t, cfg.Object["spec"]), asJSON(t, a.get(ctx, t, cfg).Object["spec"])); diff != "" {
		t.Errorf("FirewallConfig after kubectl apply (-file +stored):\n%s", diff)
	}

	// uninstall, step by step as uninstall.yaml's header says
	must("-n", namespace, "delete", "daemonset", "moat")
	must("apply", "-f", uninstallFile)
	if got := a.get(ctx, t, find(t, decodeFile(t, uninstallFile), "DaemonSet", "moat-uninstall")); got.GetNamespace() != namespace {
		t.Errorf("moat-uninstall in %q", got.GetNamespace())
	}
	must("delete", "--ignore-not-found", "--timeout=120s", "-f", uninstallFile, "-f", manifests.ConfigFile, "-f", manifests.ManifestFile)
	for _, name := range []string{"firewallpolicies.moat.dev", "firewallconfigs.moat.dev"} {
		_, err := a.dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("CRD %s after the uninstall: %v", name, err)
		}
	}
	if _, err := c.Client().CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s after the uninstall: %v", namespace, err)
	}
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// applier creates objects of any kind, resolved through discovery.
type applier struct {
	c      *kubetest.Cluster
	dyn    *dynamic.DynamicClient
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t *testing.T, c *kubetest.Cluster) *applier {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{c: c, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

func (a *applier) resource(t *testing.T, u *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	gvk := u.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s: %v", key(u), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			t.Fatalf("%s is namespaced but names no namespace", key(u))
		}
		return a.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	if u.GetNamespace() != "" {
		t.Fatalf("%s is cluster-scoped but names namespace %s", key(u), u.GetNamespace())
	}
	return a.dyn.Resource(m.Resource)
}

func (a *applier) create(ctx context.Context, t *testing.T, u *unstructured.Unstructured) {
	t.Helper()
	if _, err := a.resource(t, u).Create(ctx, u, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}); err != nil {
		t.Fatalf("create %s: %v", key(u), err)
	}
}

func (a *applier) get(ctx context.Context, t *testing.T, u *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	got, err := a.resource(t, u).Get(ctx, u.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get %s: %v", key(u), err)
	}
	return got
}

func (a *applier) dryRunApply(ctx context.Context, t *testing.T, u *unstructured.Unstructured) {
	t.Helper()
	data, err := json.Marshal(u.Object)
	if err != nil {
		t.Fatal(err)
	}
	force := true
	if _, err := a.resource(t, u).Patch(ctx, u.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
		DryRun: []string{metav1.DryRunAll}, FieldManager: "moat-manifests-test", Force: &force,
		FieldValidation: metav1.FieldValidationStrict,
	}); err != nil {
		t.Errorf("apply %s: %v", key(u), err)
	}
}

func (a *applier) waitEstablished(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	a.poll(ctx, t, "CRD "+name+" established", func() bool {
		got, err := a.dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conds {
			if c, ok := c.(map[string]any); ok && c["type"] == "Established" && c["status"] == "True" {
				return true
			}
		}
		return false
	})
}

func (a *applier) waitServiceAccount(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	a.poll(ctx, t, "service account "+namespace+"/"+name, func() bool {
		_, err := a.c.Client().CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		return err == nil
	})
}

func (a *applier) poll(ctx context.Context, t *testing.T, what string, done func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for !done() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// admitPod sends the pod of ds's template through admission (dry run) and checks its priority.
func (a *applier) admitPod(ctx context.Context, t *testing.T, ds *unstructured.Unstructured) {
	t.Helper()
	template := nested[map[string]any](t, ds.Object, "spec", "template")
	pod := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": ds.GetName() + "-admission", "namespace": ds.GetNamespace(), "labels": template["metadata"].(map[string]any)["labels"]},
		"spec":       template["spec"],
	}}
	got, err := a.resource(t, pod).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
	if err != nil {
		t.Fatalf("admit a pod of %s: %v", ds.GetName(), err)
	}
	if prio, _, _ := unstructured.NestedInt64(got.Object, "spec", "priority"); prio != systemNodeCritical {
		t.Errorf("pod of %s has priority %d, want %d (system-node-critical)", ds.GetName(), prio, systemNodeCritical)
	}
}

// asJSON is v as JSON has it: numbers decode as float64 from a file and as int64 from the API server, and compare
// equal only this way.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
