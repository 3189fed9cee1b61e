// Package v1alpha1 is Moat's policy API, group moat.dev, version v1alpha1: FirewallConfig (the cluster's
// defaults, a singleton named "default") and FirewallPolicy, both cluster-scoped. docs/policy.md is the
// reference; ../shared/DESIGN.md has the shape.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group and version of the API.
const (
	Group      = "moat.dev"
	Version    = "v1alpha1"
	APIVersion = Group + "/" + Version
)

// Kinds.
const (
	KindFirewallConfig = "FirewallConfig"
	KindFirewallPolicy = "FirewallPolicy"
)

// DefaultConfigName is the name of the one FirewallConfig that counts.
const DefaultConfigName = "default"

// Action of a rule, or a default.
type Action string

// Actions.
const (
	ActionAllow Action = "Allow"
	ActionDeny  Action = "Deny"
)

// Mode of a policy.
type Mode string

// Modes.
const (
	ModeEnforce Mode = "Enforce"
	ModeAudit   Mode = "Audit"
)

// DefaultPriority of a policy that names none.
const DefaultPriority = 1000

// FirewallConfig holds the cluster's defaults; every field is optional, and absent means the default.
type FirewallConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FirewallConfigSpec `json:"spec,omitempty"`
}

// FirewallConfigSpec is the body of a FirewallConfig.
type FirewallConfigSpec struct {
	// ClusterCIDRs are inside the cluster; by default the pod and service ranges Moat learns.
	ClusterCIDRs []string `json:"clusterCIDRs,omitempty"`
	// NodeCIDRs hold node addresses in folder mode (from Nodes in Kubernetes mode).
	NodeCIDRs []string `json:"nodeCIDRs,omitempty"`
	// DefaultIngress and DefaultEgress decide world traffic no rule matched: Allow (default) or Deny.
	DefaultIngress Action `json:"defaultIngress,omitempty"`
	DefaultEgress  Action `json:"defaultEgress,omitempty"`
	// MetadataAPI controls the built-in block of the cloud metadata API.
	MetadataAPI *MetadataAPI `json:"metadataAPI,omitempty"`
}

// MetadataAPI is the built-in rule for the cloud metadata API, which comes before every policy.
type MetadataAPI struct {
	// Action is Deny (default) or Allow (turns the block off cluster-wide).
	Action Action `json:"action,omitempty"`
	// Addresses of the metadata API; default 169.254.169.254/32, fd00:ec2::254/128, 100.100.100.200/32.
	Addresses []string `json:"addresses,omitempty"`
	// AllowNamespaces may reach it (decided then as the world); default {matchLabels: {moat.dev/metadata: allow}}.
	AllowNamespaces *metav1.LabelSelector `json:"allowNamespaces,omitempty"`
}

// FirewallPolicy is a set of rules for the namespaces it selects.
type FirewallPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FirewallPolicySpec   `json:"spec,omitempty"`
	Status            FirewallPolicyStatus `json:"status,omitempty"`
}

// FirewallPolicySpec is the body of a FirewallPolicy.
type FirewallPolicySpec struct {
	// NamespaceSelector picks the namespaces; {} is every namespace; omitted is invalid.
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector"`
	// Priority orders policies: lower first, default 1000, ties by name.
	Priority *int32 `json:"priority,omitempty"`
	// Mode is Enforce (default) or Audit (reports, never decides).
	Mode    Mode   `json:"mode,omitempty"`
	Egress  []Rule `json:"egress,omitempty"`
	Ingress []Rule `json:"ingress,omitempty"`
}

// Rule is one rule; within a policy, rules are tried in order and the first match decides.
type Rule struct {
	Action Action `json:"action"`
	// To (egress) or From (ingress): omitted is every peer, [] is none.
	To   []Peer `json:"to,omitempty"`
	From []Peer `json:"from,omitempty"`
	// Ports: omitted is every protocol and port.
	Ports []Port `json:"ports,omitempty"`
}

// Peer is a CIDR (with excepts) or a namespace selector, not both.
type Peer struct {
	CIDR              string                `json:"cidr,omitempty"`
	Except            []string              `json:"except,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
}

// Port is a protocol (TCP, UDP, SCTP, ICMP, ICMPv6 or an IP protocol number) with a port or port range, or an
// ICMP type.
type Port struct {
	Protocol string `json:"protocol"`
	Port     *int32 `json:"port,omitempty"`
	EndPort  *int32 `json:"endPort,omitempty"`
	ICMPType *int32 `json:"icmpType,omitempty"`
}

// FirewallPolicyStatus is written back by the enforcer.
type FirewallPolicyStatus struct {
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Namespace labels that steer Moat.
const (
	LabelZone     = "moat.dev/zone"
	LabelMetadata = "moat.dev/metadata" // "allow" opens the metadata API through the default selector
	LabelEgress   = "moat.dev/egress"   // "Deny" (or "Allow") sets the namespace's default for world egress
	LabelIngress  = "moat.dev/ingress"
	LabelMode     = "moat.dev/mode" // "Audit": every verdict of the namespace is report-only
)

// Namespace is what Moat needs of a Kubernetes Namespace (also a kind in folder mode: `kind: Namespace`).
type Namespace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
}
