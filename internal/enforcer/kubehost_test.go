package enforcer

import (
	"context"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// moatctl host against a real API server: the API server's port is the one of the kubernetes Service's
// endpoints, which the API server itself keeps, on the node that holds its address; etcd, the scheduler and the
// controller manager on the control-plane node only; the kubelet on the port its Node status gives; the sources
// name the nodes. A source without a cluster (folder mode) gets a clear refusal.
func TestHostSafetyFromTheAPIServer(t *testing.T) {
	cluster := kubetest.Start(t)
	_, client := clients(t, cluster.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// the kubernetes Service's endpoints, as the API server writes them in a cluster (this test's does not): the
	// API server on node-a, on a port of its own
	port, https, ready := int32(16443), "https", true
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &https, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	api := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 16443)
	for _, n := range []struct {
		name, addr string
		labels     map[string]string
		kubelet    int32
	}{
		{"node-a", "10.0.0.1", map[string]string{"node-role.kubernetes.io/control-plane": ""}, 10251},
		{"node-b", "10.0.0.2", nil, 0},
	} {
		node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels},
			Spec: corev1.NodeSpec{PodCIDR: "10.244." + map[string]string{"node-a": "0", "node-b": "1"}[n.name] + ".0/24"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr}}
		node.Status.DaemonEndpoints.KubeletEndpoint.Port = n.kubelet
		if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, _, e := newTestEnforcer(t)
	log := logrus.NewEntry(logrus.New())

	socket := filepath.Join(t.TempDir(), "enforcer.sock")
	ln, err := agentapi.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	k := &Kubernetes{Config: cluster.Config, NodeName: "node-a", Log: log}
	go func() { _ = (&Server{E: e, Source: "kubernetes", Host: k.HostInput}).Serve(ctx, ln) }()
	h, err := agentapi.NewClient(socket).Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]agentapi.SafetyEntry{}
	for _, en := range h.Entries {
		got[en.Name+" "+en.What] = en
	}
	from := func(en agentapi.SafetyEntry) string {
		var out []string
		for _, s := range en.Sources {
			out = append(out, s.Prefix+" "+s.From)
		}
		return strings.Join(out, ", ")
	}
	apiEntry := got["apiserver the API server"]
	if h.Node != "node-a" || h.Enforced || apiEntry.Ports != "tcp/"+strconv.Itoa(int(api.Port())) || apiEntry.Learned != "kubernetes endpoints" ||
		!strings.Contains(from(apiEntry), "10.0.0.2/32 node node-b") {
		t.Errorf("node-a's API server: %+v (%s)", apiEntry, from(apiEntry))
	}
	if en := got["kubelet the kubelet"]; en.Ports != "tcp/10251" || en.Learned != "Node status" ||
		!strings.Contains(from(en), "10.244.1.0/24 pod range") {
		t.Errorf("node-a's kubelet: %+v (%s)", en, from(en))
	}
	if _, ok := got["etcd etcd's clients"]; !ok {
		t.Errorf("the control-plane node keeps no etcd entry: %v", h.Entries)
	}
	if !strings.Contains(strings.Join(h.Warnings, "\n"), "adminCIDRs is not set") {
		t.Errorf("warnings: %v", h.Warnings)
	}

	k.NodeName = "node-b"
	in, err := k.HostInput(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range e.HostSafety(in).Entries {
		if en.Name == "apiserver" || en.Name == "etcd" || en.Name == "scheduler" {
			t.Errorf("the worker node-b keeps %s %s", en.Name, en.What)
		}
		if en.Name == "kubelet" && en.Ports != "tcp/10250" {
			t.Errorf("node-b's kubelet: %+v, want the default port", en)
		}
	}

	// folder mode: nothing to derive the set from, said so
	socket2 := filepath.Join(t.TempDir(), "enforcer.sock")
	ln2, err := agentapi.Listen(socket2)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = (&Server{E: e, Source: "folder /etc/moat"}).Serve(ctx, ln2) }()
	if _, err := agentapi.NewClient(socket2).Host(ctx); err == nil || !strings.Contains(err.Error(), "derived from the cluster") {
		t.Errorf("moatctl host in folder mode: %v", err)
	}
}
