package enforcer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/hostfw"
)

// Labels that make a node one of the control plane.
var controlPlaneLabels = []string{"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"}

// HostInput is what this node's safety set is derived from, read from the API server when asked (moatctl host is
// an operator's question; no watch is kept for it): every Node (addresses, control-plane role, kubelet port, pod
// ranges), from the API server's cache, and the kubernetes Service's endpoints.
func (k *Kubernetes) HostInput(ctx context.Context) (hostfw.Input, error) {
	client, err := kubernetes.NewForConfig(k.Config)
	if err != nil {
		return hostfw.Input{}, fmt.Errorf("kubernetes client: %w", err)
	}
	in := hostfw.Input{Node: k.NodeName}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return in, fmt.Errorf("list the nodes: %w", err)
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		hn := hostfw.Node{Name: n.Name, Addresses: nodeAddresses(n), KubeletPort: uint16(n.Status.DaemonEndpoints.KubeletEndpoint.Port)}
		for _, l := range controlPlaneLabels {
			if _, ok := n.Labels[l]; ok {
				hn.ControlPlane = true
			}
		}
		in.Nodes = append(in.Nodes, hn)
		for _, c := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
			if p, err := netip.ParsePrefix(c); err == nil && !slices.Contains(in.PodRanges, p.Masked()) {
				in.PodRanges = append(in.PodRanges, p.Masked())
			}
		}
	}
	eps, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx,
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
	if err != nil {
		return in, fmt.Errorf("list the kubernetes Service's endpoints: %w", err)
	}
	for _, s := range eps.Items {
		in.APIServers = append(in.APIServers, apiServerEndpoints(s)...)
	}
	return in, nil
}

// apiServerEndpoints are the addresses and port (https, or the first) of a slice of the kubernetes Service.
func apiServerEndpoints(s discoveryv1.EndpointSlice) []netip.AddrPort {
	var port int32
	for _, p := range s.Ports {
		if p.Port != nil && (port == 0 || (p.Name != nil && *p.Name == "https")) {
			port = *p.Port
		}
	}
	if port <= 0 || port > 65535 {
		return nil
	}
	var out []netip.AddrPort
	for _, ep := range s.Endpoints {
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			continue
		}
		for _, a := range ep.Addresses {
			if addr, err := netip.ParseAddr(a); err == nil {
				out = append(out, netip.AddrPortFrom(addr.Unmap(), uint16(port)))
			}
		}
	}
	return out
}

// HostSafety is the node's safety set from in, under the FirewallConfig in force.
func (e *Enforcer) HostSafety(in hostfw.Input) agentapi.HostSafety {
	if cfg := e.Snapshot().State.Config; cfg != nil {
		in.Config = cfg.Spec.HostFirewall
	}
	entries, warnings := hostfw.Derive(in)
	out := agentapi.HostSafety{Node: in.Node, Warnings: warnings, Entries: []agentapi.SafetyEntry{}}
	for _, en := range entries {
		se := agentapi.SafetyEntry{Name: string(en.Name), What: en.What, Ports: en.Ports(), Learned: en.Learned,
			Overridable: en.Overridable, Sources: []agentapi.SafetySource{}}
		for _, src := range en.Sources {
			se.Sources = append(se.Sources, agentapi.SafetySource{Prefix: src.Prefix.String(), From: src.From})
		}
		out.Entries = append(out.Entries, se)
	}
	return out
}
