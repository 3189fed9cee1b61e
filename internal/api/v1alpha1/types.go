// Package v1alpha1 is Moat's policy API, group moat.dev, version v1alpha1: FirewallConfig (the cluster's
// defaults, a singleton named "default") and FirewallPolicy, both cluster-scoped. docs/policy.md is the
// reference; ../shared/DESIGN.md has the shape.
//
// The markers below make the CRDs (make generate, controller-gen): the OpenAPI schema rejects at admission what
// it can (actions, modes, CIDRs, ports, protocols, peer shapes); Validate checks the rest and the enforcer
// reports it in the policy's status.
//
// +kubebuilder:object:generate=true
// +groupName=moat.dev
package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
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
// +kubebuilder:validation:Enum=Allow;Deny
type Action string

// Actions.
const (
	ActionAllow Action = "Allow"
	ActionDeny  Action = "Deny"
)

// Mode of a policy.
// +kubebuilder:validation:Enum=Enforce;Audit
type Mode string

// Modes.
const (
	ModeEnforce Mode = "Enforce"
	ModeAudit   Mode = "Audit"
)

// DefaultPriority of a policy that names none.
const DefaultPriority = 1000

// FirewallConfig holds the cluster's defaults; every field is optional, and absent means the default.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=fwc,categories=moat
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="only the FirewallConfig named default counts: name it default"
// +kubebuilder:printcolumn:name="Egress",type=string,JSONPath=`.spec.defaultEgress`
// +kubebuilder:printcolumn:name="Ingress",type=string,JSONPath=`.spec.defaultIngress`
// +kubebuilder:printcolumn:name="Metadata",type=string,JSONPath=`.spec.metadataAPI.action`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FirewallConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FirewallConfigSpec `json:"spec,omitempty"`
}

// FirewallConfigSpec is the body of a FirewallConfig.
type FirewallConfigSpec struct {
	// ClusterCIDRs are inside the cluster; by default the pod and service ranges Moat learns.
	// +kubebuilder:validation:MaxItems=256
	ClusterCIDRs []CIDR `json:"clusterCIDRs,omitempty"`
	// NodeCIDRs hold node addresses in folder mode (from Nodes in Kubernetes mode).
	// +kubebuilder:validation:MaxItems=1024
	NodeCIDRs []CIDR `json:"nodeCIDRs,omitempty"`
	// DefaultIngress and DefaultEgress decide world traffic no rule matched: Allow (default) or Deny.
	DefaultIngress Action `json:"defaultIngress,omitempty"`
	DefaultEgress  Action `json:"defaultEgress,omitempty"`
	// MetadataAPI controls the built-in block of the cloud metadata API.
	MetadataAPI *MetadataAPI `json:"metadataAPI,omitempty"`
	// Conntrack bounds the connection tracking table's use per pod.
	Conntrack *Conntrack `json:"conntrack,omitempty"`
	// SourceValidation checks that a new connection to a pod from a cluster or node address came in the way the
	// node routes back to that address (strict reverse-path filtering, in the datapath): Strict (default) or Disabled,
	// for networks with multipath or asymmetric routes, where the network must drop spoofed sources itself.
	// +kubebuilder:validation:Enum=Strict;Disabled
	SourceValidation SourceValidation `json:"sourceValidation,omitempty"`
	// DNS configures name rules (fqdn peers and dnsDeny): whose answers are learned, and for how long.
	DNS *DNSConfig `json:"dns,omitempty"`
	// HostFirewall configures the nodes' own firewall: who may reach the control plane from outside, and the safety
	// set that stays open on a node whatever its host policy says.
	HostFirewall *HostFirewallConfig `json:"hostFirewall,omitempty"`
}

// DNSConfig configures what the datapath learns from DNS answers.
type DNSConfig struct {
	// TrustedResolvers are the addresses whose DNS answers teach the addresses of names, and the only resolvers a
	// namespace with fqdn rules may query (UDP and TCP ports 53 and 853). Default: the cluster DNS Service's
	// cluster IPs and endpoints (clusterDNSService), and NodeLocal DNSCache's 169.254.20.10.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=45
	TrustedResolvers []string `json:"trustedResolvers,omitempty"`
	// ClusterDNSService is the cluster DNS Service, namespace/name; default kube-system/kube-dns.
	// +kubebuilder:validation:MaxLength=317
	ClusterDNSService string `json:"clusterDNSService,omitempty"`
	// MinTTLSeconds is the least time a learned address is kept, whatever TTL the answer gave; default 30.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	MinTTLSeconds *int32 `json:"minTTLSeconds,omitempty"`
	// GraceSeconds is how long a learned address is still used after its TTL ran out; default 60. Connections
	// made before that keep going whatever it is (conntrack).
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	GraceSeconds *int32 `json:"graceSeconds,omitempty"`
	// MaxLearnedPerNamespace bounds the addresses one namespace holds learned at once; past it, the ones that
	// expire first go. Default 4096.
	// +kubebuilder:validation:Minimum=16
	// +kubebuilder:validation:Maximum=1048576
	MaxLearnedPerNamespace *int32 `json:"maxLearnedPerNamespace,omitempty"`
	// AnswerEventsPerSecond bounds the DNS events a node reports of answers that matched no fqdn rule (moatctl dns,
	// the enforcer's API); answers Moat gave for dnsDeny names and answers of fqdn names are always reported, and
	// every answer is counted in the metrics. 0 reports none of the others. Default 100.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	AnswerEventsPerSecond *int32 `json:"answerEventsPerSecond,omitempty"`
}

// Defaults of DNSConfig.
const (
	DefaultClusterDNSService      = "kube-system/kube-dns"
	DefaultNodeLocalDNS           = "169.254.20.10"
	DefaultDNSMinTTLSeconds       = 30
	DefaultDNSGraceSeconds        = 60
	DefaultMaxLearnedPerNamespace = 4096
	DefaultAnswerEventsPerSecond  = 100
)

// SourceValidation is how the datapath checks where a cluster or node source came from.
type SourceValidation string

const (
	SourceValidationStrict   SourceValidation = "Strict"
	SourceValidationDisabled SourceValidation = "Disabled"
)

// Conntrack bounds what one pod may hold of the node's connection tracking table, so that a pod opening flows
// by the hundred thousand meets a bound of its own and never evicts other pods' established connections.
type Conntrack struct {
	// MaxPerEndpoint is how many tracked flows one pod interface may hold at once; a new flow past it is dropped
	// (reason conntrack-limit). Default 65536 (a quarter of the table); 0 turns the bound off.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=16777216
	MaxPerEndpoint *int32 `json:"maxPerEndpoint,omitempty"`
}

// MetadataAPI is the built-in rule for the cloud metadata API, which comes before every policy.
type MetadataAPI struct {
	// Action is Deny (default) or Allow (turns the block off cluster-wide).
	Action Action `json:"action,omitempty"`
	// Addresses of the metadata API; default 169.254.169.254/32, fd00:ec2::254/128, 100.100.100.200/32,
	// fd20:ce::254/128 (GCP), 169.254.170.23/32 and fd00:ec2::23/128 (EKS Pod Identity).
	// +kubebuilder:validation:MaxItems=64
	Addresses []CIDR `json:"addresses,omitempty"`
	// AllowNamespaces may reach it (decided then as the world); default {matchLabels: {moat.dev/metadata: allow}}.
	AllowNamespaces *metav1.LabelSelector `json:"allowNamespaces,omitempty"`
}

// FirewallPolicy is a set of rules for the namespaces it selects.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=fwp,categories=moat
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`
// +kubebuilder:printcolumn:name="Namespaces",type=integer,JSONPath=`.status.namespaces`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type FirewallPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FirewallPolicySpec   `json:"spec,omitempty"`
	Status            FirewallPolicyStatus `json:"status,omitempty"`
}

// FirewallPolicySpec is the body of a FirewallPolicy.
type FirewallPolicySpec struct {
	// NamespaceSelector picks the namespaces; {} is every namespace; omitted is invalid.
	// +kubebuilder:validation:Required
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector"`
	// Priority orders policies: lower first, default 1000, ties by name.
	Priority *int32 `json:"priority,omitempty"`
	// Mode is Enforce (default) or Audit (reports, never decides).
	Mode Mode `json:"mode,omitempty"`
	// Egress rules name their peers in `to`, ingress rules in `from`.
	// +kubebuilder:validation:MaxItems=1024
	// +kubebuilder:validation:XValidation:rule="self.all(r, !has(r.from))",message="egress rules name their peers in to, not from"
	// +kubebuilder:validation:XValidation:rule="self.all(r, r.action == 'Allow' || !has(r.to) || r.to.all(p, !has(p.fqdn)))",message="fqdn peers belong to Allow rules: deny names with dnsDeny"
	Egress []Rule `json:"egress,omitempty"`
	// +kubebuilder:validation:MaxItems=1024
	// +kubebuilder:validation:XValidation:rule="self.all(r, !has(r.to))",message="ingress rules name their peers in from, not to"
	// +kubebuilder:validation:XValidation:rule="self.all(r, !has(r.from) || r.from.all(p, !has(p.fqdn)))",message="fqdn is an egress peer: ingress rules cannot name one"
	Ingress []Rule `json:"ingress,omitempty"`
	// DNSDeny are names the selected namespaces may not resolve: a query for one (any type, UDP or TCP) is answered
	// NXDOMAIN on the node and never reaches a resolver (over TCP the connection is reset). Each entry is an exact
	// name (bad.example.com), a one-label wildcard (*.example.com) or a wildcard of one label or more
	// (**.example.com); case does not matter. In an Audit policy they are reported, not answered.
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=256
	DNSDeny []string `json:"dnsDeny,omitempty"`
}

// Rule is one rule; within a policy, rules are tried in order and the first match decides.
type Rule struct {
	// +kubebuilder:validation:Required
	Action Action `json:"action"`
	// To (egress) or From (ingress): omitted is every peer, [] is none.
	// +kubebuilder:validation:MaxItems=256
	To []Peer `json:"to,omitempty"`
	// +kubebuilder:validation:MaxItems=256
	From []Peer `json:"from,omitempty"`
	// Ports: omitted is every protocol and port.
	// +kubebuilder:validation:MaxItems=64
	Ports []Port `json:"ports,omitempty"`
}

// Peer is a CIDR (with excepts), a namespace selector or a name: exactly one.
// +kubebuilder:validation:XValidation:rule="(has(self.cidr) ? 1 : 0) + (has(self.namespaceSelector) ? 1 : 0) + (has(self.fqdn) ? 1 : 0) == 1",message="a peer is a cidr, a namespaceSelector or an fqdn, exactly one"
// +kubebuilder:validation:XValidation:rule="!has(self.except) || has(self.cidr)",message="except belongs to a cidr peer"
type Peer struct {
	CIDR CIDR `json:"cidr,omitempty"`
	// Except are holes in CIDR, each strictly inside it.
	// +kubebuilder:validation:MaxItems=64
	Except            []CIDR                `json:"except,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// FQDN is the addresses outside the cluster that the namespace's pods learned for a name from the trusted
	// resolvers' answers: an exact name (api.example.com), a one-label wildcard (*.example.com) or a wildcard of
	// one label or more (**.example.com), case-insensitive. Egress Allow rules only.
	// +kubebuilder:validation:MaxLength=256
	FQDN string `json:"fqdn,omitempty"`
}

// Port is a protocol (TCP, UDP, SCTP, ICMP, ICMPv6 or an IP protocol number) with a port or port range, or an
// ICMP type.
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || (has(self.port) && self.endPort >= self.port)",message="endPort needs a port, and is not below it"
// +kubebuilder:validation:XValidation:rule="!(has(self.port) || has(self.endPort)) || self.protocol.lowerAscii() in ['tcp', 'udp', 'sctp', '6', '17', '132']",message="only TCP, UDP and SCTP have ports (ICMP uses icmpType)"
// +kubebuilder:validation:XValidation:rule="!has(self.icmpType) || self.protocol.lowerAscii() in ['icmp', 'icmpv6', '1', '58']",message="icmpType belongs to ICMP and ICMPv6"
type Port struct {
	// Protocol is TCP, UDP, SCTP, ICMP, ICMPv6 (any case) or an IP protocol number 0-255.
	// +kubebuilder:validation:Required
	// +kubebuilder:validation:MaxLength=6
	// +kubebuilder:validation:XValidation:rule="self.lowerAscii() in ['tcp', 'udp', 'sctp', 'icmp', 'icmpv6'] || (self.matches('^[0-9]{1,3}$') && int(self) <= 255)",message="want TCP, UDP, SCTP, ICMP, ICMPv6 or a number 0-255"
	Protocol string `json:"protocol"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port *int32 `json:"port,omitempty"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort *int32 `json:"endPort,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	ICMPType *int32 `json:"icmpType,omitempty"`
}

// CIDR is an IPv4 or IPv6 prefix, like 198.51.100.0/24 or 2001:db8::/32.
// +kubebuilder:validation:Format=cidr
// +kubebuilder:validation:MaxLength=49
type CIDR = string

// FirewallPolicyStatus is written back by the enforcer.
type FirewallPolicyStatus struct {
	// ObservedGeneration is the spec generation the conditions speak of.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Namespaces is how many namespaces the policy selects.
	Namespaces int32 `json:"namespaces,omitempty"`
	// Conditions: Accepted (True, or False with reason Invalid and what is wrong).
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types and reasons of a FirewallPolicy's status.
const (
	ConditionAccepted = "Accepted"
	ReasonValid       = "Valid"
	ReasonInvalid     = "Invalid"
)

// FirewallPolicyList is a list of FirewallPolicy.
// +kubebuilder:object:root=true
type FirewallPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FirewallPolicy `json:"items"`
}

// FirewallConfigList is a list of FirewallConfig.
// +kubebuilder:object:root=true
type FirewallConfigList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []FirewallConfig `json:"items"`
}

// Namespace labels that steer Moat.
const (
	LabelZone     = "moat.dev/zone"
	LabelMetadata = "moat.dev/metadata" // "allow" opens the metadata API through the default selector
	LabelEgress   = "moat.dev/egress"   // "Deny" (or "Allow") sets the namespace's default for world egress
	LabelIngress  = "moat.dev/ingress"
	LabelMode     = "moat.dev/mode" // "Audit": every verdict of the namespace is report-only
)

// Namespace is a Kubernetes Namespace (also a kind in folder mode, `kind: Namespace`); Moat reads its name and
// labels.
type Namespace = corev1.Namespace
