package enforcer

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/feed"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// The address feed against a real API server: the publisher writes slices of at most MaxEntries; an enforcer
// reading them (and no Pod or Node) learns remote pods with their namespace's identity, node addresses and pod
// ranges, hostPorts, a reused address's new namespace and a deletion; a Node's status report causes no write; a
// new publisher adopts the slices it finds without rewriting them.
func TestAddressFeed(t *testing.T) {
	cluster := kubetest.Start(t)
	dyn, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startPublisher := func() (*feed.Publisher, func()) {
		p := &feed.Publisher{Client: client, Dynamic: dyn, Log: logrus.NewEntry(logrus.New()).WithField("publisher", t.Name()),
			MaxEntries: 2}
		pctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(pctx); err != nil {
				t.Errorf("publisher: %v", err)
			}
		}()
		return p, func() { stop(); wg.Wait() }
	}
	pub, stopPublisher := startPublisher()
	defer func() { stopPublisher() }()

	_, dp, e := newTestEnforcer(t)
	src := &countingSource{Kubernetes: &Kubernetes{Config: cluster.Config, NodeName: "node-a", AddressFeed: true,
		Log: logrus.NewEntry(logrus.New())}}
	runSource(t, e, src)

	for _, ns := range []string{"web", "db"} {
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
			metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.2.1.0/24"}}}
	node, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.12"}}
	if node, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	entry := func(addr string) (bpf.IPCacheValue, bool) {
		p := netip.MustParsePrefix(addr)
		entries, err := dp.IPCacheEntries()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := entries[p]
		return v, ok
	}
	identity := func(ns string) uint32 {
		id, _, _ := dp.NamespaceIdentity(ns)
		return id
	}
	if !poll(30*time.Second, func() bool {
		n, nodeOK := entry("10.0.0.12/32")
		r, rangeOK := entry("10.2.1.0/24")
		return identity("web") != 0 && identity("db") != 0 && nodeOK && bpf.Class(n.Class) == bpf.ClassNode &&
			rangeOK && bpf.Class(r.Class) == bpf.ClassPod && r.Identity == bpf.IdentityUnknownPod
	}) {
		t.Fatal("node-b's address and pod range never reached the ipcache through the feed")
	}

	runPod := func(ns, name, nodeName, ip string, hostPort int32) *corev1.Pod {
		t.Helper()
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if hostPort != 0 {
			pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: hostPort, Protocol: corev1.ProtocolTCP}}
		}
		pod, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP, pod.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		if pod, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return pod
	}
	runPod("web", "api", "node-b", "10.2.1.7", 0)
	runPod("web", "front", "node-b", "10.2.1.8", 8443)
	runPod("web", "local", "node-a", "10.2.0.9", 0) // this node's pods are the plugin's
	runPod("db", "pg", "node-b", "10.2.1.10", 0)
	if !poll(30*time.Second, func() bool {
		a, okA := entry("10.2.1.7/32")
		f, okF := entry("10.2.1.8/32")
		d, okD := entry("10.2.1.10/32")
		return okA && a.Identity == identity("web") && okF && f.Identity == identity("web") && okD && d.Identity == identity("db")
	}) {
		t.Fatal("remote pods never reached the ipcache with their namespaces' identities through the feed")
	}
	if _, ok := entry("10.2.0.9/32"); ok {
		t.Error("a pod of this node was put in the ipcache from the feed")
	}
	if !poll(30*time.Second, func() bool {
		for _, hp := range e.Snapshot().State.HostPorts {
			if hp.Port == 8443 && hp.Pod == netip.MustParseAddr("10.2.1.8") && hp.Node == netip.MustParseAddr("10.0.0.12") &&
				hp.Namespace == "web" && !hp.Local {
				return true
			}
		}
		return false
	}) {
		t.Errorf("the hostPort of web/front never came through the feed: %+v", e.Snapshot().State.HostPorts)
	}

	// every slice holds at most MaxEntries, and every pod and node once
	list, err := dyn.Resource(feed.SlicesResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, u := range list.Items {
		var s v1alpha1.AddressSlice
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
			t.Fatal(err)
		}
		if n := len(s.Pods) + len(s.Nodes); n > 2 || n == 0 {
			t.Errorf("slice %s holds %d entries, want 1 to 2", s.Name, n)
		}
		for _, p := range s.Pods {
			seen[p.Namespace+"/"+p.Name]++
		}
		for _, n := range s.Nodes {
			seen["node "+n.Name]++
		}
	}
	for _, key := range []string{"web/api", "web/front", "web/local", "db/pg", "node node-b"} {
		if seen[key] != 1 {
			t.Errorf("%s is in %d slices, want 1 (all: %v)", key, seen[key], seen)
		}
	}

	// a Node's status report: no slice is written, no state loaded
	writes, loads := pub.Writes(), src.loads.Load()
	for i := range 3 {
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			LastHeartbeatTime: metav1.NewTime(time.Now().Add(time.Duration(i) * time.Second))}}
		if node, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// an address reused by another namespace (the pod before it deleted): the new namespace decides it
	if err := client.CoreV1().Pods("web").Delete(ctx, "api", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	runPod("db", "reuse", "node-b", "10.2.1.7", 0)
	if !poll(30*time.Second, func() bool { v, ok := entry("10.2.1.7/32"); return ok && v.Identity == identity("db") }) {
		t.Fatal("a reused address kept its former namespace's identity")
	}
	if got := pub.Writes() - writes; got > 3 {
		t.Errorf("%d slice writes for a deletion and a new pod after three heartbeats, want at most 3", got)
	}
	if got := src.loads.Load(); got != loads {
		t.Errorf("heartbeats and pod changes cost %d whole-state loads, want none", got-loads)
	}

	// a new publisher takes the slices as they are, and writes only what changes afterwards
	stopPublisher()
	pub, stopPublisher = startPublisher()
	if !poll(30*time.Second, pub.Publishing) {
		t.Fatal("the new publisher never started publishing")
	}
	runPod("web", "late", "node-b", "10.2.1.11", 0)
	if !poll(30*time.Second, func() bool { v, ok := entry("10.2.1.11/32"); return ok && v.Identity == identity("web") }) {
		t.Fatal("a pod created after a publisher's takeover never reached the ipcache")
	}
	if got := pub.Writes(); got != 1 {
		t.Errorf("the new publisher wrote %d slices for one new pod, want 1 (it rewrote what it adopted)", got)
	}
	if err := client.CoreV1().Pods("db").Delete(ctx, "pg", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if !poll(30*time.Second, func() bool { _, ok := entry("10.2.1.10/32"); return !ok }) {
		t.Fatal("a deleted pod's address stayed in the ipcache")
	}
}

// With the address feed, the enforcer reads the publisher's Lease: no Lease, or one nobody renews, is a contained
// problem in the status (the node stays ready); a renewed Lease clears it.
func TestStaleAddressFeed(t *testing.T) {
	cluster := kubetest.Start(t)
	_, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "moat-system"}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, _, e := newTestEnforcer(t)
	src := &Kubernetes{Config: cluster.Config, NodeName: "node-a", AddressFeed: true, LeaseNamespace: "moat-system",
		FeedStaleAfter: 2 * time.Second, FeedCheckEvery: 100 * time.Millisecond, Log: logrus.NewEntry(logrus.New())}
	runSource(t, e, src)
	srv := &Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "kubernetes"}
	problem := func(want string) func() bool {
		return func() bool {
			st := srv.Status()
			found := false
			for _, p := range st.Problems {
				found = found || strings.Contains(p, want)
			}
			return found && st.Ready && st.Generation > 0
		}
	}
	if !poll(30*time.Second, problem("the address feed has no publisher")) {
		t.Fatalf("no problem for a feed without a publisher: %q", srv.Status().Problems)
	}
	now := metav1.NewMicroTime(time.Now())
	holder := "moat-feed-0"
	if _, err := client.CoordinationV1().Leases("moat-system").Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: feed.Lease}, Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &now}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(30*time.Second, func() bool { return len(srv.Status().Problems) == 0 }) {
		t.Fatalf("problems with a renewed feed Lease: %q", srv.Status().Problems)
	}
	if !poll(30*time.Second, problem("the address feed is stale")) {
		t.Fatalf("no problem for a feed Lease nobody renews: %q", srv.Status().Problems)
	}
}
