// Package feed is the address feed: a publisher (one leader per cluster) that watches every Pod and Node and
// writes what the enforcers need of them, their addresses, into AddressSlice objects of up to 100 entries; and the
// conversions both ends share. The enforcers watch the slices instead of every Pod and Node (docs/operations.md).
package feed

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// PodKey and NodeKey name an entry of the feed, whichever slice holds it: a pod by namespace and name, a node by
// name.
func PodKey(namespace, name string) string { return "pod/" + namespace + "/" + name }

// NodeKey names a node's entry (see PodKey).
func NodeKey(name string) string { return "node/" + name }

// SlimPod is an informer transform that keeps of a pod only what decides an address: its name, node, addresses,
// phase, creation time and hostPorts (in one container of its own).
func SlimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	slim := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIPs: p.Status.PodIPs},
	}
	var hostPorts []corev1.ContainerPort
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.HostPort != 0 {
				hostPorts = append(hostPorts, port)
			}
		}
	}
	if len(hostPorts) > 0 {
		slim.Spec.Containers = []corev1.Container{{Ports: hostPorts}}
	}
	return slim, nil
}

// SlimNode is an informer transform that keeps of a node its name, addresses and pod ranges: a node's status
// reports (conditions, images, heartbeats) then compare equal and cost nothing.
func SlimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion,
		CreationTimestamp: n.CreationTimestamp}, Spec: corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs}}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			slim.Status.Addresses = append(slim.Status.Addresses, a)
		}
	}
	return slim, nil
}

// PodEntry is a pod's entry in the feed; false for a pod that has none: on the host's network, finished, or with
// no address yet.
func PodEntry(p *corev1.Pod) (v1alpha1.PodAddresses, bool) {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed ||
		len(p.Status.PodIPs) == 0 {
		return v1alpha1.PodAddresses{}, false
	}
	e := v1alpha1.PodAddresses{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Created: p.CreationTimestamp}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			e.IPs = append(e.IPs, a.Unmap().String())
		}
	}
	if len(e.IPs) == 0 {
		return v1alpha1.PodAddresses{}, false
	}
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.HostPort != 0 {
				e.HostPorts = append(e.HostPorts, v1alpha1.PodHostPort{HostPort: port.HostPort, ContainerPort: port.ContainerPort,
					Protocol: string(port.Protocol), HostIP: port.HostIP})
			}
		}
	}
	return e, true
}

// NodeEntry is a node's entry in the feed.
func NodeEntry(n *corev1.Node) v1alpha1.NodeAddresses {
	e := v1alpha1.NodeAddresses{Name: n.Name, PodCIDRs: slices.Clone(n.Spec.PodCIDRs)}
	if len(e.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		e.PodCIDRs = []string{n.Spec.PodCIDR}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			e.IPs = append(e.IPs, a.Address)
		}
	}
	return e
}

// PodOf is the slim pod an entry stands for: what an enforcer reading the feed handles as it would a watched pod.
func PodOf(e v1alpha1.PodAddresses) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: e.Name, Namespace: e.Namespace, CreationTimestamp: e.Created},
		Spec: corev1.PodSpec{NodeName: e.Node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	for _, ip := range e.IPs {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(e.HostPorts) > 0 {
		var ports []corev1.ContainerPort
		for _, hp := range e.HostPorts {
			ports = append(ports, corev1.ContainerPort{HostPort: hp.HostPort, ContainerPort: hp.ContainerPort,
				Protocol: corev1.Protocol(hp.Protocol), HostIP: hp.HostIP})
		}
		p.Spec.Containers = []corev1.Container{{Ports: ports}}
	}
	return p
}

// NodeOf is the slim node an entry stands for.
func NodeOf(e v1alpha1.NodeAddresses) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.Name}, Spec: corev1.NodeSpec{PodCIDRs: e.PodCIDRs}}
	for _, ip := range e.IPs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}
