package enforcer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/debounce"
	"github.com/moatfw/moat/internal/feed"
	"github.com/moatfw/moat/internal/resolve"
)

// Kubernetes is the cluster source: informers on Namespaces, FirewallPolicy, FirewallConfig, Pods, Services,
// Nodes and ServiceCIDRs make the desired state; each policy's Accepted condition is written back.
//
// ServiceCIDRs (networking.k8s.io/v1, GA in Kubernetes 1.33) are watched only where the API server serves them
// and the enforcer may list them; elsewhere (older clusters, the API switched off) the Service ranges are what
// every Service's cluster IPs and FirewallConfig's clusterCIDRs say. An informer on a resource the server does
// not serve never fills, and waiting for it would keep the enforcer from ever publishing its state (with
// failPolicy closed, from letting any pod start).
//
// An invalid policy (one the API server's schema let through but Validate refuses) is reported in its status and
// its last good version, if this enforcer saw one, stays in force.
type Kubernetes struct {
	Config   *rest.Config
	NodeName string // pods on this node are the plugin's to put in the ipcache
	Log      *logrus.Entry
	// LeaseNamespace holds the Lease whose holder writes the policies' status for the cluster; empty: this
	// enforcer writes them without asking (one enforcer, or tests).
	LeaseNamespace string
	// AddressFeed: learn pods and nodes from the address feed (AddressSlices, internal/feed) instead of watching
	// every Pod and Node.
	AddressFeed bool
	// FeedStaleAfter is how long after the feed publisher's last renewal of its Lease (in LeaseNamespace) the feed
	// counts as stale (zero: a minute); FeedCheckEvery how often the Lease is read (zero: 10 s).
	FeedStaleAfter, FeedCheckEvery time.Duration

	client  kubernetes.Interface
	dynamic dynamic.Interface
	ns      cache.SharedIndexInformer
	pods    cache.SharedIndexInformer // nil with the address feed
	svcs    cache.SharedIndexInformer
	nodes   cache.SharedIndexInformer // nil with the address feed
	feed    cache.SharedIndexInformer // the AddressSlices; nil without the address feed
	self    cache.SharedIndexInformer // this node's Node, with the address feed
	// the pods and nodes as the source knows them (slim): the informers' stores, or the feed's
	podStore, nodeStore cache.Store
	cidrs               cache.SharedIndexInformer // nil: ServiceCIDRs not served, or not ours to list
	pols                cache.SharedIndexInformer
	cfgs                cache.SharedIndexInformer
	dns                 *dnsEndpoints // the cluster DNS Service's endpoints

	serviceRanges string // where the Service ranges come from (State.ServiceRanges)

	statuses *latestState // the state whose policy status is to be written

	// what the address feed's Lease says of its publisher ("": a publisher renews it)
	feedStale atomic.Pointer[string]

	// contact with the API server: since when it is lost (zero: in touch) and why
	contactMu sync.Mutex
	lostAt    time.Time
	lostWhy   string

	// What changed since the state was last loaded: addresses object by object (book), whether the pods with
	// hostPorts or their nodes did, whether anything else did (namespaces, policies, the config).
	book           *addressBook
	hostPortPods   sync.Map // pod key -> true, for the pods that have hostPorts
	hostPortsDirty atomic.Bool
	policyDirty    atomic.Bool

	mu       sync.Mutex
	lastGood map[string]v1alpha1.FirewallPolicy // by name: the last valid version seen
	decoded  map[string]decodedPolicy           // by name: the version last decoded, and what decoding it gave
	goodCfg  *v1alpha1.FirewallConfig
}

// decodedPolicy is a FirewallPolicy as decoded from one version of its object, with what was wrong with it.
type decodedPolicy struct {
	version string
	policy  v1alpha1.FirewallPolicy
	err     error
}

// GVRs of the policy API.
var (
	PoliciesResource = v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.ResourceFirewallPolicies)
	ConfigsResource  = v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.ResourceFirewallConfigs)
)

// Name is "kubernetes".
func (k *Kubernetes) Name() string { return "kubernetes" }

// Burst: informers deliver related events together; the state is loaded 10 ms after the first of them.
func (k *Kubernetes) Burst() debounce.Timing {
	return debounce.Timing{Quiet: 10 * time.Millisecond, Max: 10 * time.Millisecond}
}

// Watch starts the informers and calls changed once their caches hold the whole cluster, and after every event
// from then on, until ctx ends. The events of the initial listing are not passed on: a state loaded from caches
// still filling would be partial, and would withdraw identities.
func (k *Kubernetes) Watch(ctx context.Context, changed func()) error {
	var synced atomic.Bool
	if err := k.start(ctx, func() {
		if synced.Load() {
			changed()
		}
	}); err != nil {
		return err
	}
	synced.Store(true)
	go k.writeStatuses(ctx)
	if k.AddressFeed && k.LeaseNamespace != "" {
		go k.watchFeedLease(ctx)
	}
	changed()
	<-ctx.Done()
	return nil
}

// start starts the informers and waits until their caches hold the whole cluster, so the first state is never a
// partial one (which would withdraw identities). changed is called after every change.
func (k *Kubernetes) start(ctx context.Context, changed func()) error {
	var err error
	cfg := rest.CopyConfig(k.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return contactTracker{next: rt, k: k} })
	if k.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if k.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	k.lastGood, k.decoded = map[string]v1alpha1.FirewallPolicy{}, map[string]decodedPolicy{}
	f := informers.NewSharedInformerFactory(k.client, 0)
	k.ns = f.Core().V1().Namespaces().Informer()
	k.svcs = f.Core().V1().Services().Informer()
	all := []cache.SharedIndexInformer{k.ns, k.svcs}
	df := dynamicinformer.NewDynamicSharedInformerFactory(k.dynamic, 0)
	startSelf := func() {}
	if k.AddressFeed {
		// typed: the slices decode straight into their Go types, with no map per entry on the way (the start
		// lists the whole feed: 150,000 entries at 150,000 pods, several times their size as decoded JSON)
		rc, err := feedClient(cfg)
		if err != nil {
			return err
		}
		k.feed = cache.NewSharedIndexInformer(cache.NewListWatchFromClient(rc, v1alpha1.ResourceAddressSlices,
			metav1.NamespaceAll, fields.Everything()), &v1alpha1.AddressSlice{}, 0, cache.Indexers{})
		if err := k.feed.SetTransform(sliceOf); err != nil {
			return err
		}
		// this node's own Node, watched directly: its addresses do not wait on the feed (the kubelet's probes come
		// from them), and one object costs little
		sf := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(
			func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + k.NodeName }))
		k.self = sf.Core().V1().Nodes().Informer()
		if err := k.self.SetTransform(feed.SlimNode); err != nil {
			return err
		}
		all = append(all, k.feed, k.self)
		startSelf = func() {
			sf.Start(ctx.Done())
			go k.feed.Run(ctx.Done())
		}
	} else {
		k.pods = f.Core().V1().Pods().Informer()
		k.nodes = f.Core().V1().Nodes().Informer()
		all = append(all, k.pods, k.nodes)
		// pods are the bulk of a cluster, nodes the biggest objects: keep only what decides an ipcache entry
		if err := k.pods.SetTransform(feed.SlimPod); err != nil {
			return err
		}
		if err := k.nodes.SetTransform(feed.SlimNode); err != nil {
			return err
		}
		k.podStore, k.nodeStore = k.pods.GetStore(), k.nodes.GetStore()
	}
	useCIDRs, why, err := k.serviceCIDRsUsable(ctx)
	if err != nil {
		return err
	}
	if useCIDRs {
		k.cidrs = f.Networking().V1().ServiceCIDRs().Informer()
		all = append(all, k.cidrs)
		k.serviceRanges = ServiceRangesFromServiceCIDRs
	} else {
		k.serviceRanges = ServiceRangesFromClusterIPs + " (" + why + ")"
	}
	k.Log.WithField("serviceRanges", k.serviceRanges).Info("where the Service ranges come from")
	k.pols = df.ForResource(PoliciesResource).Informer()
	k.cfgs = df.ForResource(ConfigsResource).Informer()
	all = append(all, k.pols, k.cfgs)
	k.book = newAddressBook()
	k.statuses = newLatestState()
	handlers := map[cache.SharedIndexInformer]cache.ResourceEventHandler{
		k.ns:   k.policyHandler(namespaceChanged, changed),
		k.pols: k.policyHandler(specChanged, changed),
		k.cfgs: k.policyHandler(specChanged, changed),
		k.svcs: handlerOf(k.addressOn(ownerService, serviceClaims, changed)),
	}
	if k.AddressFeed {
		view := newFeedView(k.addressOn(ownerPod, k.podClaims, changed), k.addressOn(ownerNode, nodeClaims(ownerNode), changed))
		k.podStore, k.nodeStore = view.pods, view.nodes
		handlers[k.feed] = view.handler()
		handlers[k.self] = handlerOf(k.addressOn(ownerSelf, nodeClaims(ownerSelf), changed))
	} else {
		handlers[k.pods] = handlerOf(k.addressOn(ownerPod, k.podClaims, changed))
		handlers[k.nodes] = handlerOf(k.addressOn(ownerNode, nodeClaims(ownerNode), changed))
	}
	if k.cidrs != nil {
		handlers[k.cidrs] = handlerOf(k.addressOn(ownerServiceCIDR, serviceCIDRClaims, changed))
	}
	// synced once every handler has seen its informer's initial listing (not only once the stores hold it)
	synced := make([]cache.InformerSynced, 0, len(all))
	for inf, h := range handlers {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return err
		}
		synced = append(synced, reg.HasSynced)
	}
	// the cluster DNS Service's own changes (its cluster IPs are trusted resolvers) need a whole load; other
	// Services' do not
	if _, err := k.svcs.AddEventHandler(handlerOf(func(old, obj any, gone bool) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil && key == k.dnsService() {
			k.policyDirty.Store(true)
			changed()
		}
	})); err != nil {
		return err
	}
	f.Start(ctx.Done())
	df.Start(ctx.Done())
	startSelf()
	k.dns = &dnsEndpoints{k: k, ctx: ctx, changed: changed}
	if err := k.dns.watch(v1alpha1.DefaultClusterDNSService, true); err != nil {
		return err
	}
	k.Log.Info("waiting for the Kubernetes caches")
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		what := "pods, services, nodes"
		if k.AddressFeed {
			what = "services, addressslices"
		}
		return fmt.Errorf("the Kubernetes caches never filled (can the enforcer's service account list namespaces, "+
			"%s, firewallpolicies and firewallconfigs? are the CRDs installed?)", what)
	}
	return nil
}

// feedClient is a REST client for the address feed's AddressSlices that decodes them into their Go types.
func feedClient(cfg *rest.Config) (*rest.RESTClient, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(cfg)
	gv := v1alpha1.SchemeGroupVersion
	c.GroupVersion, c.APIPath, c.ContentType = &gv, "/apis", runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for addressslices: %w", err)
	}
	return rc, nil
}

// Where the Kubernetes source learns the Service ranges (State.ServiceRanges).
const (
	ServiceRangesFromServiceCIDRs = "ServiceCIDR objects"
	ServiceRangesFromClusterIPs   = "Services' cluster IPs and FirewallConfig clusterCIDRs"
)

// serviceCIDRsUsable asks the API server (discovery) whether it serves ServiceCIDRs, and whether this enforcer
// may list them; when not, it says why. Discovery is asked again until it answers (or ctx ends): an apiserver
// that is starting, or unreachable for a moment, is no answer.
func (k *Kubernetes) serviceCIDRsUsable(ctx context.Context) (bool, string, error) {
	gv := networkingv1.SchemeGroupVersion.String()
	for attempt := 0; ; attempt++ {
		resources, err := k.client.Discovery().ServerResourcesForGroupVersion(gv)
		switch {
		case apierrors.IsNotFound(err):
			return false, "the API server does not serve " + gv, nil
		case err == nil:
			if !slices.ContainsFunc(resources.APIResources, func(r metav1.APIResource) bool { return r.Name == "servicecidrs" }) {
				return false, "the API server does not serve " + gv + " servicecidrs", nil
			}
			_, err = k.client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{Limit: 1})
			switch {
			case err == nil:
				return true, "", nil
			case apierrors.IsForbidden(err):
				return false, "this enforcer may not list servicecidrs: its RBAC role predates them", nil
			case apierrors.IsNotFound(err):
				return false, "the API server does not serve " + gv + " servicecidrs", nil
			}
		}
		if attempt == 0 {
			k.Log.WithError(err).Warn("cannot tell whether the API server serves ServiceCIDRs; asking again")
		}
		select {
		case <-ctx.Done():
			return false, "", ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// Load is the desired state the caches describe now; it never fails.
func (k *Kubernetes) Load() (State, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.policyDirty.Store(false) // what changes from here on is loaded next time
	s := State{Origins: map[string]string{}}
	for _, obj := range k.ns.GetStore().List() {
		s.Namespaces = append(s.Namespaces, *obj.(*corev1.Namespace))
	}
	sort.Slice(s.Namespaces, func(i, j int) bool { return s.Namespaces[i].Name < s.Namespaces[j].Name })

	for _, obj := range k.cfgs.GetStore().List() {
		var c v1alpha1.FirewallConfig
		if err := fromUnstructured(obj, &c); err != nil {
			s.Problems = append(s.Problems, ObjectProblem{Kind: v1alpha1.KindFirewallConfig, Name: nameOf(obj), Origin: "kubernetes", Message: err.Error()})
			continue
		}
		if c.Name != v1alpha1.DefaultConfigName {
			continue // the schema refuses other names; an older CRD may not
		}
		if errs := c.Validate(); len(errs) > 0 {
			msg := errors.Join(errs...).Error()
			if k.goodCfg != nil {
				msg += " (the last good version stays in force)"
			}
			s.Problems = append(s.Problems, ObjectProblem{Kind: v1alpha1.KindFirewallConfig, Name: c.Name, Origin: "kubernetes", Message: msg})
			continue
		}
		k.goodCfg = &c
	}
	if len(k.cfgs.GetStore().ListKeys()) == 0 {
		k.goodCfg = nil // deleted: every default
	}
	s.Config = k.goodCfg

	present := map[string]bool{}
	for _, obj := range k.pols.GetStore().List() {
		name := nameOf(obj)
		present[name] = true
		// decoded and validated once per version, not at every load
		rv := ""
		if u, ok := obj.(*unstructured.Unstructured); ok {
			rv = u.GetResourceVersion()
		}
		d, ok := k.decoded[name]
		if !ok || rv == "" || d.version != rv {
			d = decodedPolicy{version: rv}
			d.err = fromUnstructured(obj, &d.policy)
			if d.err == nil {
				d.err = errors.Join(d.policy.Validate()...)
			}
			k.decoded[name] = d
		}
		p, err := d.policy, d.err
		if err != nil {
			msg := err.Error()
			if good, ok := k.lastGood[name]; ok {
				s.Policies = append(s.Policies, good)
				s.Origins[name] = "kubernetes"
			}
			s.Problems = append(s.Problems, ObjectProblem{Kind: v1alpha1.KindFirewallPolicy, Name: name, Origin: "kubernetes", Message: msg})
			continue
		}
		k.lastGood[name] = p
		s.Policies = append(s.Policies, p)
		s.Origins[name] = "kubernetes"
	}
	for name := range k.lastGood {
		if !present[name] {
			delete(k.lastGood, name)
		}
	}
	for name := range k.decoded {
		if !present[name] {
			delete(k.decoded, name)
		}
	}
	sort.Slice(s.Policies, func(i, j int) bool { return s.Policies[i].Name < s.Policies[j].Name })
	if changes, ok := k.book.changes(); ok {
		s.AddressChanges = changes
	}
	s.allAddresses = k.book.takeAll // read only when every address is applied
	k.hostPortsDirty.Store(false)
	s.HostPorts = k.hostPorts()
	s.ServiceRanges = k.serviceRanges
	resolvers, err := k.dnsResolvers(s.Config)
	if err != nil {
		return State{}, err
	}
	s.DNSResolvers = resolvers
	return s, nil
}

// dnsService is the cluster DNS Service watched now, namespace/name.
func (k *Kubernetes) dnsService() string {
	if k.dns == nil {
		return v1alpha1.DefaultClusterDNSService
	}
	k.dns.mu.Lock()
	defer k.dns.mu.Unlock()
	return k.dns.service
}

// nodeAddresses are a Node's internal and external IPs: its node-class addresses, and where its pods' hostPorts
// open.
func nodeAddresses(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// hostPorts lists every running pod's hostPorts on the addresses of its node (or the hostIP it names), one per
// address family the pod has.
func (k *Kubernetes) hostPorts() []HostPort {
	nodeAddrs := func(name string) []netip.Addr {
		if obj, ok, _ := k.nodeStore.GetByKey(name); ok {
			return nodeAddresses(obj.(*corev1.Node))
		}
		return nil
	}
	var out []HostPort
	var pods []*corev1.Pod
	k.hostPortPods.Range(func(key, _ any) bool {
		if obj, ok, _ := k.podStore.GetByKey(key.(string)); ok {
			pods = append(pods, obj.(*corev1.Pod))
		}
		return true
	})
	sort.Slice(pods, func(i, j int) bool { return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name })
	for _, p := range pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed ||
			len(p.Spec.Containers) == 0 {
			continue
		}
		var podIPs []netip.Addr
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				podIPs = append(podIPs, a.Unmap())
			}
		}
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				proto, ok := map[corev1.Protocol]uint8{"": 6, corev1.ProtocolTCP: 6, corev1.ProtocolUDP: 17,
					corev1.ProtocolSCTP: 132}[port.Protocol]
				if port.HostPort <= 0 || port.HostPort > 65535 || !ok {
					continue
				}
				nodes := nodeAddrs(p.Spec.NodeName)
				if ip, err := netip.ParseAddr(port.HostIP); err == nil && !ip.IsUnspecified() {
					nodes = []netip.Addr{ip.Unmap()}
				}
				for _, node := range nodes {
					for _, pod := range podIPs {
						if node.Is4() == pod.Is4() {
							out = append(out, HostPort{Node: node, Protocol: proto, Port: uint16(port.HostPort), Pod: pod,
								PodPort: uint16(port.ContainerPort), Namespace: p.Namespace, Local: p.Spec.NodeName == k.NodeName})
						}
					}
				}
			}
		}
	}
	return out
}

// The claims of each kind of object on addresses: pods on other nodes and Services by their namespace, node
// addresses, and the pod and Service ranges as the cluster.

func (k *Kubernetes) podClaims(obj any) []prefixClaim {
	p := obj.(*corev1.Pod)
	if p.Spec.HostNetwork || p.Spec.NodeName == k.NodeName || p.Status.Phase == corev1.PodSucceeded ||
		p.Status.Phase == corev1.PodFailed {
		return nil
	}
	c := claim{owner: owner{kind: ownerPod, namespace: unique.Make(p.Namespace), name: p.Name}, class: uint8(bpf.ClassPod),
		created: nanos(p.CreationTimestamp)}
	out := make([]prefixClaim, 0, len(p.Status.PodIPs))
	for _, ip := range p.Status.PodIPs {
		out = addClaim(out, ip.IP, c)
	}
	return out
}

func serviceClaims(obj any) []prefixClaim {
	svc := obj.(*corev1.Service)
	c := claim{owner: owner{kind: ownerService, namespace: unique.Make(svc.Namespace), name: svc.Name}, class: uint8(bpf.ClassService),
		created: nanos(svc.CreationTimestamp)}
	var out []prefixClaim
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != corev1.ClusterIPNone {
			out = addClaim(out, ip, c)
		}
	}
	return out
}

// nodeClaims are a Node's claims, as kind (ownerNode, or ownerSelf for this node's own Node).
func nodeClaims(kind ownerKind) func(obj any) []prefixClaim {
	return func(obj any) []prefixClaim {
		n := obj.(*corev1.Node)
		o := owner{kind: kind, namespace: noNamespace, name: n.Name}
		var out []prefixClaim
		for _, a := range nodeAddresses(n) {
			out = setClaim(out, netip.PrefixFrom(a, a.BitLen()), claim{owner: o, class: uint8(bpf.ClassNode)})
		}
		for _, c := range n.Spec.PodCIDRs {
			if p, err := v1alpha1.ParseCIDR(c); err == nil {
				// no namespace: its pods not known yet
				out = setClaim(out, p.Masked(), claim{owner: o, class: uint8(bpf.ClassPod)})
			}
		}
		return out
	}
}

func serviceCIDRClaims(obj any) []prefixClaim {
	sc := obj.(*networkingv1.ServiceCIDR)
	var out []prefixClaim
	for _, c := range sc.Spec.CIDRs {
		if p, err := v1alpha1.ParseCIDR(c); err == nil {
			out = setClaim(out, p.Masked(), claim{owner: owner{kind: ownerServiceCIDR, namespace: noNamespace, name: sc.Name},
				class: uint8(bpf.ClassCluster)})
		}
	}
	return out
}

// nanos is a creation time as a claim keeps it (none: the oldest).
func nanos(t metav1.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}

// addClaim adds c on the address ip (if it is one) to claims.
func addClaim(claims []prefixClaim, ip string, c claim) []prefixClaim {
	if a, err := netip.ParseAddr(ip); err == nil {
		a = a.Unmap()
		return setClaim(claims, netip.PrefixFrom(a, a.BitLen()), c)
	}
	return claims
}

// setClaim puts c on p in claims, instead of the claim there already: one claim per prefix and object, the
// last one said.
func setClaim(claims []prefixClaim, p netip.Prefix, c claim) []prefixClaim {
	if i := slices.IndexFunc(claims, func(pc prefixClaim) bool { return pc.prefix == p }); i >= 0 {
		claims[i].claim = c
		return claims
	}
	return append(claims, prefixClaim{prefix: p, claim: c})
}

// addressOn keeps the book up to date with one kind of object (old is nil on an add; gone on a delete, obj then
// the object as last seen), and calls changed when an event changed what the object claims (a Node's heartbeat,
// a pod's container status: nothing, and no call). A pod with hostPorts, or a Node while such pods exist, marks
// the hostPorts changed too. The book keeps nothing per object: what the object claimed is its claims as old
// (or, when it goes, obj) says, which is the object this handler was last given.
func (k *Kubernetes) addressOn(kind ownerKind, claimsOf func(any) []prefixClaim, changed func()) func(old, obj any, gone bool) {
	return func(old, obj any, gone bool) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if t, ok := old.(cache.DeletedFinalStateUnknown); ok {
			old = t.Obj
		}
		var was, now []prefixClaim
		switch {
		case gone:
			was = claimsOf(obj)
		case old != nil:
			was, now = claimsOf(old), claimsOf(obj)
		default:
			now = claimsOf(obj)
		}
		moved := k.book.set(was, now)
		switch kind {
		case ownerPod:
			key, err := cache.MetaNamespaceKeyFunc(obj)
			if err != nil {
				return
			}
			had, _ := k.hostPortPods.Load(key)
			has := !gone && len(obj.(*corev1.Pod).Spec.Containers) > 0
			if has {
				k.hostPortPods.Store(key, true)
			} else {
				k.hostPortPods.Delete(key)
			}
			if (had != nil || has) && (moved || had == nil || !has || podChanged(old, obj)) {
				k.hostPortsDirty.Store(true)
				moved = true
			}
		case ownerNode:
			if moved && k.anyHostPortPods() {
				k.hostPortsDirty.Store(true)
			}
		}
		if moved {
			changed()
		}
	}
}

// handlerOf makes an informer's handler of an addressOn.
func handlerOf(on func(old, obj any, gone bool)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { on(nil, obj, false) },
		UpdateFunc: func(old, obj any) { on(old, obj, false) },
		DeleteFunc: func(obj any) { on(nil, obj, true) },
	}
}

// podChanged: did a pod's hostPorts or phase change (its slim form holds little else)?
func podChanged(old, obj any) bool {
	a, ok1 := old.(*corev1.Pod)
	b, ok2 := obj.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	return a.Status.Phase != b.Status.Phase || !equality.Semantic.DeepEqual(a.Spec.Containers, b.Spec.Containers)
}

func (k *Kubernetes) anyHostPortPods() bool {
	found := false
	k.hostPortPods.Range(func(_, _ any) bool { found = true; return false })
	return found
}

// policyHandler marks the state changed for namespaces, policies and the config: on every add and delete, and on
// an update when relevant says it changes what Moat reads (a policy's own status write does not).
func (k *Kubernetes) policyHandler(relevant func(old, obj any) bool, changed func()) cache.ResourceEventHandler {
	mark := func() {
		k.policyDirty.Store(true)
		changed()
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { mark() },
		UpdateFunc: func(old, obj any) {
			if relevant(old, obj) {
				mark()
			}
		},
		DeleteFunc: func(any) { mark() },
	}
}

// namespaceChanged: Moat reads a namespace's name and labels.
func namespaceChanged(old, obj any) bool {
	a, ok1 := old.(*corev1.Namespace)
	b, ok2 := obj.(*corev1.Namespace)
	return !ok1 || !ok2 || !maps.Equal(a.Labels, b.Labels)
}

// specChanged: a policy's or config's generation moves with its spec, not with its status.
func specChanged(old, obj any) bool {
	a, ok1 := old.(metav1.Object)
	b, ok2 := obj.(metav1.Object)
	return !ok1 || !ok2 || a.GetGeneration() == 0 || a.GetGeneration() != b.GetGeneration() ||
		!maps.Equal(a.GetLabels(), b.GetLabels())
}

// AddressChanges takes what changed of the cluster's addresses since the state was last loaded (or this was
// last called), when nothing else changed; ok is false when something else did, and the whole state is to be
// loaded.
func (k *Kubernetes) AddressChanges() (u AddressUpdate, ok bool) {
	if k.policyDirty.Load() {
		return u, false
	}
	if u.Changed, ok = k.book.changes(); !ok {
		return u, false // too many: the whole state applies them
	}
	if k.hostPortsDirty.Swap(false) {
		hp := k.hostPorts()
		u.HostPorts = &hp
	}
	return u, true
}

func fromUnstructured(obj any, into any) error {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("unexpected object %T", obj)
	}
	return runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into)
}

func nameOf(obj any) string {
	if m, err := meta.Accessor(obj); err == nil {
		return m.GetName()
	}
	return ""
}

// WriteStatus sets every FirewallPolicy's Accepted condition (and how many namespaces it selects) from the state
// just applied, writing only what changed. Enforcers on every node compute the same status, so after the first
// writes, the others find nothing to change; a conflict means another node was first.
func (k *Kubernetes) WriteStatus(ctx context.Context, s State) error {
	invalid := map[string]string{}
	for _, p := range s.Problems {
		if p.Kind == v1alpha1.KindFirewallPolicy {
			invalid[p.Name] = p.Message
		}
	}
	var errs []error
	for _, obj := range k.pols.GetStore().List() {
		u := obj.(*unstructured.Unstructured)
		var p v1alpha1.FirewallPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
			continue // nothing typed to write into
		}
		want := p.Status.DeepCopy()
		cond := metav1.Condition{Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonValid,
			Message: "compiled into the datapath", ObservedGeneration: p.Generation}
		if msg, bad := invalid[p.Name]; bad {
			cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, v1alpha1.ReasonInvalid, truncate(msg, 1024)
			if _, ok := k.lastGoodName(p.Name); ok {
				cond.Message = truncate(msg+" (the last good version stays in force)", 1024)
			}
		}
		meta.SetStatusCondition(&want.Conditions, cond)
		want.ObservedGeneration = p.Generation
		want.Namespaces = int32(len(resolve.Selected(&p, s.Namespaces)))
		if _, bad := invalid[p.Name]; bad {
			want.Namespaces = 0
		}
		if statusEqual(&p.Status, want) {
			continue
		}
		p.Status = *want
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out := &unstructured.Unstructured{Object: obj}
		out.SetAPIVersion(v1alpha1.APIVersion)
		out.SetKind(v1alpha1.KindFirewallPolicy)
		_, err = k.dynamic.Resource(PoliciesResource).UpdateStatus(ctx, out, metav1.UpdateOptions{})
		switch {
		case err == nil:
			k.Log.WithFields(logrus.Fields{"policy": p.Name, "accepted": cond.Status, "reason": cond.Reason}).Info("policy status written")
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
			// another node wrote first, or the policy is gone: the next event brings the news
		default:
			errs = append(errs, fmt.Errorf("status of FirewallPolicy %s: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (k *Kubernetes) lastGoodName(name string) (v1alpha1.FirewallPolicy, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p, ok := k.lastGood[name]
	return p, ok
}

func statusEqual(a, b *v1alpha1.FirewallPolicyStatus) bool {
	if a.ObservedGeneration != b.ObservedGeneration || a.Namespaces != b.Namespaces || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		x, y := a.Conditions[i], b.Conditions[i]
		if x.Type != y.Type || x.Status != y.Status || x.Reason != y.Reason || x.Message != y.Message ||
			x.ObservedGeneration != y.ObservedGeneration {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// contactTracker watches every request the source makes: one that cannot reach the API server means contact is
// lost (the informers keep their caches and retry on their own, with backoff and jitter), any answer that it is
// back.
type contactTracker struct {
	next http.RoundTripper
	k    *Kubernetes
}

func (t contactTracker) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	switch {
	case err == nil:
		t.k.regain()
	case req.Context().Err() == nil:
		t.k.lose(err)
	}
	return resp, err
}

// lose records that the API server cannot be reached, and logs it once per outage. Meanwhile the last known state
// stays enforced.
func (k *Kubernetes) lose(err error) {
	k.contactMu.Lock()
	first := k.lostAt.IsZero()
	if first {
		k.lostAt = time.Now()
	}
	k.lostWhy = err.Error()
	k.contactMu.Unlock()
	if first {
		k.Log.WithError(err).Warn("cut off from the API server: the last known state stays enforced until it answers")
	}
}

// regain records that the API server answered.
func (k *Kubernetes) regain() {
	k.contactMu.Lock()
	if k.lostAt.IsZero() {
		k.contactMu.Unlock()
		return
	}
	lost := time.Since(k.lostAt)
	k.lostAt, k.lostWhy = time.Time{}, ""
	k.contactMu.Unlock()
	k.Log.WithField("after", lost.Round(time.Second)).Info("in touch with the API server again")
}

// Contact says since when the API server cannot be reached, and why (zero time: it can).
func (k *Kubernetes) Contact() (lostAt time.Time, why string) {
	k.contactMu.Lock()
	defer k.contactMu.Unlock()
	return k.lostAt, k.lostWhy
}

// Stale says whether the address feed is known to be out of date: no publisher renewed its Lease lately.
func (k *Kubernetes) Stale() string {
	if s := k.feedStale.Load(); s != nil {
		return *s
	}
	return ""
}

// watchFeedLease reads the address feed publisher's Lease every FeedCheckEvery until ctx ends, and marks the feed
// stale while nobody renews it.
func (k *Kubernetes) watchFeedLease(ctx context.Context) {
	every, after := cmp.Or(k.FeedCheckEvery, 10*time.Second), cmp.Or(k.FeedStaleAfter, time.Minute)
	name := k.LeaseNamespace + "/" + feed.Lease
	var logged string
	for {
		why := ""
		lease, err := k.client.CoordinationV1().Leases(k.LeaseNamespace).Get(ctx, feed.Lease, metav1.GetOptions{})
		const meanwhile = " (is the Deployment moat-feed running?); pods on other nodes are known only as the feed " +
			"last had them, new ones as pods of unknown namespace"
		switch {
		case apierrors.IsNotFound(err):
			why = "the address feed has no publisher: the Lease " + name + " does not exist" + meanwhile
		case err != nil:
			// the API server cannot be asked: contact tracking says so
		case lease.Spec.RenewTime == nil || time.Since(lease.Spec.RenewTime.Time) > after:
			since := "never"
			if lease.Spec.RenewTime != nil {
				since = lease.Spec.RenewTime.UTC().Format(time.RFC3339)
			}
			why = "the address feed is stale: its publisher last renewed the Lease " + name + " at " + since + meanwhile
		}
		if err == nil || apierrors.IsNotFound(err) {
			k.feedStale.Store(&why)
			if why != logged {
				if why != "" {
					k.Log.Warn(why)
				} else {
					k.Log.WithField("lease", name).Info("the address feed is published")
				}
				logged = why
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
