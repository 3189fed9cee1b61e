package enforcer

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// The trusted resolvers the Kubernetes source finds: the cluster DNS Service's cluster IP and its endpoints'
// addresses, kept up to date as the endpoints change, from the Service FirewallConfig names when it names one,
// and none of the source's when FirewallConfig lists its own.
func TestKubernetesDNSResolvers(t *testing.T) {
	cluster := kubetest.Start(t)
	dyn, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	service := func(ns, name, ip string) {
		t.Helper()
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
			metav1.CreateOptions{}); err != nil && ns != "kube-system" && ns != "default" {
			t.Fatal(err)
		}
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{
			ClusterIP: ip, Ports: []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}}}}
		if _, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	slice := func(ns, service, name string, addrs ...string) *discoveryv1.EndpointSlice {
		t.Helper()
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: service}}, AddressType: discoveryv1.AddressTypeIPv4}
		for _, a := range addrs {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
		}
		es, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	service("kube-system", "kube-dns", "10.96.0.10")
	coredns := slice("kube-system", "kube-dns", "kube-dns-a", "10.244.1.5", "10.244.2.7")
	slice("kube-system", "other", "other-a", "10.244.3.3") // another Service's endpoints: not resolvers

	k := &Kubernetes{Config: cluster.Config, NodeName: "node-a", Log: logrus.NewEntry(logrus.New())}
	if err := k.start(ctx, func() {}); err != nil {
		t.Fatal(err)
	}
	resolvers := func() []string {
		s, err := k.Load()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range s.DNSResolvers {
			out = append(out, a.String())
		}
		return out
	}
	waitResolvers := func(what string, want ...string) {
		t.Helper()
		var got []string
		if !poll(20*time.Second, func() bool { got = resolvers(); return slices.Equal(got, want) }) {
			t.Fatalf("%s: resolvers %v, want %v", what, got, want)
		}
	}
	if got := resolvers(); !slices.Equal(got, []string{"10.96.0.10", "10.244.1.5", "10.244.2.7"}) {
		// the first load after start already has them: the start waits for the endpoints' first listing
		t.Errorf("first load: resolvers %v", got)
	}

	coredns.Endpoints = coredns.Endpoints[:1]
	if _, err := client.DiscoveryV1().EndpointSlices("kube-system").Update(ctx, coredns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitResolvers("an endpoint gone", "10.96.0.10", "10.244.1.5")

	service("dns", "coredns", "10.96.0.53")
	slice("dns", "coredns", "coredns-a", "10.244.4.4")
	configs := dyn.Resource(ConfigsResource)
	if _, err := configs.Create(ctx, fromYAML(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {dns: {clusterDNSService: dns/coredns}}`), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitResolvers("FirewallConfig's Service", "10.96.0.53", "10.244.4.4")

	cfg, err := configs.Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Object["spec"] = map[string]any{"dns": map[string]any{"trustedResolvers": []any{"10.0.0.53"}}}
	if _, err := configs.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitResolvers("FirewallConfig's own list (resolve takes it from the config)")
}
