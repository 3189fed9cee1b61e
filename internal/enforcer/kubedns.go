package enforcer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// dnsEndpoints watches the EndpointSlices of the cluster DNS Service (one Service: its namespace's slices with
// its name's label, a handful of objects whatever the cluster's size), whose addresses are trusted resolvers.
// When FirewallConfig names another Service, the watch moves to it.
type dnsEndpoints struct {
	k       *Kubernetes
	ctx     context.Context
	changed func()

	mu      sync.Mutex
	service string // namespace/name watched
	inf     cache.SharedIndexInformer
	cancel  context.CancelFunc // stops inf
}

// watch makes the informer follow service (namespace/name); synced says whether to wait for its first listing.
func (d *dnsEndpoints) watch(service string, synced bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.service == service && d.inf != nil {
		return nil
	}
	ns, name, ok := strings.Cut(service, "/")
	if !ok {
		return fmt.Errorf("cluster DNS Service %q: want namespace/name", service)
	}
	if d.cancel != nil {
		d.cancel()
	}
	f := informers.NewSharedInformerFactoryWithOptions(d.k.client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=" + name
		}))
	inf := f.Discovery().V1().EndpointSlices().Informer()
	if _, err := inf.AddEventHandler(d.k.policyHandler(func(old, obj any) bool { return true }, d.changed)); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(d.ctx)
	d.cancel = cancel
	f.Start(ctx.Done())
	d.service, d.inf = service, inf
	if synced && !cache.WaitForCacheSync(d.ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("the EndpointSlices of the cluster DNS Service %s: %w", service, d.ctx.Err())
	}
	return nil
}

// addresses are the endpoints' addresses, sorted.
func (d *dnsEndpoints) addresses() []netip.Addr {
	d.mu.Lock()
	inf := d.inf
	d.mu.Unlock()
	if inf == nil {
		return nil
	}
	var out []netip.Addr
	for _, obj := range inf.GetStore().List() {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// dnsResolvers are the trusted resolvers the cluster says: the cluster DNS Service's cluster IPs and the
// addresses of its endpoints, or what FirewallConfig lists instead. NodeLocal DNSCache's address is the
// enforcer's to add, which sees whether this node has it.
func (k *Kubernetes) dnsResolvers(cfg *v1alpha1.FirewallConfig) ([]netip.Addr, error) {
	service := v1alpha1.DefaultClusterDNSService
	if cfg != nil && cfg.Spec.DNS != nil {
		if len(cfg.Spec.DNS.TrustedResolvers) > 0 {
			return nil, nil // the config's list, which resolve reads
		}
		if cfg.Spec.DNS.ClusterDNSService != "" {
			service = cfg.Spec.DNS.ClusterDNSService
		}
	}
	if err := k.dns.watch(service, false); err != nil {
		return nil, err
	}
	out := k.dns.addresses()
	if obj, ok, _ := k.svcs.GetStore().GetByKey(service); ok {
		if svc, ok := obj.(*corev1.Service); ok {
			for _, ip := range svc.Spec.ClusterIPs {
				if a, err := netip.ParseAddr(ip); err == nil {
					out = append(out, a.Unmap())
				}
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}
