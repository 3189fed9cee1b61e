// Package resolve turns the policy API (FirewallConfig, FirewallPolicy, namespace labels) into what the compiler
// takes: one ordered list of rules per namespace identity, with its flags and defaults. It implements the
// semantics of ../shared/DESIGN.md ("Semantics"); the datapath and the reference evaluator take it from there.
package resolve

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policy"
)

// DefaultMetadataAddresses are the cloud metadata API's addresses when FirewallConfig names none.
// AWS, Azure, GCP, OpenStack and others serve it at 169.254.169.254; AWS also at fd00:ec2::254, GCP at
// fd20:ce::254, Alibaba Cloud at 100.100.100.200, and EKS Pod Identity hands out credentials at 169.254.170.23 and
// fd00:ec2::23. Addresses that other clouds use for other purposes (Azure's WireServer 168.63.129.16, Tencent's
// 169.254.0.23) are opt-in: list them in FirewallConfig (docs/policy.md).
var DefaultMetadataAddresses = []string{"169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32",
	"fd20:ce::254/128", "169.254.170.23/32", "fd00:ec2::23/128"}

// DefaultMetadataSelector opens the metadata API to namespaces labelled moat.dev/metadata: allow.
var DefaultMetadataSelector = &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelMetadata: "allow"}}

// RuleKey names one rule of one policy: of its egress or ingress rules, or of its dnsDeny names (DNS set).
type RuleKey struct {
	Policy    string
	Direction bpf.Direction
	Index     int
	DNS       bool
}

// Name is the rule's place in its policy, as flow events and reports write it: "egress[0]", "dnsDeny[2]".
func (k RuleKey) Name() string {
	if k.DNS {
		return fmt.Sprintf("dnsDeny[%d]", k.Index)
	}
	return fmt.Sprintf("%s[%d]", k.Direction, k.Index)
}

// Input is the whole desired state. Policies and Config must have passed their Validate.
type Input struct {
	Config     *v1alpha1.FirewallConfig // nil: every default
	Policies   []v1alpha1.FirewallPolicy
	Namespaces []v1alpha1.Namespace
	Identities map[string]uint32 // namespace -> identity, from the enforcer's allocator
	// RuleID gives every rule its id (counters and events name it); the enforcer keeps them stable.
	RuleID func(RuleKey) uint32
}

// Output is what the enforcer writes into the datapath.
type Output struct {
	Policies map[uint32]*policy.IdentityPolicy // by identity
	Defaults policy.Defaults                   // for pods whose namespace has no identity yet
	Metadata []netip.Prefix                    // the metadata API's addresses, for the ipcache
	Cluster  []netip.Prefix                    // FirewallConfig's clusterCIDRs
	Nodes    []netip.Prefix                    // FirewallConfig's nodeCIDRs
	// ConntrackPerEndpoint bounds the conntrack entries of one pod interface (0: no bound).
	ConntrackPerEndpoint uint32
	// NoSourceValidation turns the datapath's reverse-path check of cluster and node sources off.
	NoSourceValidation bool
	// DNS is what FirewallConfig's dns says, defaults filled in.
	DNS DNS
	// Problems are namespace labels with values Moat does not know: each took the closed side. Warnings are
	// policies that select no namespace. Both sorted by kind and name.
	Problems []Finding
	Warnings []Finding
}

// DNS is how names are learned: FirewallConfig's dns with its defaults.
type DNS struct {
	// TrustedResolvers as FirewallConfig lists them; nil: the cluster DNS Service's addresses (ClusterDNSService)
	// and NodeLocal DNSCache's, which the enforcer finds.
	TrustedResolvers  []netip.Addr
	ClusterDNSService string // namespace/name
	MinTTL, Grace     time.Duration
	MaxLearned        int // per namespace
	AnswerEvents      int // DNS events a second of answers no fqdn rule matched
}

// resolveDNS fills in DNS's defaults.
func resolveDNS(c *v1alpha1.DNSConfig) DNS {
	d := DNS{ClusterDNSService: v1alpha1.DefaultClusterDNSService, MinTTL: v1alpha1.DefaultDNSMinTTLSeconds * time.Second,
		Grace: v1alpha1.DefaultDNSGraceSeconds * time.Second, MaxLearned: v1alpha1.DefaultMaxLearnedPerNamespace,
		AnswerEvents: v1alpha1.DefaultAnswerEventsPerSecond}
	if c == nil {
		return d
	}
	for _, s := range c.TrustedResolvers {
		if a, err := netip.ParseAddr(s); err == nil {
			d.TrustedResolvers = append(d.TrustedResolvers, a)
		}
	}
	if c.ClusterDNSService != "" {
		d.ClusterDNSService = c.ClusterDNSService
	}
	if c.MinTTLSeconds != nil {
		d.MinTTL = time.Duration(*c.MinTTLSeconds) * time.Second
	}
	if c.GraceSeconds != nil {
		d.Grace = time.Duration(*c.GraceSeconds) * time.Second
	}
	if c.MaxLearnedPerNamespace != nil {
		d.MaxLearned = int(*c.MaxLearnedPerNamespace)
	}
	if c.AnswerEventsPerSecond != nil {
		d.AnswerEvents = int(*c.AnswerEventsPerSecond)
	}
	return d
}

// HostFirewallNotEnforced is the warning of a FirewallConfig that configures the host firewall, which this version
// does not enforce.
const HostFirewallNotEnforced = "spec.hostFirewall is set, but this version of Moat does not enforce the host firewall yet: nothing guards the nodes' own addresses"

// Resolve computes every namespace's policy.
func Resolve(in Input) Output {
	cfg := in.Config
	if cfg == nil {
		cfg = &v1alpha1.FirewallConfig{}
	}
	out := Output{Policies: map[uint32]*policy.IdentityPolicy{},
		Defaults: policy.Defaults{DefaultEgress: action(cfg.Spec.DefaultEgress), DefaultIngress: action(cfg.Spec.DefaultIngress)}}
	meta := cfg.Spec.MetadataAPI
	if meta == nil {
		meta = &v1alpha1.MetadataAPI{}
	}
	addrs := meta.Addresses
	if len(addrs) == 0 {
		addrs = DefaultMetadataAddresses
	}
	out.Metadata = prefixes(addrs)
	out.Cluster = prefixes(cfg.Spec.ClusterCIDRs)
	out.Nodes = prefixes(cfg.Spec.NodeCIDRs)
	out.NoSourceValidation = cfg.Spec.SourceValidation == v1alpha1.SourceValidationDisabled
	out.DNS = resolveDNS(cfg.Spec.DNS)
	out.ConntrackPerEndpoint = v1alpha1.DefaultConntrackPerEndpoint
	if ct := cfg.Spec.Conntrack; ct != nil && ct.MaxPerEndpoint != nil {
		out.ConntrackPerEndpoint = uint32(*ct.MaxPerEndpoint)
	}
	metaSelector := selector(meta.AllowNamespaces, DefaultMetadataSelector)

	policies := append([]v1alpha1.FirewallPolicy(nil), in.Policies...)
	sort.SliceStable(policies, func(i, j int) bool {
		pi, pj := priority(&policies[i]), priority(&policies[j])
		if pi != pj {
			return pi < pj
		}
		return policies[i].Name < policies[j].Name
	})
	selectors := make([]labels.Selector, len(policies))
	selected := make([]bool, len(policies))
	for i := range policies {
		selectors[i] = selector(policies[i].Spec.NamespaceSelector, nil)
	}
	nsLabels := map[string]labels.Set{}
	for _, ns := range in.Namespaces {
		nsLabels[ns.Name] = labels.Set(ns.Labels)
	}
	// A policy's rules are the same for every namespace it selects, and a peer selector's identities the same in
	// every rule that names it: each is worked out once per resolve, not once per namespace (a policy selecting
	// every namespace with a namespace peer would otherwise match namespaces squared). The rules are shared by the
	// identities' policies, which only read them.
	peers := peerCache{in: in, nsLabels: nsLabels, ids: map[string][]uint32{}}
	policyRules := make([][]policy.Rule, len(policies)) // nil until a namespace with an identity needs them
	dnsRules := make([][]policy.DNSRule, len(policies))
	var mine []int // the policies that select the namespace at hand
	for i := range in.Namespaces {
		ns := &in.Namespaces[i]
		set := nsLabels[ns.Name]
		wants, problems := namespaceLabels(ns)
		out.Problems = append(out.Problems, problems...)
		id, ok := in.Identities[ns.Name]
		hasIdentity := ok && id != 0
		var p *policy.IdentityPolicy
		if hasIdentity {
			p = &policy.IdentityPolicy{
				Identity:        id,
				MetadataAllowed: meta.Action == v1alpha1.ActionAllow || metaSelector.Matches(set),
				DefaultEgress:   out.Defaults.DefaultEgress,
				DefaultIngress:  out.Defaults.DefaultIngress,
				Audit:           wants.audit,
			}
			if wants.egress != nil {
				p.DefaultEgress = *wants.egress
			}
			if wants.ingress != nil {
				p.DefaultIngress = *wants.ingress
			}
			out.Policies[id] = p
		}
		mine = mine[:0]
		n := 0
		for j := range policies {
			if !selectors[j].Matches(set) {
				continue
			}
			selected[j] = true
			if hasIdentity {
				if policyRules[j] == nil { // (a policy without rules is worked out again: nothing to do)
					pol := &policies[j]
					policyRules[j] = append(rules(pol, bpf.Egress, pol.Spec.Egress, in, &peers),
						rules(pol, bpf.Ingress, pol.Spec.Ingress, in, &peers)...)
					dnsRules[j] = dnsDeny(pol, in)
				}
				mine = append(mine, j)
				n += len(policyRules[j])
			}
		}
		if hasIdentity && n > 0 {
			p.Rules = make([]policy.Rule, 0, n) // one allocation, not one per policy
			for _, j := range mine {
				p.Rules = append(p.Rules, policyRules[j]...)
			}
		}
		if hasIdentity {
			for _, j := range mine {
				p.DNSDeny = append(p.DNSDeny, dnsRules[j]...)
			}
		}
	}
	for i := range policies {
		if !selected[i] {
			out.Warnings = append(out.Warnings, Finding{Kind: v1alpha1.KindFirewallPolicy, Name: policies[i].Name, Message: SelectsNothing})
		}
	}
	if cfg.Spec.HostFirewall != nil {
		out.Warnings = append(out.Warnings, Finding{Kind: v1alpha1.KindFirewallConfig, Name: cfg.Name, Message: HostFirewallNotEnforced})
	}
	sortFindings(out.Problems)
	sortFindings(out.Warnings)
	return out
}

// peerCache holds the identities of each namespace peer selector met so far in one resolve.
type peerCache struct {
	in       Input
	nsLabels map[string]labels.Set
	ids      map[string][]uint32 // selector (canonical form) -> identities of the namespaces it selects, sorted
}

func (c *peerCache) identities(s *metav1.LabelSelector) []uint32 {
	sel := selector(s, nil)
	key := sel.String()
	if ids, ok := c.ids[key]; ok {
		return ids
	}
	var ids []uint32 // nil when none: a peer of no namespace
	for name, set := range c.nsLabels {
		if id := c.in.Identities[name]; id != 0 && sel.Matches(set) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	c.ids[key] = ids
	return ids
}

// dnsDeny is a policy's dnsDeny names as rules, one per name, normalized.
func dnsDeny(pol *v1alpha1.FirewallPolicy, in Input) []policy.DNSRule {
	var out []policy.DNSRule
	for i, name := range pol.Spec.DNSDeny {
		n, err := v1alpha1.ParseNamePattern(name)
		if err != nil {
			continue // Validate refused the policy
		}
		out = append(out, policy.DNSRule{ID: in.RuleID(RuleKey{Policy: pol.Name, Index: i, DNS: true}),
			Audit: pol.Spec.Mode == v1alpha1.ModeAudit, Patterns: []string{n.String()}})
	}
	return out
}

func rules(pol *v1alpha1.FirewallPolicy, dir bpf.Direction, list []v1alpha1.Rule, in Input, peerIDs *peerCache) []policy.Rule {
	var out []policy.Rule
	for i, r := range list {
		rule := policy.Rule{ID: in.RuleID(RuleKey{Policy: pol.Name, Direction: dir, Index: i}), Direction: dir,
			Action: action(r.Action), Audit: pol.Spec.Mode == v1alpha1.ModeAudit}
		peers := r.To
		if dir == bpf.Ingress {
			peers = r.From
		}
		if peers == nil {
			rule.AllPeers = true
		} else {
			rule.Peers = []policy.Peer{} // [] is no peer at all
		}
		for _, peer := range peers {
			if peer.FQDN != "" {
				if n, err := v1alpha1.ParseNamePattern(peer.FQDN); err == nil {
					rule.Peers = append(rule.Peers, policy.Peer{FQDN: n.String()})
				}
				continue
			}
			if peer.NamespaceSelector != nil {
				ids := peerIDs.identities(peer.NamespaceSelector)
				if rule.Action == bpf.ActionDeny {
					// a pod of a range whose namespace is not known yet may be of the namespaces denied
					ids = append(slices.Clip(ids), bpf.IdentityUnknownPod)
				}
				rule.Peers = append(rule.Peers, policy.Peer{Identities: ids})
				continue
			}
			cidr, _ := v1alpha1.ParseCIDR(peer.CIDR)
			rule.Peers = append(rule.Peers, policy.Peer{CIDR: cidr, Except: prefixes(peer.Except)})
		}
		if r.Ports == nil {
			rule.AllPorts = true
		}
		for _, port := range r.Ports {
			rule.Ports = append(rule.Ports, portRange(port))
		}
		out = append(out, rule)
	}
	return out
}

func portRange(p v1alpha1.Port) policy.PortRange {
	proto, _ := v1alpha1.ProtocolNumber(p.Protocol)
	r := policy.PortRange{Protocol: proto, First: 0, Last: 65535}
	switch {
	case v1alpha1.HasPorts(proto) && p.Port != nil:
		r.First, r.Last = uint16(*p.Port), uint16(*p.Port)
		if p.EndPort != nil {
			r.Last = uint16(*p.EndPort)
		}
	case v1alpha1.IsICMP(proto) && p.ICMPType != nil:
		r.First, r.Last = uint16(*p.ICMPType), uint16(*p.ICMPType)
	}
	return r
}

// Priority is a policy's priority, the default filled in: lower comes first.
func Priority(p *v1alpha1.FirewallPolicy) int32 { return priority(p) }

// Selected is the names of the namespaces a policy selects, sorted.
func Selected(p *v1alpha1.FirewallPolicy, namespaces []v1alpha1.Namespace) []string {
	sel := selector(p.Spec.NamespaceSelector, nil)
	out := []string{}
	for _, ns := range namespaces {
		if sel.Matches(labels.Set(ns.Labels)) {
			out = append(out, ns.Name)
		}
	}
	sort.Strings(out)
	return out
}

func priority(p *v1alpha1.FirewallPolicy) int32 {
	if p.Spec.Priority != nil {
		return *p.Spec.Priority
	}
	return v1alpha1.DefaultPriority
}

func action(a v1alpha1.Action) bpf.Action {
	if a == v1alpha1.ActionDeny {
		return bpf.ActionDeny
	}
	return bpf.ActionAllow
}

// selector turns a validated LabelSelector into a labels.Selector; nil takes def, and a nil def selects nothing.
func selector(s, def *metav1.LabelSelector) labels.Selector {
	if s == nil {
		s = def
	}
	if s == nil {
		return labels.Nothing()
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return labels.Nothing()
	}
	return sel
}

func prefixes(list []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := v1alpha1.ParseCIDR(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
