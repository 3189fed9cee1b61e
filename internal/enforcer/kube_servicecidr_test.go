package enforcer

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// An API server that does not serve ServiceCIDRs (before Kubernetes 1.33): the enforcer does not wait for them,
// publishes its state (so pods can start), says so in its status, and learns Service addresses from the
// Services' cluster IPs (both families) and the ranges from FirewallConfig's clusterCIDRs.
//
// kube-apiserver v1.37 cannot switch ServiceCIDRs off (see kubetest.HidingResource): the enforcer reaches it
// through a proxy that hides them from discovery and answers 404 for them, as an older API server does.
func TestKubernetesWithoutServiceCIDRs(t *testing.T) {
	const v6Range = "fd00:96::/112"
	cluster := kubetest.Start(t, kubetest.WithAPIServerFlags(map[string]string{
		"service-cluster-ip-range": kubetest.ServiceClusterIPRange + "," + v6Range,
	}))
	config := cluster.HidingResource(t, "networking.k8s.io", "v1", "servicecidrs")
	dyn, client := clients(t, config)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the API server should not serve servicecidrs here: listing them gave %v", err)
	}
	resources, err := client.Discovery().ServerResourcesForGroupVersion("networking.k8s.io/v1")
	if err != nil || len(resources.APIResources) == 0 {
		t.Fatalf("discovery of networking.k8s.io/v1: %v %v", resources, err)
	}
	for _, r := range resources.APIResources {
		if strings.HasPrefix(r.Name, "servicecidrs") {
			t.Fatalf("discovery still lists %s", r.Name)
		}
	}
	installCRDs(t, cluster)

	_, dp, e := newTestEnforcer(t)
	k := &Kubernetes{Config: config, NodeName: "node-a", Log: logrus.NewEntry(logrus.New())}
	runSource(t, e, k)

	srv := &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "kubernetes"}
	if !poll(60*time.Second, func() bool { return srv.Status().Ready }) {
		t.Fatalf("the enforcer never published its state without the ServiceCIDR API: %+v", srv.Status())
	}
	if got := srv.Status().ServiceRanges; !strings.HasPrefix(got, ServiceRangesFromClusterIPs) ||
		!strings.Contains(got, "does not serve") {
		t.Errorf("status service ranges %q, want %q saying the API server does not serve ServiceCIDRs",
			got, ServiceRangesFromClusterIPs)
	}

	if _, err := dyn.Resource(ConfigsResource).Create(ctx, fromYAML(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {clusterCIDRs: [`+kubetest.ServiceClusterIPRange+`, "`+v6Range+`"]}
`), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dual := corev1.IPFamilyPolicyRequireDualStack
	svc, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc"},
		Spec: corev1.ServiceSpec{IPFamilyPolicy: &dual, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("a dual-stack Service got cluster IPs %v", svc.Spec.ClusterIPs)
	}
	var want []netip.Prefix
	for _, ip := range svc.Spec.ClusterIPs {
		a := netip.MustParseAddr(ip)
		want = append(want, netip.PrefixFrom(a, a.BitLen())) // a /32 and a /128
	}
	check := func() string {
		entries, err := dp.IPCacheEntries()
		if err != nil {
			return err.Error()
		}
		def := e.Identities()["default"]
		var bad []string
		for _, p := range want {
			if v, ok := entries[p]; !ok || bpf.Class(v.Class) != bpf.ClassService || v.Identity != def || def == 0 {
				bad = append(bad, p.String()+" not a Service of namespace default")
			}
		}
		for _, r := range []string{kubetest.ServiceClusterIPRange, v6Range} {
			if v, ok := entries[netip.MustParsePrefix(r)]; !ok || bpf.Class(v.Class) != bpf.ClassCluster {
				bad = append(bad, r+" not in the cluster class")
			}
		}
		return strings.Join(bad, "; ")
	}
	if !poll(30*time.Second, func() bool { return check() == "" }) {
		t.Errorf("ipcache without the ServiceCIDR API: %s", check())
	}
}
