package enforcer

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// installCRDs creates Moat's CRDs from install/kubernetes/crds and waits until the API server serves them.
// clients are the dynamic and typed clients of a test's API server.
func clients(tb testing.TB, config *rest.Config) (*dynamic.DynamicClient, *kubernetes.Clientset) {
	tb.Helper()
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		tb.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		tb.Fatal(err)
	}
	return dyn, client
}

func installCRDs(t testing.TB, cluster *kubetest.Cluster) {
	t.Helper()
	files, err := filepath.Glob("../../install/kubernetes/crds/*.yaml")
	if err != nil || len(files) != 3 {
		t.Fatalf("CRD files: %v %v", files, err)
	}
	if err := cluster.InstallCRDs(context.Background(), files...); err != nil {
		t.Fatal(err)
	}
}

// runSource runs e on src until the test ends, and waits for it to stop before the datapath closes.
func runSource(t *testing.T, e *Enforcer, src Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := e.Run(ctx, src, nil); err != nil {
			t.Errorf("%s source: %v", src.Name(), err)
		}
	}()
	t.Cleanup(func() { cancel(); <-stopped })
}

func poll(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

func fromYAML(t testing.TB, s string) *unstructured.Unstructured {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(s), &obj); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// The Kubernetes source against a real API server: the CRDs refuse bad policies at admission; policies, the
// config and namespace labels drive a real pod's traffic; status conditions are written back; pods, Services and
// nodes of the cluster land in the ipcache; a deleted namespace releases its identity.
func TestKubernetesSource(t *testing.T) {
	cluster := kubetest.Start(t)
	dyn, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	policies := dyn.Resource(PoliciesResource)
	configs := dyn.Resource(ConfigsResource)

	t.Run("admission", func(t *testing.T) {
		head := "apiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: bad}\n"
		for _, tc := range []struct{ name, body, want string }{
			{"cidr", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, to: [{cidr: 10.0.0.0/33}]}]", "cidr"},
			{"port", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, ports: [{protocol: TCP, port: 70000}]}]", "65535"},
			{"action", "spec:\n  namespaceSelector: {}\n  egress: [{action: Perhaps}]", "Perhaps"},
			{"mode", "spec:\n  namespaceSelector: {}\n  mode: Loud", "Loud"},
			{"both peers", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, to: [{cidr: 10.0.0.0/8, namespaceSelector: {}}]}]", "exactly one"},
			{"icmp port", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, ports: [{protocol: ICMP, port: 8}]}]", "only TCP, UDP and SCTP"},
			{"protocol", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, ports: [{protocol: QUIC}]}]", "want TCP"},
			{"endPort", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, ports: [{protocol: TCP, port: 90, endPort: 80}]}]", "endPort"},
			{"from in egress", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, from: [{cidr: 10.0.0.0/8}]}]", "egress rules"},
			{"no selector", "spec:\n  egress: [{action: Allow}]", "namespaceSelector"},
			{"fqdn in a Deny", "spec:\n  namespaceSelector: {}\n  egress: [{action: Deny, to: [{fqdn: a.example.com}]}]", "fqdn peers belong to Allow rules"},
			{"fqdn in ingress", "spec:\n  namespaceSelector: {}\n  ingress: [{action: Allow, from: [{fqdn: a.example.com}]}]", "fqdn is an egress peer"},
			{"fqdn and cidr", "spec:\n  namespaceSelector: {}\n  egress: [{action: Allow, to: [{fqdn: a.example.com, cidr: 10.0.0.0/8}]}]", "exactly one"},
		} {
			_, err := policies.Create(ctx, fromYAML(t, head+tc.body), metav1.CreateOptions{})
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want it refused as invalid naming %q", tc.name, err, tc.want)
			}
		}
		_, err := configs.Create(ctx, fromYAML(t, "apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: other}\n"), metav1.CreateOptions{})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "name it default") {
			t.Errorf("a FirewallConfig not named default: %v", err)
		}
	})

	root, dp, e := newTestEnforcer(t)
	k := &Kubernetes{Config: cluster.Config, NodeName: "node-a", Log: logrus.NewEntry(logrus.New())}
	applied := make(chan struct{}, 100)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := e.Run(ctx, k, func() {
			select {
			case applied <- struct{}{}:
			default:
			}
		}); err != nil {
			t.Errorf("kubernetes source: %v", err)
		}
	}()
	defer func() { cancel(); <-stopped }() // the source applies no more once the datapath closes

	mustCreate := func(res dynamic.ResourceInterface, y string) {
		t.Helper()
		if _, err := res.Create(ctx, fromYAML(t, y), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web",
		Labels: map[string]string{v1alpha1.LabelZone: "web"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCreate(configs, "apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {defaultEgress: Deny}\n")
	mustCreate(policies, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: web-out}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: web}}
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.0/24}]
    ports: [{protocol: TCP, port: 443}]
`)
	var web uint32
	if !poll(20*time.Second, func() bool {
		id, ok, _ := dp.NamespaceIdentity("web")
		web = id
		return ok
	}) {
		t.Fatal("namespace web never got an identity")
	}

	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	for _, addr := range []string{"198.51.100.1:443", "198.51.100.1:80"} {
		testutil.Listen(t, pl.Host, addr)
	}
	rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web", Pod: "client",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}}
	if err := pl.Host.Do(func(ns.NetNS) error { return guard(dp, rec, web, root) }); err != nil {
		t.Fatal(err)
	}
	reach := func(addr string) bool { return testutil.Exchange(pl.Pod, addr, 500*time.Millisecond) == nil }
	if !poll(20*time.Second, func() bool { return reach("198.51.100.1:443") && !reach("198.51.100.1:80") }) {
		t.Fatalf("policy from the API server: 443 %v, 80 %v; want only 443", reach("198.51.100.1:443"), reach("198.51.100.1:80"))
	}

	accepted := func(name string) *metav1.Condition {
		u, err := policies.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		var p v1alpha1.FirewallPolicy
		if err := fromUnstructured(u, &p); err != nil {
			return nil
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		if c != nil && c.ObservedGeneration != p.Generation {
			return nil // not about this version yet
		}
		return c
	}
	if !poll(20*time.Second, func() bool { c := accepted("web-out"); return c != nil && c.Status == metav1.ConditionTrue }) {
		t.Errorf("web-out never got Accepted=True: %+v", accepted("web-out"))
	}

	// a namespace label re-decides running pods' traffic
	patch := func(name, labels string) {
		t.Helper()
		body := fmt.Sprintf(`{"metadata":{"labels":%s}}`, labels)
		if _, err := client.CoreV1().Namespaces().Patch(ctx, name, types.MergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	patch("web", `{"moat.dev/egress":"Allow"}`)
	if !poll(20*time.Second, func() bool { return reach("198.51.100.1:80") }) {
		t.Errorf("labelling web moat.dev/egress=Allow did not open port 80")
	}
	patch("web", `{"moat.dev/egress":null}`)
	if !poll(20*time.Second, func() bool { return !reach("198.51.100.1:80") }) {
		t.Errorf("removing the label left port 80 open")
	}

	// an edit the schema lets through but the enforcer refuses: Invalid, and the last good version stays
	u, err := policies.Get(ctx, "web-out", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	egress, _, _ := unstructured.NestedSlice(u.Object, "spec", "egress")
	rule := egress[0].(map[string]any)
	rule["to"] = []any{map[string]any{"cidr": "198.51.100.0/24", "except": []any{"203.0.113.0/24"}}}
	rule["ports"] = []any{map[string]any{"protocol": "TCP", "port": int64(80)}}
	_ = unstructured.SetNestedSlice(u.Object, egress, "spec", "egress")
	if _, err := policies.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool {
		c := accepted("web-out")
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == v1alpha1.ReasonInvalid &&
			strings.Contains(c.Message, "203.0.113.0/24") && strings.Contains(c.Message, "last good")
	}) {
		t.Errorf("an invalid edit: condition %+v, want Accepted=False Invalid naming the except", accepted("web-out"))
	}
	if !reach("198.51.100.1:443") || reach("198.51.100.1:80") {
		t.Errorf("an invalid edit changed traffic: 443 %v, 80 %v", reach("198.51.100.1:443"), reach("198.51.100.1:80"))
	}

	// the cluster's addresses: a pod on another node, a Service, a node
	lookup := func(addr string) (bpf.IPCacheValue, bool) {
		entries, err := dp.IPCacheEntries()
		if err != nil {
			t.Fatal(err)
		}
		a := netip.MustParseAddr(addr)
		v, ok := entries[netip.PrefixFrom(a, a.BitLen())]
		return v, ok
	}
	var pod *corev1.Pod
	if !poll(30*time.Second, func() bool { // the service account controller must create web's default account first
		pod, err = client.CoreV1().Pods("web").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "remote"},
			Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "none",
				Ports: []corev1.ContainerPort{{ContainerPort: 443, HostPort: 8443}, {ContainerPort: 80}}}}}}, metav1.CreateOptions{})
		return err == nil
	}) {
		t.Fatalf("create a pod: %v", err)
	}
	pod.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.5"}}
	pod.Status.PodIP = "10.244.1.5"
	pod.Status.Phase = corev1.PodRunning
	if _, err := client.CoreV1().Pods("web").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services("web").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node, _ := client.CoreV1().Nodes().Get(ctx, "node-b", metav1.GetOptions{})
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.240.0.12"}}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, _ := client.CoreV1().Services("web").Get(ctx, "svc", metav1.GetOptions{})
	if !poll(20*time.Second, func() bool {
		p, pok := lookup("10.244.1.5")
		s, sok := lookup(svc.Spec.ClusterIP)
		n, nok := lookup("10.240.0.12")
		return pok && bpf.Class(p.Class) == bpf.ClassPod && p.Identity == web &&
			sok && bpf.Class(s.Class) == bpf.ClassService && s.Identity == web && nok && bpf.Class(n.Class) == bpf.ClassNode
	}) {
		p, _ := lookup("10.244.1.5")
		s, _ := lookup(svc.Spec.ClusterIP)
		n, _ := lookup("10.240.0.12")
		t.Errorf("ipcache: pod %+v, service %s %+v, node %+v", p, svc.Spec.ClusterIP, s, n)
	}
	// its hostPort on its node's address leads to it, as a pod of web on another node
	hostPort := bpf.HostPort{Node: netip.MustParseAddr("10.240.0.12"), Protocol: 6, Port: 8443}.Key()
	hostPortOf := func() (bpf.HostPortValue, bool) {
		all, err := dp.HostPorts()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := all[hostPort]
		return v, ok && len(all) == 1
	}
	if !poll(20*time.Second, func() bool {
		v, ok := hostPortOf()
		return ok && v.Identity == web && v.Port == 443 && v.Local == 0 && v.Addr == bpf.Addr16(netip.MustParseAddr("10.244.1.5"))
	}) {
		v, _ := hostPortOf()
		t.Errorf("hostPort 10.240.0.12:8443: %+v, want web's pod 10.244.1.5:443 on another node, and no other", v)
	}
	if err := client.CoreV1().Pods("web").Delete(ctx, "remote", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool { _, ok := lookup("10.244.1.5"); return !ok }) {
		t.Errorf("a deleted remote pod's address stayed in the ipcache")
	}
	// the rest of node-b's pod range: pods not known (yet), which rules by namespace deny
	entries, err := dp.IPCacheEntries()
	if err != nil {
		t.Fatal(err)
	}
	if v := entries[netip.MustParsePrefix("10.244.1.0/24")]; bpf.Class(v.Class) != bpf.ClassPod || v.Identity != bpf.IdentityUnknownPod {
		t.Errorf("node-b's pod range in the ipcache: %+v, want class pod with the unknown pod's identity", v)
	}
	if !poll(20*time.Second, func() bool { _, ok := hostPortOf(); return !ok }) {
		t.Errorf("a deleted remote pod's hostPort stayed in the datapath")
	}

	// a namespace deleted under a running pod of this node: the pod keeps its identity and the namespace's policy
	// (web-out selects zone web: 443 allowed, the rest denied by FirewallConfig) until it ends, then the identity
	// is released (the namespace controller finishes the deletion)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "gone",
		Labels: map[string]string{v1alpha1.LabelZone: "web"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var goneID uint32
	if !poll(20*time.Second, func() bool { id, ok, _ := dp.NamespaceIdentity("gone"); goneID = id; return ok }) {
		t.Fatal("namespace gone never got an identity")
	}
	pl2 := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.1.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.1.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	testutil.Listen(t, pl2.Host, "198.51.100.1:443")
	store := endpoint.Store{Dir: t.TempDir()}
	rec2 := &endpoint.Record{Network: "net", ContainerID: "c2", IfName: "eth0", Namespace: "gone", Pod: "drainer",
		HostIfname: pl2.HostIfname, HostIfindex: pl2.HostIfindex, Addresses: []string{"10.250.1.2"}}
	if err := pl2.Host.Do(func(ns.NetNS) error { return guard(dp, rec2, goneID, root) }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pl2.Host.Do(func(ns.NetNS) error { return forget(store, root, "c2") }) })
	if err := store.Save(rec2); err != nil {
		t.Fatal(err)
	}
	reconcile := func() { // what the enforcer runs after every apply
		t.Helper()
		if err := pl2.Host.Do(func(ns.NetNS) error { return e.Reconcile(store, root) }); err != nil {
			t.Errorf("reconcile: %v", err)
		}
	}
	reach2 := func() bool { return testutil.Exchange(pl2.Pod, "198.51.100.1:443", 500*time.Millisecond) == nil }
	if !poll(20*time.Second, reach2) {
		t.Fatal("baseline: the pod of namespace gone cannot reach 198.51.100.1:443, which web-out allows")
	}
	if err := client.CoreV1().Namespaces().Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// finish the deletion as the namespace controller would (it empties the namespace, then its finalizers; on a
	// busy machine it did not get there within minutes, see the session note), so the test is about Moat
	if got, err := client.CoreV1().Namespaces().Get(ctx, "gone", metav1.GetOptions{}); err == nil {
		got.Spec.Finalizers = nil
		if _, err := client.CoreV1().Namespaces().Finalize(ctx, got, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	if !poll(60*time.Second, func() bool {
		_, err := client.CoreV1().Namespaces().Get(ctx, "gone", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}) {
		t.Fatalf("the API server never finished deleting namespace gone (is the namespace controller running?)")
	}
	if !poll(20*time.Second, func() bool { _, ok, _ := dp.NamespaceIdentity("gone"); return !ok }) {
		t.Errorf("a deleted namespace's identity is still published")
	}
	reconcile()
	if ep, ok, _ := dp.LookupEndpoint(uint32(pl2.HostIfindex)); !ok || ep.Identity != goneID {
		t.Errorf("the pod of deleted namespace gone is tagged %d, want its identity %d kept (0 = cluster defaults)", ep.Identity, goneID)
	}
	if !reach2() {
		t.Errorf("the pod of deleted namespace gone lost its namespace's policy (443 denied)")
	}
	if _, ok := e.Identities()["web"]; !ok {
		t.Errorf("namespace web lost its identity")
	}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "next"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var next uint32
	if !poll(20*time.Second, func() bool { id, ok, _ := dp.NamespaceIdentity("next"); next = id; return ok }) {
		t.Fatal("namespace next never got an identity")
	}
	if next == goneID {
		t.Errorf("namespace next got identity %d, held by a running pod of deleted namespace gone", next)
	}
	// the pod ends: its identity is released
	if err := pl2.Host.Do(func(ns.NetNS) error { return forget(store, root, "c2") }); err != nil {
		t.Fatal(err)
	}
	reconcile()
	if _, err := dp.PolicyMapID(goneID); err == nil {
		t.Errorf("identity %d of deleted namespace gone kept its policy after its last pod ended", goneID)
	}
}
