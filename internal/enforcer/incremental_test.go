package enforcer

import (
	"context"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// countingSource is the Kubernetes source with its whole-state loads counted.
type countingSource struct {
	*Kubernetes
	loads atomic.Int64
}

func (c *countingSource) Load() (State, error) {
	c.loads.Add(1)
	return c.Kubernetes.Load()
}

// Against a real API server: what changes nothing Moat reads (a Node's heartbeat, a pod's status conditions)
// costs no apply; a remote pod's address, a node's new address and a pod's deletion are applied on their own,
// with no whole-state load; a namespace's labels are.
func TestAddressEventsApplyOnTheirOwn(t *testing.T) {
	cluster := kubetest.Start(t)
	_, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, dp, e := newTestEnforcer(t)
	src := &countingSource{Kubernetes: &Kubernetes{Config: cluster.Config, NodeName: "node-a", Log: logrus.NewEntry(logrus.New())}}
	runSource(t, e, src)

	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web",
		Labels: map[string]string{v1alpha1.LabelZone: "web"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Status: corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.12"}}}}
	node, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.12"}}
	if node, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	entry := func(addr string) (bpf.IPCacheValue, bool) {
		a := netip.MustParseAddr(addr)
		entries, err := dp.IPCacheEntries()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := entries[netip.PrefixFrom(a, a.BitLen())]
		return v, ok
	}
	var web uint32
	if !poll(20*time.Second, func() bool {
		id, ok, _ := dp.NamespaceIdentity("web")
		web = id
		_, nodeKnown := entry("10.0.0.12")
		return ok && nodeKnown
	}) {
		t.Fatal("namespace web and node-b never reached the datapath")
	}
	loads := src.loads.Load()

	// heartbeats: nothing Moat reads
	for i := range 5 {
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			LastHeartbeatTime: metav1.NewTime(time.Now().Add(time.Duration(i) * time.Second))}}
		if node, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// then an address: the node informer delivers it after the heartbeats
	node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.13"})
	if _, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool { v, ok := entry("10.0.0.13"); return ok && bpf.Class(v.Class) == bpf.ClassNode }) {
		t.Fatal("node-b's new address never reached the ipcache")
	}
	if got := src.loads.Load(); got != loads {
		t.Errorf("heartbeats and a node address cost %d whole-state loads, want none", got-loads)
	}

	// a pod on another node: its address with its namespace's identity, then its status conditions (nothing),
	// then its deletion
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "web"},
		Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	if pod, err = client.CoreV1().Pods("web").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP, pod.Status.PodIPs = "10.2.0.7", []corev1.PodIP{{IP: "10.2.0.7"}}
	if pod, err = client.CoreV1().Pods("web").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool {
		v, ok := entry("10.2.0.7")
		return ok && bpf.Class(v.Class) == bpf.ClassPod && v.Identity == web
	}) {
		t.Fatal("the remote pod's address never reached the ipcache with its namespace's identity")
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err = client.CoreV1().Pods("web").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Pods("web").Delete(ctx, "api", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool { _, ok := entry("10.2.0.7"); return !ok }) {
		t.Fatal("the deleted pod's address stayed in the ipcache")
	}
	if got := src.loads.Load(); got != loads {
		t.Errorf("a remote pod's life cost %d whole-state loads, want none", got-loads)
	}

	// a namespace's labels are policy: the whole state
	if _, err := client.CoreV1().Namespaces().Patch(ctx, "web", "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"moat.dev/zone":"api"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(20*time.Second, func() bool { return src.loads.Load() > loads }) {
		t.Error("a namespace's new labels were never loaded")
	}
}

// Cut off from the API server, the enforcer goes on enforcing what it knew and its status says so; once the
// server answers again it catches up with what changed meanwhile (a remote pod created during the outage).
func TestCutOffFromTheAPIServer(t *testing.T) {
	cluster := kubetest.Start(t)
	_, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx := context.Background()
	config, cut, mend := cluster.Severable(t)
	_, dp, e := newTestEnforcer(t)
	runSource(t, e, &Kubernetes{Config: config, NodeName: "node-a", Log: logrus.NewEntry(logrus.New())})
	srv := &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "kubernetes"}
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web"}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var web uint32
	if !poll(30*time.Second, func() bool {
		id, ok, _ := dp.NamespaceIdentity("web")
		web = id
		return ok && srv.Status().Ready
	}) {
		t.Fatalf("never ready: %+v", srv.Status())
	}
	cutOff := func() bool {
		return strings.Contains(strings.Join(srv.Status().Problems, "\n"), "cut off from the policy source")
	}
	cut()
	if !poll(60*time.Second, cutOff) {
		t.Fatalf("the status never said the API server was lost: %q", srv.Status().Problems)
	}
	if st := srv.Status(); !st.Ready {
		t.Errorf("cut off, the node went unready (it still enforces what it knew): %q", st.Problems)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "web"},
		Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	var err error
	if !poll(30*time.Second, func() bool { // the service account controller must create web's default account first
		pod, err = client.CoreV1().Pods("web").Create(ctx, pod, metav1.CreateOptions{})
		return err == nil
	}) {
		t.Fatal(err)
	}
	pod.Status.Phase, pod.Status.PodIPs = corev1.PodRunning, []corev1.PodIP{{IP: "10.2.0.9"}}
	if _, err := client.CoreV1().Pods("web").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	mend()
	known := func() bool {
		entries, err := dp.IPCacheEntries()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := entries[netip.MustParsePrefix("10.2.0.9/32")]
		return ok && v.Identity == web
	}
	if !poll(90*time.Second, func() bool { return !cutOff() && known() }) {
		t.Errorf("after the API server came back: still cut off %v, the pod made meanwhile known %v", cutOff(), known())
	}
}
