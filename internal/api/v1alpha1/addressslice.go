package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KindAddressSlice is the kind of the address feed's objects.
const KindAddressSlice = "AddressSlice"

// AddressSliceMaxEntries bounds the pods and nodes of one slice: a change rewrites one slice, so a small one keeps
// what every node receives per change small.
const AddressSliceMaxEntries = 100

// AddressSlice is a part of the address feed: the addresses of up to 100 pods and nodes of the cluster, in the
// compact form the enforcers need to decide remote addresses, written by the feed publisher (moat-feed, one
// leader per cluster) from its watch of Pods and Nodes. Enforcers watch the slices instead of every Pod and Node:
// what each node receives does not grow with the fields Moat ignores, and a Node's status report reaches none of
// them. An entry stays in its slice while it lives.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=adrs,categories=moat
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AddressSlice struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	// Pods with addresses: running or pending, not on the host's network.
	// +kubebuilder:validation:MaxItems=100
	Pods []PodAddresses `json:"pods,omitempty"`
	// Nodes with their addresses and pod ranges.
	// +kubebuilder:validation:MaxItems=100
	Nodes []NodeAddresses `json:"nodes,omitempty"`
}

// PodAddresses is what the enforcers read of a pod.
type PodAddresses struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Node is the node the pod runs on (its own node's pods are the plugin's to tag).
	Node string `json:"node,omitempty"`
	// IPs are the pod's addresses (status.podIPs).
	// +kubebuilder:validation:MaxItems=2
	IPs []string `json:"ips"`
	// Created breaks ties when two objects claim one address: the newer wins.
	Created metav1.Time `json:"created"`
	// HostPorts are the ports the pod opens on its node.
	HostPorts []PodHostPort `json:"hostPorts,omitempty"`
}

// PodHostPort is one of a pod's hostPorts.
type PodHostPort struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// NodeAddresses is what the enforcers read of a node.
type NodeAddresses struct {
	Name string `json:"name"`
	// IPs are the node's internal and external addresses.
	IPs []string `json:"ips,omitempty"`
	// PodCIDRs are the node's pod ranges (spec.podCIDRs).
	PodCIDRs []string `json:"podCIDRs,omitempty"`
}

// AddressSliceList is a list of AddressSlice.
// +kubebuilder:object:root=true
type AddressSliceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AddressSlice `json:"items"`
}
