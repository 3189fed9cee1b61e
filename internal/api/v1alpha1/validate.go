package v1alpha1

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProtocolNumber is the IP protocol a Port names: TCP, UDP, SCTP, ICMP, ICMPv6 (any case) or a number 0-255.
func ProtocolNumber(name string) (uint8, error) {
	switch strings.ToUpper(name) {
	case "TCP":
		return 6, nil
	case "UDP":
		return 17, nil
	case "SCTP":
		return 132, nil
	case "ICMP":
		return 1, nil
	case "ICMPV6":
		return 58, nil
	}
	n, err := strconv.Atoi(name)
	if err != nil || n < 0 || n > 255 {
		return 0, fmt.Errorf("protocol %q: want TCP, UDP, SCTP, ICMP, ICMPv6 or a number 0-255", name)
	}
	return uint8(n), nil
}

// ProtocolName is how flow events, trace and reports write a protocol number: tcp, udp, sctp, icmp, icmpv6, or
// the number.
func ProtocolName(proto uint8) string {
	switch proto {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	}
	return strconv.Itoa(int(proto))
}

// HasPorts reports whether a protocol number carries ports (TCP, UDP, SCTP).
func HasPorts(proto uint8) bool { return proto == 6 || proto == 17 || proto == 132 }

// IsICMP reports whether a protocol number is ICMP or ICMPv6.
func IsICMP(proto uint8) bool { return proto == 1 || proto == 58 }

// ParseCIDR parses a CIDR of either family; an IPv4-mapped IPv6 prefix is refused (write it as IPv4).
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %q: %v", s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("cidr %q: an IPv4-mapped IPv6 prefix; write it as IPv4", s)
	}
	return p.Masked(), nil
}

func validAction(a Action) bool { return a == ActionAllow || a == ActionDeny }

// Validate lists what is wrong with a policy, each problem naming the field.
func (p *FirewallPolicy) Validate() []error {
	var errs []error
	add := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if p.Name == "" {
		add("metadata.name", "missing")
	}
	if p.Spec.NamespaceSelector == nil {
		add("spec.namespaceSelector", "missing: {} selects every namespace")
	} else if _, err := metav1.LabelSelectorAsSelector(p.Spec.NamespaceSelector); err != nil {
		add("spec.namespaceSelector", "%v", err)
	}
	if p.Spec.Mode != "" && p.Spec.Mode != ModeEnforce && p.Spec.Mode != ModeAudit {
		add("spec.mode", "%q: want Enforce or Audit", p.Spec.Mode)
	}
	if p.Spec.Priority != nil && *p.Spec.Priority < 0 {
		add("spec.priority", "%d: want 0 or more", *p.Spec.Priority)
	}
	for dir, rules := range map[string][]Rule{"egress": p.Spec.Egress, "ingress": p.Spec.Ingress} {
		for i, r := range rules {
			field := fmt.Sprintf("spec.%s[%d]", dir, i)
			for _, e := range r.validate(dir) {
				add(field, "%v", e)
			}
		}
	}
	if len(p.Spec.DNSDeny) > MaxDNSDeny {
		add("spec.dnsDeny", "%d names, at most %d", len(p.Spec.DNSDeny), MaxDNSDeny)
	}
	for i, name := range p.Spec.DNSDeny {
		if _, err := ParseNamePattern(name); err != nil {
			add(fmt.Sprintf("spec.dnsDeny[%d]", i), "%v", err)
		}
	}
	return errs
}

// MaxDNSDeny bounds the names of one policy's dnsDeny.
const MaxDNSDeny = 256

func (r *Rule) validate(dir string) []error {
	var errs []error
	if !validAction(r.Action) {
		errs = append(errs, fmt.Errorf("action %q: want Allow or Deny", r.Action))
	}
	peers, other := r.To, r.From
	name, otherName := "to", "from"
	if dir == "ingress" {
		peers, other, name, otherName = r.From, r.To, "from", "to"
	}
	if other != nil {
		errs = append(errs, fmt.Errorf("%s is not a field of an %s rule (use %s)", otherName, dir, name))
	}
	for i, peer := range peers {
		for _, e := range peer.validate() {
			errs = append(errs, fmt.Errorf("%s[%d]: %v", name, i, e))
		}
		if peer.FQDN != "" && (dir != "egress" || r.Action != ActionAllow) {
			errs = append(errs, fmt.Errorf("%s[%d]: fqdn peers belong to egress Allow rules (deny names with dnsDeny)", name, i))
		}
	}
	for i, port := range r.Ports {
		if err := port.validate(); err != nil {
			errs = append(errs, fmt.Errorf("ports[%d]: %v", i, err))
		}
	}
	return errs
}

func (p *Peer) validate() []error {
	kinds := 0
	for _, set := range []bool{p.CIDR != "", p.NamespaceSelector != nil, p.FQDN != ""} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds > 1:
		return []error{fmt.Errorf("a peer is a cidr, a namespaceSelector or an fqdn, one of them")}
	case p.FQDN != "":
		if len(p.Except) > 0 {
			return []error{fmt.Errorf("except belongs to a cidr peer")}
		}
		n, err := ParseNamePattern(p.FQDN)
		if err != nil {
			return []error{fmt.Errorf("fqdn: %v", err)}
		}
		if n.Form != NameExact && n.Labels() < 2 {
			return []error{fmt.Errorf("fqdn %q: a wildcard needs two labels or more after it: it would allow a whole top-level domain", p.FQDN)}
		}
		return nil
	case p.NamespaceSelector != nil:
		if len(p.Except) > 0 {
			return []error{fmt.Errorf("except belongs to a cidr peer")}
		}
		if _, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector); err != nil {
			return []error{fmt.Errorf("namespaceSelector: %v", err)}
		}
		return nil
	case p.CIDR == "":
		return []error{fmt.Errorf("a peer needs a cidr, a namespaceSelector or an fqdn")}
	}
	cidr, err := ParseCIDR(p.CIDR)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, e := range p.Except {
		ex, err := ParseCIDR(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("except: %v", err))
			continue
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
			errs = append(errs, fmt.Errorf("except %s is not strictly inside cidr %s", e, p.CIDR))
		}
	}
	return errs
}

func (p *Port) validate() error {
	proto, err := ProtocolNumber(p.Protocol)
	if err != nil {
		return err
	}
	switch {
	case HasPorts(proto):
		if p.ICMPType != nil {
			return fmt.Errorf("icmpType belongs to ICMP and ICMPv6, not %s", p.Protocol)
		}
		if p.Port == nil && p.EndPort != nil {
			return fmt.Errorf("endPort needs a port")
		}
		if p.Port != nil && (*p.Port < 1 || *p.Port > 65535) {
			return fmt.Errorf("port %d: want 1-65535", *p.Port)
		}
		if p.EndPort != nil && (*p.EndPort < *p.Port || *p.EndPort > 65535) {
			return fmt.Errorf("endPort %d: want %d-65535", *p.EndPort, *p.Port)
		}
	case IsICMP(proto):
		if p.Port != nil || p.EndPort != nil {
			return fmt.Errorf("%s has no ports: use icmpType", p.Protocol)
		}
		if p.ICMPType != nil && (*p.ICMPType < 0 || *p.ICMPType > 255) {
			return fmt.Errorf("icmpType %d: want 0-255", *p.ICMPType)
		}
	default:
		if p.Port != nil || p.EndPort != nil || p.ICMPType != nil {
			return fmt.Errorf("protocol %s has no ports or types", p.Protocol)
		}
	}
	return nil
}

// Validate lists what is wrong with the cluster's configuration.
func (c *FirewallConfig) Validate() []error {
	var errs []error
	add := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if c.Name != DefaultConfigName {
		add("metadata.name", "%q: only the FirewallConfig named %q counts", c.Name, DefaultConfigName)
	}
	for field, list := range map[string][]string{"spec.clusterCIDRs": c.Spec.ClusterCIDRs, "spec.nodeCIDRs": c.Spec.NodeCIDRs} {
		for i, s := range list {
			if _, err := ParseCIDR(s); err != nil {
				add(fmt.Sprintf("%s[%d]", field, i), "%v", err)
			}
		}
	}
	for field, a := range map[string]Action{"spec.defaultIngress": c.Spec.DefaultIngress, "spec.defaultEgress": c.Spec.DefaultEgress} {
		if a != "" && !validAction(a) {
			add(field, "%q: want Allow or Deny", a)
		}
	}
	if m := c.Spec.MetadataAPI; m != nil {
		if m.Action != "" && !validAction(m.Action) {
			add("spec.metadataAPI.action", "%q: want Allow or Deny", m.Action)
		}
		for i, s := range m.Addresses {
			if _, err := ParseCIDR(s); err != nil {
				add(fmt.Sprintf("spec.metadataAPI.addresses[%d]", i), "%v", err)
			}
		}
		if m.AllowNamespaces != nil {
			if _, err := metav1.LabelSelectorAsSelector(m.AllowNamespaces); err != nil {
				add("spec.metadataAPI.allowNamespaces", "%v", err)
			}
		}
	}
	if v := c.Spec.SourceValidation; v != "" && v != SourceValidationStrict && v != SourceValidationDisabled {
		add("spec.sourceValidation", "%q: want Strict or Disabled", v)
	}
	if d := c.Spec.DNS; d != nil {
		for i, s := range d.TrustedResolvers {
			if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" || a.Is4In6() {
				add(fmt.Sprintf("spec.dns.trustedResolvers[%d]", i), "%q: want an IPv4 or IPv6 address", s)
			}
		}
		if s := d.ClusterDNSService; s != "" {
			if ns, name, ok := strings.Cut(s, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
				add("spec.dns.clusterDNSService", "%q: want namespace/name", s)
			}
		}
		for field, v := range map[string]*int32{"minTTLSeconds": d.MinTTLSeconds, "graceSeconds": d.GraceSeconds} {
			if v != nil && (*v < 0 || *v > 86400) {
				add("spec.dns."+field, "%d: want 0 to 86400", *v)
			}
		}
		if v := d.MaxLearnedPerNamespace; v != nil && (*v < 16 || *v > 1<<20) {
			add("spec.dns.maxLearnedPerNamespace", "%d: want 16 to %d", *v, 1<<20)
		}
		if v := d.AnswerEventsPerSecond; v != nil && (*v < 0 || *v > 1_000_000) {
			add("spec.dns.answerEventsPerSecond", "%d: want 0 to 1000000", *v)
		}
	}
	if h := c.Spec.HostFirewall; h != nil {
		for field, list := range map[string][]string{"adminCIDRs": h.AdminCIDRs, "etcdPeers": h.EtcdPeers} {
			for i, s := range list {
				if _, err := ParseCIDR(s); err != nil {
					add(fmt.Sprintf("spec.hostFirewall.%s[%d]", field, i), "%v", err)
				}
			}
		}
		for i, o := range h.Overrides {
			switch o {
			case SafetyAPIServer, SafetyEtcd, SafetyKubelet, SafetyScheduler, SafetyControllerManager, SafetySSH, SafetyNode:
			default:
				add(fmt.Sprintf("spec.hostFirewall.overrides[%d]", i), "%q: want apiserver, etcd, kubelet, scheduler, controller-manager, ssh or node", o)
			}
		}
		if v := h.ProbationSeconds; v != nil && (*v < 2 || *v > 300) {
			add("spec.hostFirewall.probationSeconds", "%d: want 2 to 300", *v)
		}
		if p := h.Ports; p != nil {
			for field, v := range map[string]*int32{"etcdClient": p.EtcdClient, "etcdPeer": p.EtcdPeer, "scheduler": p.Scheduler,
				"controllerManager": p.ControllerManager} {
				if v != nil && (*v < 1 || *v > 65535) {
					add("spec.hostFirewall.ports."+field, "%d: want 1 to 65535", *v)
				}
			}
		}
	}
	if ct := c.Spec.Conntrack; ct != nil && ct.MaxPerEndpoint != nil {
		if n := *ct.MaxPerEndpoint; n < 0 || n > MaxConntrackPerEndpoint {
			add("spec.conntrack.maxPerEndpoint", "%d: want 0 (no bound) to %d", n, MaxConntrackPerEndpoint)
		}
	}
	return errs
}

// DefaultConntrackPerEndpoint is how many tracked flows one pod interface may hold when FirewallConfig says
// nothing: a quarter of the default table, so one pod alone can never fill it.
const DefaultConntrackPerEndpoint = 65536

// MaxConntrackPerEndpoint is the largest bound FirewallConfig may set.
const MaxConntrackPerEndpoint = 1 << 24
