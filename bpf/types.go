package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The structures shared with the datapath, generated from moat.h by bpf2go.
type (
	Endpoint       = moatMoatEndpoint
	Config         = moatMoatConfig
	IPCacheKey     = moatMoatIpcacheKey
	IPCacheValue   = moatMoatIpcacheValue
	PolicyKey      = moatMoatPolicyKey
	PolicyValue    = moatMoatPolicyValue
	RuleRef        = moatMoatRuleRef
	CTKey          = moatMoatCtKey
	CTValue        = moatMoatCtValue
	CTCount        = moatMoatCtCount
	HostPortKey    = moatMoatHostportKey
	HostPortValue  = moatMoatHostportValue
	FragKey        = moatMoatFragKey
	FragValue      = moatMoatFragValue
	Counter        = moatMoatCounter
	Event          = moatMoatEvent
	NamespaceKey   = moatMoatNamespaceKey
	Reason         = moatMoatReason
	Class          = moatMoatClass
	Direction      = moatMoatDirection
	Action         = moatMoatAction
	Verdict        = moatMoatVerdict
	PolicyKind     = moatMoatPolicyKind
	EndpointMode   = moatMoatEndpointMode
	IdentityFlags  = moatMoatIdentityFlags
	ConfigFlags    = moatMoatConfigFlags
	ConntrackFlags = moatMoatCtFlags
	Stat           = moatMoatStat
)

// Limits shared with the datapath: the generated enum moat_limits of moat.h.
const (
	// LayoutVersion is the map layout this build creates and understands.
	LayoutVersion = uint32(moatMoatLimitsMOAT_LAYOUT_VERSION)
	// MaxIdentities bounds namespace identities (1 to MaxIdentities-1): they index the policy map.
	MaxIdentities = uint32(moatMoatLimitsMOAT_MAX_IDENTITIES)
	// MaxRules bounds rule ids: they index the rule_counts map.
	MaxRules = uint32(moatMoatLimitsMOAT_MAX_RULES)
	// MaxPolicyEntries is the size of one identity's policy trie (max_entries of the policy map's inner map).
	MaxPolicyEntries = int(moatMoatLimitsMOAT_MAX_POLICY_ENTRIES)
	// DefaultConntrackEntries is the size of the conntrack table unless the enforcer is told otherwise.
	DefaultConntrackEntries = int(moatMoatLimitsMOAT_CONNTRACK_ENTRIES)
	// DefaultIPCacheEntries is the size of the ipcache unless the enforcer is told otherwise.
	DefaultIPCacheEntries = int(moatMoatLimitsMOAT_IPCACHE_ENTRIES)
)

// IdentityUnknownPod is the remote identity of an address in a pod range that no known pod holds: every Deny rule
// by namespace names it as a peer, no Allow rule does.
const IdentityUnknownPod = uint32(moatMoatRemoteIdentityMOAT_IDENTITY_UNKNOWN_POD)

// MaxFQDNSlots bounds the fqdn name patterns of one identity: a learned address holds them as a 64-bit mask.
const MaxFQDNSlots = int(moatMoatRemoteIdentityMOAT_FQDN_SLOTS)

// IdentityFQDN is the remote identity that stands for an identity's fqdn pattern of the given slot (its place in
// the identity's sorted fqdn patterns) in PEER entries: the datapath looks a learned world address up as it.
func IdentityFQDN(slot int) uint32 {
	return uint32(moatMoatRemoteIdentityMOAT_IDENTITY_FQDN) + uint32(slot)
}

// OrderNone marks a RuleRef that holds no rule.
const OrderNone = uint32(moatMoatRuleOrderMOAT_ORDER_NONE)

const (
	Egress  Direction = moatMoatDirectionMOAT_DIR_EGRESS
	Ingress Direction = moatMoatDirectionMOAT_DIR_INGRESS
)

const (
	ClassWorld    Class = moatMoatClassMOAT_CLASS_WORLD
	ClassPod      Class = moatMoatClassMOAT_CLASS_POD
	ClassService  Class = moatMoatClassMOAT_CLASS_SERVICE
	ClassNode     Class = moatMoatClassMOAT_CLASS_NODE
	ClassMetadata Class = moatMoatClassMOAT_CLASS_METADATA
	ClassCluster  Class = moatMoatClassMOAT_CLASS_CLUSTER
)

const (
	ActionNone  Action = moatMoatActionMOAT_ACTION_NONE
	ActionAllow Action = moatMoatActionMOAT_ACTION_ALLOW
	ActionDeny  Action = moatMoatActionMOAT_ACTION_DENY
)

const (
	VerdictAllowed Verdict = moatMoatVerdictMOAT_VERDICT_ALLOWED
	VerdictDenied  Verdict = moatMoatVerdictMOAT_VERDICT_DENIED
	VerdictAudit   Verdict = moatMoatVerdictMOAT_VERDICT_AUDIT
)

const (
	ReasonNone           Reason = moatMoatReasonMOAT_REASON_NONE
	ReasonAllowRule      Reason = moatMoatReasonMOAT_REASON_ALLOW_RULE
	ReasonAllowDefault   Reason = moatMoatReasonMOAT_REASON_ALLOW_DEFAULT
	ReasonCTEstablished  Reason = moatMoatReasonMOAT_REASON_CT_ESTABLISHED
	ReasonCTReply        Reason = moatMoatReasonMOAT_REASON_CT_REPLY
	ReasonCTRelated      Reason = moatMoatReasonMOAT_REASON_CT_RELATED
	ReasonNeighbor       Reason = moatMoatReasonMOAT_REASON_NEIGHBOR
	ReasonFragment       Reason = moatMoatReasonMOAT_REASON_FRAGMENT
	ReasonAudit          Reason = moatMoatReasonMOAT_REASON_AUDIT
	ReasonAuditPolicy    Reason = moatMoatReasonMOAT_REASON_AUDIT_POLICY
	ReasonNoEndpoint     Reason = moatMoatReasonMOAT_REASON_NO_ENDPOINT
	ReasonSpoofed        Reason = moatMoatReasonMOAT_REASON_SPOOFED
	ReasonDenyRule       Reason = moatMoatReasonMOAT_REASON_DENY_RULE
	ReasonDenyDefault    Reason = moatMoatReasonMOAT_REASON_DENY_DEFAULT
	ReasonMetadata       Reason = moatMoatReasonMOAT_REASON_METADATA
	ReasonMalformed      Reason = moatMoatReasonMOAT_REASON_MALFORMED
	ReasonFragNoFirst    Reason = moatMoatReasonMOAT_REASON_FRAG_NO_FIRST
	ReasonExtHdrLimit    Reason = moatMoatReasonMOAT_REASON_EXTHDR_LIMIT
	ReasonUnsupportedL3  Reason = moatMoatReasonMOAT_REASON_UNSUPPORTED_L3
	ReasonRevoked        Reason = moatMoatReasonMOAT_REASON_REVOKED
	ReasonNoPolicy       Reason = moatMoatReasonMOAT_REASON_NO_POLICY
	ReasonNeighborDenied Reason = moatMoatReasonMOAT_REASON_NEIGHBOR_DENIED
	ReasonNotForEndpoint Reason = moatMoatReasonMOAT_REASON_NOT_FOR_ENDPOINT
	ReasonEncapsulation  Reason = moatMoatReasonMOAT_REASON_ENCAPSULATION
	ReasonCTLimit        Reason = moatMoatReasonMOAT_REASON_CT_LIMIT
	ReasonNoConfig       Reason = moatMoatReasonMOAT_REASON_NO_CONFIG
	ReasonUnknownPod     Reason = moatMoatReasonMOAT_REASON_UNKNOWN_POD
	ReasonDNSDenied      Reason = moatMoatReasonMOAT_REASON_DNS_DENIED
	ReasonDNSUnparsed    Reason = moatMoatReasonMOAT_REASON_DNS_UNPARSED
	ReasonDNSToAgent     Reason = moatMoatReasonMOAT_REASON_DNS_TO_AGENT
	ReasonDNSUntrusted   Reason = moatMoatReasonMOAT_REASON_DNS_UNTRUSTED
	ReasonMax            Reason = moatMoatReasonMOAT_REASON_MAX
	firstDropReason      Reason = ReasonNoEndpoint
	IdentityAllowMeta           = moatMoatIdentityFlagsMOAT_ID_METADATA_ALLOW
	IdentityAudit               = moatMoatIdentityFlagsMOAT_ID_AUDIT
	ConfigAllowEvents           = moatMoatConfigFlagsMOAT_CFG_ALLOW_EVENTS
	ConfigNoSourceCheck         = moatMoatConfigFlagsMOAT_CFG_NO_SOURCE_CHECK
	ModeEnforce                 = moatMoatEndpointModeMOAT_MODE_ENFORCE
	ModeAudit                   = moatMoatEndpointModeMOAT_MODE_AUDIT
	StatEventsLost              = moatMoatStatMOAT_STAT_EVENTS_LOST
	StatCTCreated               = moatMoatStatMOAT_STAT_CT_CREATED
	StatCTLimited               = moatMoatStatMOAT_STAT_CT_LIMITED
	StatFQDNLearned             = moatMoatStatMOAT_STAT_FQDN_LEARNED
	StatDNSFallback             = moatMoatStatMOAT_STAT_DNS_FALLBACK
	StatDNSFallbackLost         = moatMoatStatMOAT_STAT_DNS_FALLBACK_LOST
	StatDNSEventsLost           = moatMoatStatMOAT_STAT_DNS_EVENTS_LOST
	StatDNSEventsSampled        = moatMoatStatMOAT_STAT_DNS_EVENTS_SAMPLED
	statMax                     = moatMoatStatMOAT_STAT_MAX
	KindPort                    = moatMoatPolicyKindMOAT_KIND_PORT
	KindCIDR                    = moatMoatPolicyKindMOAT_KIND_CIDR
	KindPeer                    = moatMoatPolicyKindMOAT_KIND_PEER
)

var reasonNames = map[Reason]string{
	ReasonNone:           "none",
	ReasonAllowRule:      "allowed-by-rule",
	ReasonAllowDefault:   "allowed-by-default",
	ReasonCTEstablished:  "established",
	ReasonCTReply:        "reply",
	ReasonCTRelated:      "related",
	ReasonNeighbor:       "neighbor-discovery",
	ReasonFragment:       "fragment",
	ReasonAudit:          "audit",
	ReasonAuditPolicy:    "audit-policy",
	ReasonNoEndpoint:     "no-endpoint",
	ReasonSpoofed:        "spoofed-source",
	ReasonDenyRule:       "denied-by-rule",
	ReasonDenyDefault:    "denied-by-default",
	ReasonMetadata:       "metadata-api",
	ReasonMalformed:      "malformed",
	ReasonFragNoFirst:    "fragment-without-first",
	ReasonExtHdrLimit:    "too-many-extension-headers",
	ReasonUnsupportedL3:  "unsupported-l3",
	ReasonRevoked:        "revoked-by-policy",
	ReasonNoPolicy:       "no-policy",
	ReasonNeighborDenied: "neighbor-denied",
	ReasonNotForEndpoint: "not-for-endpoint",
	ReasonEncapsulation:  "encapsulation",
	ReasonCTLimit:        "conntrack-limit",
	ReasonNoConfig:       "no-config",
	ReasonUnknownPod:     "unknown-pod",
	ReasonDNSDenied:      "dns-name-denied",
	ReasonDNSUnparsed:    "dns-query-unreadable",
	ReasonDNSToAgent:     "dns-to-agent",
	ReasonDNSUntrusted:   "dns-untrusted",
}

// ReasonName is the name flow logs and metrics use for a reason code.
func ReasonName(r Reason) string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason-%d", r)
}

// Reasons lists every reason code the datapath uses.
func Reasons() []Reason {
	out := make([]Reason, 0, len(reasonNames))
	for r := ReasonNone; r < ReasonMax; r++ {
		if _, ok := reasonNames[r]; ok {
			out = append(out, r)
		}
	}
	return out
}

// IsDrop reports whether packets counted under r were dropped.
func (r Reason) IsDrop() bool { return r >= firstDropReason }

func (d Direction) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

var classNames = map[Class]string{
	ClassWorld: "world", ClassPod: "pod", ClassService: "service", ClassNode: "node",
	ClassMetadata: "metadata", ClassCluster: "cluster",
}

func (c Class) String() string {
	if n, ok := classNames[c]; ok {
		return n
	}
	return fmt.Sprintf("class-%d", c)
}

func (v Verdict) String() string {
	switch v {
	case VerdictAllowed:
		return "allowed"
	case VerdictDenied:
		return "denied"
	case VerdictAudit:
		return "audit"
	}
	return fmt.Sprintf("verdict-%d", v)
}

// Family is 4 or 6, as the datapath writes it into keys.
func Family(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

// Addr16 is an address as the datapath stores it: IPv4 in the first four bytes, the rest zero.
func Addr16(a netip.Addr) [16]byte {
	var out [16]byte
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out
	}
	return a.As16()
}

// AddrFrom16 reverses Addr16.
func AddrFrom16(family uint8, b [16]byte) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte{b[0], b[1], b[2], b[3]})
	}
	return netip.AddrFrom16(b)
}

// NewIPCacheKey is the ipcache key of a prefix (IPv4 prefixes must be unmapped).
func NewIPCacheKey(p netip.Prefix) IPCacheKey {
	p = p.Masked()
	return IPCacheKey{Prefixlen: uint32(8 + p.Bits()), Family: Family(p.Addr()), Addr: Addr16(p.Addr())}
}

// Prefix lengths of policy keys (enum moat_policy_bits): the bits from the kind on that a trie entry fixes.
const (
	policyBitsKindDir  = int(moatMoatPolicyBitsMOAT_POLICY_BITS_KIND_DIR)
	policyBitsPortBase = int(moatMoatPolicyBitsMOAT_POLICY_BITS_PORT_BASE)
	policyBitsCIDRBase = int(moatMoatPolicyBitsMOAT_POLICY_BITS_CIDR_BASE)
	policyBitsPeer     = int(moatMoatPolicyBitsMOAT_POLICY_BITS_PEER)
)

// PortKey is the key of a port class entry: bits of (direction, protocol, port) significant, counted from the
// direction: 8 = every protocol, 8+n = the first n bits of the protocol (16 = every port of one protocol),
// 16+n = the first n bits of the port. The pad byte between protocol and port is zero in every entry, so a
// prefix into the port covers it.
func PortKey(dir Direction, protocol uint8, port uint16, bits int) PolicyKey {
	f := moatMoatPolicyPort{Kind: uint8(KindPort), Direction: uint8(dir)}
	prefix := policyBitsKindDir + bits - 8
	if bits > 8 {
		f.Protocol = protocol &^ uint8(0xff>>min(bits-8, 8))
	}
	if bits > 16 {
		f.Port = htons(port &^ (0xffff >> (bits - 16)))
		prefix = policyBitsPortBase + bits - 16
	}
	return policyKey(prefix, f)
}

// CIDRKey is the key of a CIDR entry of a port class.
func CIDRKey(class uint16, p netip.Prefix) PolicyKey {
	p = p.Masked()
	f := moatMoatPolicyCidr{Kind: uint8(KindCIDR), Family: Family(p.Addr()), Class: htons(class), Addr: Addr16(p.Addr())}
	return policyKey(policyBitsCIDRBase+p.Bits(), f)
}

// PeerKey is the key of a namespace peer entry of a port class.
func PeerKey(class uint16, identity uint32) PolicyKey {
	f := moatMoatPolicyPeer{Kind: uint8(KindPeer), Class: htons(class), Identity: htonl(identity)}
	return policyKey(policyBitsPeer, f)
}

// policyClassOffset is where CIDR and PEER keys hold their port class, big-endian (the same place in both).
const policyClassOffset = 2

// WithClass is a CIDR or PEER key with another port class.
func (k PolicyKey) WithClass(class uint16) PolicyKey {
	binary.BigEndian.PutUint16(k.Data[policyClassOffset:], class)
	return k
}

// policyKey lays one kind's fields into the key's bytes, as the union of moat_policy_key holds them.
func policyKey[T moatMoatPolicyPort | moatMoatPolicyCidr | moatMoatPolicyPeer](prefixlen int, fields T) PolicyKey {
	k := PolicyKey{Prefixlen: uint32(prefixlen)}
	if _, err := binary.Encode(k.Data[:], binary.NativeEndian, fields); err != nil {
		panic(fmt.Sprintf("policy key of %d bytes: %v", len(k.Data), err)) // the generated types are 20 bytes
	}
	return k
}

// htons and htonl give the value whose bytes in memory are v in network order: the datapath's __be16 and
// __be32 fields.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func htonl(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

// ntohs reverses htons.
func ntohs(v uint16) uint16 { return htons(v) }

// LocalPort and RemotePort are a conntrack key's ports in host order.
func (k CTKey) LocalPort() uint16  { return ntohs(k.Lport) }
func (k CTKey) RemotePort() uint16 { return ntohs(k.Rport) }

// NewCTKey is the conntrack key of a flow from the endpoint's side (ports in host order).
func NewCTKey(ifindex uint32, protocol uint8, local netip.Addr, lport uint16, remote netip.Addr, rport uint16) CTKey {
	return CTKey{Ifindex: ifindex, Family: Family(local), Protocol: protocol, Lport: htons(lport), Rport: htons(rport),
		Laddr: Addr16(local), Raddr: Addr16(remote)}
}

// NoRule is a RuleRef that holds no rule.
func NoRule() RuleRef { return RuleRef{Order: OrderNone} }

// NewNamespaceKey is the identities map key of a namespace name.
func NewNamespaceKey(name string) (NamespaceKey, error) {
	var k NamespaceKey
	if name == "" || len(name) >= len(k.Name) {
		return k, fmt.Errorf("namespace name %q: must be 1 to %d bytes", name, len(k.Name)-1)
	}
	for i := 0; i < len(name); i++ {
		k.Name[i] = int8(name[i])
	}
	return k, nil
}
