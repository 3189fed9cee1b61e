package enforcer

import (
	"net/netip"
	"slices"
	"time"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/feed"
)

// feedSlice is an AddressSlice as the enforcer's informer keeps it: its name and version, and its entries in a
// compact form of their own. As API objects (strings for addresses, a time with its location, a slice header per
// list) the feed's 150,000 pod entries took about 200 bytes each; a feedPod is 72.
type feedSlice struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	pods  []feedPod
	nodes []v1alpha1.NodeAddresses
}

// feedPod is a pod's entry of the feed (v1alpha1.PodAddresses).
type feedPod struct {
	name            string
	namespace, node unique.Handle[string]
	created         int64    // Unix seconds (the API's times have no finer grain)
	v6              [16]byte // its IPv6 address, if has6
	v4              [4]byte  // its IPv4 address, if has4
	has4, has6      bool
	hostPorts       *[]v1alpha1.PodHostPort // nil: none
}

// DeepCopyObject is for the informer (runtime.Object).
func (s *feedSlice) DeepCopyObject() runtime.Object {
	out := &feedSlice{TypeMeta: s.TypeMeta, pods: slices.Clone(s.pods), nodes: make([]v1alpha1.NodeAddresses, len(s.nodes))}
	s.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	for i := range out.pods {
		if hp := out.pods[i].hostPorts; hp != nil {
			c := slices.Clone(*hp)
			out.pods[i].hostPorts = &c
		}
	}
	for i := range s.nodes {
		s.nodes[i].DeepCopyInto(&out.nodes[i])
	}
	return out
}

// compactSlice is the feedSlice of an AddressSlice. An address that does not parse is left out (the publisher
// writes only parsed ones), and of two of one family the first counts (a pod has one of each).
func compactSlice(as *v1alpha1.AddressSlice) *feedSlice {
	out := &feedSlice{pods: make([]feedPod, 0, len(as.Pods)), nodes: as.Nodes}
	out.Name, out.ResourceVersion = as.Name, as.ResourceVersion
	for _, e := range as.Pods {
		p := feedPod{name: e.Name, namespace: unique.Make(e.Namespace), node: unique.Make(e.Node),
			created: e.Created.Unix()}
		if e.Created.IsZero() {
			p.created = 0
		}
		for _, ip := range e.IPs {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				continue
			}
			switch a = a.Unmap(); {
			case a.Is4() && !p.has4:
				p.v4, p.has4 = a.As4(), true
			case a.Is6() && !p.has6:
				p.v6, p.has6 = a.As16(), true
			}
		}
		if len(e.HostPorts) > 0 {
			hp := slices.Clone(e.HostPorts)
			p.hostPorts = &hp
		}
		out.pods = append(out.pods, p)
	}
	return out
}

// entry is the feed's entry the compact one stands for.
func (p *feedPod) entry() v1alpha1.PodAddresses {
	e := v1alpha1.PodAddresses{Namespace: p.namespace.Value(), Name: p.name, Node: p.node.Value()}
	if p.created != 0 {
		e.Created = metav1.NewTime(time.Unix(p.created, 0))
	}
	if p.has4 {
		e.IPs = append(e.IPs, netip.AddrFrom4(p.v4).String())
	}
	if p.has6 {
		e.IPs = append(e.IPs, netip.AddrFrom16(p.v6).String())
	}
	if p.hostPorts != nil {
		e.HostPorts = *p.hostPorts
	}
	return e
}

// pod is the slim pod the entry stands for.
func (p *feedPod) pod() *corev1.Pod { return feed.PodOf(p.entry()) }

// same: do the two entries say the same?
func (p *feedPod) same(q *feedPod) bool {
	if p == q {
		return true
	}
	if p.name != q.name || p.namespace != q.namespace || p.node != q.node || p.created != q.created ||
		p.has4 != q.has4 || p.has6 != q.has6 || p.v4 != q.v4 || p.v6 != q.v6 {
		return false
	}
	if (p.hostPorts == nil) != (q.hostPorts == nil) {
		return false
	}
	return p.hostPorts == nil || slices.Equal(*p.hostPorts, *q.hostPorts)
}
