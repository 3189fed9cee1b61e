package scale

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientretry "k8s.io/client-go/util/retry"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// The cluster around the pods: the same at every size.
const (
	namespaceCount = 2000
	nodeCount      = 1000 // node 0 is the enforcer's; pods run on the others
	serviceCount   = 2000 // one per namespace
	policyCount    = 500
	zoneCount      = 20
	fillWorkers    = 48
	enforcerNode   = "scale-node-0000"
)

func namespaceName(i int) string { return fmt.Sprintf("scale-ns-%04d", i) }
func nodeName(k int) string      { return fmt.Sprintf("scale-node-%04d", k) }
func zone(i int) string          { return fmt.Sprintf("zone-%02d", i%zoneCount) }
func policyName(p int) string    { return fmt.Sprintf("scale-policy-%03d", p) }

// layout places the pods: pod j is in namespace j mod 2,000 on node 1 + j mod 999, at the (j / 999)th address of
// that node's /24 (and /64 when dual-stack). Pods beyond the fill (probes, the steady rate, churn) continue the
// numbering, so every address is distinct.
type layout struct {
	dualStack bool
}

func (l layout) podNamespace(j int) string { return namespaceName(j % namespaceCount) }
func (l layout) podNode(j int) int         { return 1 + j%(nodeCount-1) }

func (l layout) podIPs(j int) []netip.Addr {
	k, m := l.podNode(j), j/(nodeCount-1)+2
	if m > 254 {
		panic(fmt.Sprintf("pod %d: node %d's /24 is full", j, k))
	}
	v4 := netip.AddrFrom4([4]byte{10, byte(128 + k/256), byte(k % 256), byte(m)})
	if !l.dualStack {
		return []netip.Addr{v4}
	}
	return []netip.Addr{v4, netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%x::%x", k, m))}
}

func (l layout) namespace(i int) *corev1.Namespace {
	env := []string{"prod", "staging", "dev"}[i%3]
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespaceName(i), Labels: map[string]string{
		v1alpha1.LabelZone: zone(i), "team": fmt.Sprintf("team-%03d", i%100), "env": env}}}
}

func (l layout) node(k int) *corev1.Node {
	addrs := []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.16.%d.%d", k/256, k%256)},
		{Type: corev1.NodeHostName, Address: nodeName(k)},
	}
	cidrs := []string{fmt.Sprintf("10.%d.%d.0/24", 128+k/256, k%256)}
	if l.dualStack {
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("fd00:172:16::%x", k)})
		cidrs = append(cidrs, fmt.Sprintf("fd00:10:244:%x::/64", k))
	}
	q := resource.MustParse
	capacity := corev1.ResourceList{corev1.ResourceCPU: q("8"), corev1.ResourceMemory: q("32Gi"), corev1.ResourcePods: q("250"),
		corev1.ResourceEphemeralStorage: q("100Gi")}
	now := metav1.Now()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName(k), Labels: map[string]string{
			"kubernetes.io/hostname": nodeName(k), "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"topology.kubernetes.io/zone": fmt.Sprintf("rack-%02d", k%16)}},
		Spec: corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs},
		Status: corev1.NodeStatus{
			Addresses: addrs, Capacity: capacity, Allocatable: capacity,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}},
			NodeInfo: corev1.NodeSystemInfo{KubeletVersion: "v1.37.2", ContainerRuntimeVersion: "containerd://1.7.0",
				KernelVersion: "6.18.0", OSImage: "Debian GNU/Linux 12", OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
}

func (l layout) service(i int) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: namespaceName(i), Labels: map[string]string{"app": "web"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}
}

// pod is a pod as a Deployment makes it (labels, an owner, one container with ports, probes and resources).
func (l layout) pod(j int) *corev1.Pod {
	q := resource.MustParse
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%07d", j), Namespace: l.podNamespace(j),
			Labels: map[string]string{"app": "web", "pod-template-hash": "5d4f8c7b9"}},
		Spec: corev1.PodSpec{
			NodeName: nodeName(l.podNode(j)),
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.example/web:1.4.2",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Env:   []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "PORT", Value: "8080"}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: q("100m"), corev1.ResourceMemory: q("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: q("256Mi")}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/healthz", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 10},
			}},
		},
	}
}

// podStatus is what a kubelet reports once the pod runs.
func (l layout) podStatus(p *corev1.Pod, j int) {
	now := metav1.Now()
	ips := l.podIPs(j)
	node := l.node(l.podNode(j)).Status.Addresses[0].Address
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP, p.Status.HostIPs = node, []corev1.HostIP{{IP: node}}
	p.Status.PodIP = ips[0].String()
	p.Status.PodIPs = nil
	for _, a := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	p.Status.StartTime = &now
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "web", Ready: true, Image: "registry.example/web:1.4.2",
		ImageID:     "registry.example/web@sha256:4c1e997385b8fb4ad4d1d3c7e5e7c1b7c0f2b8f0f3d5a8b6e1c2d3e4f5a6b7c8",
		ContainerID: fmt.Sprintf("containerd://%064x", j), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}
}

// policy p of the 500: 300 select a zone (every 100th of them three zones), 150 one namespace by name, 45 a
// team's 20 namespaces and the last five every namespace, so namespaces of a zone share most of their rules and
// some 250 distinct rule sets remain. Each has a namespace peer by zone, CIDRs with excepts (v4 and v6), single
// ports and ranges, a priority; one in ten is in Audit mode.
func policy(p int) *v1alpha1.FirewallPolicy {
	i32 := func(v int) *int32 { x := int32(v); return &x }
	var selector *metav1.LabelSelector
	switch {
	case p >= policyCount-5:
		selector = &metav1.LabelSelector{}
	case p >= 450:
		selector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%03d", 2*(p-450))}}
	case p >= 300:
		selector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: namespaceName((p - 300) * 13 % namespaceCount)}}
	case p%100 == 50:
		selector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: v1alpha1.LabelZone,
			Operator: metav1.LabelSelectorOpIn, Values: []string{zone(p), zone(p + 1), zone(p + 2)}}}}
	default:
		selector = &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: zone(p)}}
	}
	peerZone := func(d int) []v1alpha1.Peer {
		return []v1alpha1.Peer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: zone(p + d)}}}}
	}
	pol := &v1alpha1.FirewallPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: v1alpha1.KindFirewallPolicy},
		ObjectMeta: metav1.ObjectMeta{Name: policyName(p)},
		Spec: v1alpha1.FirewallPolicySpec{
			NamespaceSelector: selector,
			Priority:          i32(100 * (1 + p%9)),
			Egress: []v1alpha1.Rule{
				{Action: v1alpha1.ActionAllow, To: peerZone(1), Ports: []v1alpha1.Port{
					{Protocol: "TCP", Port: i32(8080)}, {Protocol: "TCP", Port: i32(8443), EndPort: i32(8445)}}},
				{Action: v1alpha1.ActionAllow, To: []v1alpha1.Peer{
					{CIDR: fmt.Sprintf("100.%d.0.0/16", 64+p%64), Except: []string{fmt.Sprintf("100.%d.128.0/17", 64+p%64)}},
					{CIDR: fmt.Sprintf("2001:db8:%x::/48", p), Except: []string{fmt.Sprintf("2001:db8:%x:ff00::/56", p)}}},
					Ports: []v1alpha1.Port{{Protocol: "TCP", Port: i32(5432)}, {Protocol: "UDP", Port: i32(8000), EndPort: i32(8100)}}},
			},
			Ingress: []v1alpha1.Rule{
				{Action: v1alpha1.ActionAllow, From: peerZone(2), Ports: []v1alpha1.Port{{Protocol: "TCP", Port: i32(9000), EndPort: i32(9100)}}},
			},
		},
	}
	if p%2 == 1 {
		pol.Spec.Egress = append(pol.Spec.Egress, v1alpha1.Rule{Action: v1alpha1.ActionDeny,
			To: []v1alpha1.Peer{{CIDR: fmt.Sprintf("203.0.%d.0/24", p%256)}}, Ports: []v1alpha1.Port{{Protocol: "TCP", Port: i32(22)}}})
	}
	if p%10 == 0 {
		pol.Spec.Mode = v1alpha1.ModeAudit
	}
	return pol
}

// changedPolicy is policy p with its first rule's single port set to port: a change that recompiles the tries of
// every namespace the policy selects.
func changedPolicy(p, port int) *v1alpha1.FirewallPolicy {
	pol := policy(p)
	v := int32(port)
	pol.Spec.Egress[0].Ports[0].Port = &v
	return pol
}

func toUnstructured(obj runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	return &unstructured.Unstructured{Object: m}, nil
}

// filler writes objects fast: a client without rate limit speaking protobuf, and retries of what a busy API
// server refuses for a moment.
type filler struct {
	client   kubernetes.Interface
	policies dynamic.ResourceInterface
	layout   layout
}

func newFiller(cfg *rest.Config, l layout) (*filler, error) {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = 10000, 20000
	c.ContentType = "application/vnd.kubernetes.protobuf"
	c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c.UserAgent = "moat-scale-filler"
	client, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, err
	}
	dc := rest.CopyConfig(cfg)
	dc.QPS, dc.Burst = 10000, 20000
	dyn, err := dynamic.NewForConfig(dc)
	if err != nil {
		return nil, err
	}
	return &filler{client: client, policies: dyn.Resource(v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.ResourceFirewallPolicies)), layout: l}, nil
}

// retry calls fn until it succeeds, for a while: the API server refuses pods until the namespace's service
// account exists, and sheds load (429, timeouts) when busy.
func retry(ctx context.Context, what string, fn func() error) error {
	for attempt := 0; ; attempt++ {
		err := fn()
		switch {
		case err == nil || apierrors.IsAlreadyExists(err):
			return nil
		case apierrors.IsInvalid(err) || ctx.Err() != nil || attempt == 60:
			return fmt.Errorf("%s: %w", what, err)
		}
		time.Sleep(time.Duration(50+attempt*50) * time.Millisecond)
	}
}

// parallel runs do(i) for i in [0, n) on fillWorkers goroutines and returns the first error.
func parallel(n int, do func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range fillWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := do(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n)) // stop handing out work
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// createPod creates pod j and reports its addresses through the status subresource, as its kubelet would. It
// returns the time the status write was sent: when the API server could first tell anyone the pod's addresses.
func (f *filler) createPod(ctx context.Context, j int) (time.Time, error) {
	pods := f.client.CoreV1().Pods(f.layout.podNamespace(j))
	var created *corev1.Pod
	if err := retry(ctx, "create pod", func() error {
		var err error
		created, err = pods.Create(ctx, f.layout.pod(j), metav1.CreateOptions{})
		return err
	}); err != nil {
		return time.Time{}, err
	}
	if created == nil { // it existed already: a retried create that had gone through
		var err error
		if created, err = pods.Get(ctx, f.layout.pod(j).Name, metav1.GetOptions{}); err != nil {
			return time.Time{}, err
		}
	}
	f.layout.podStatus(created, j)
	var sent time.Time
	err := retry(ctx, "pod status", func() error {
		sent = time.Now()
		_, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	return sent, err
}

func (f *filler) deletePod(ctx context.Context, j int) error {
	return retry(ctx, "delete pod", func() error {
		err := f.client.CoreV1().Pods(f.layout.podNamespace(j)).Delete(ctx, f.layout.pod(j).Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64)})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// fill creates the cluster's namespaces, nodes, Services and policies through the API, then pods 0..pods-1:
// through the API too when etcdURL is empty, else written to etcd in bulk (bulkPods).
func (f *filler) fill(ctx context.Context, pods int, etcdURL string) error {
	core := f.client.CoreV1()
	steps := []struct {
		n  int
		do func(i int) error
	}{
		{namespaceCount, func(i int) error {
			return retry(ctx, "create namespace", func() error {
				_, err := core.Namespaces().Create(ctx, f.layout.namespace(i), metav1.CreateOptions{})
				return err
			})
		}},
		{nodeCount, func(k int) error {
			return retry(ctx, "create node", func() error {
				_, err := core.Nodes().Create(ctx, f.layout.node(k), metav1.CreateOptions{})
				return err
			})
		}},
		{serviceCount, func(i int) error {
			return retry(ctx, "create service", func() error {
				_, err := core.Services(namespaceName(i)).Create(ctx, f.layout.service(i), metav1.CreateOptions{})
				return err
			})
		}},
		{policyCount, func(p int) error {
			u, err := toUnstructured(policy(p))
			if err != nil {
				return err
			}
			return retry(ctx, "create policy", func() error {
				_, err := f.policies.Create(ctx, u, metav1.CreateOptions{})
				return err
			})
		}},
	}
	for _, s := range steps {
		if err := parallel(s.n, s.do); err != nil {
			return err
		}
	}
	if etcdURL == "" {
		return parallel(pods, func(j int) error {
			_, err := f.createPod(ctx, j)
			return err
		})
	}
	if err := f.bulkPods(ctx, etcdURL, 0, pods); err != nil {
		return err
	}
	// the API server's cache has them all once a list does (the watch from etcd runs behind the writes)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		n, err := f.countPods(ctx)
		switch {
		case err == nil && n == pods:
			return nil
		case err == nil && n > pods:
			return fmt.Errorf("the API server lists %d pods, %d were written", n, pods)
		case time.Now().After(deadline):
			return fmt.Errorf("the API server lists %d of the %d pods written to etcd (%v)", n, pods, err)
		}
		time.Sleep(time.Second)
	}
}

// setPolicy replaces policy p's spec with changedPolicy(p, port) (an update of the whole object, as kubectl
// apply does), again on a conflict with the enforcer's status writes; it returns the time the write that
// succeeded was sent.
func (f *filler) setPolicy(ctx context.Context, p, port int) (time.Time, error) {
	u, err := toUnstructured(changedPolicy(p, port))
	if err != nil {
		return time.Time{}, err
	}
	var sent time.Time
	err = clientretry.RetryOnConflict(clientretry.DefaultRetry, func() error {
		cur, err := f.policies.Get(ctx, policyName(p), metav1.GetOptions{})
		if err != nil {
			return err
		}
		if err := unstructured.SetNestedField(cur.Object, u.Object["spec"], "spec"); err != nil {
			return err
		}
		sent = time.Now()
		_, err = f.policies.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	return sent, err
}
