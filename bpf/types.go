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

// LayoutVersion is the map layout this build creates and understands (MOAT_LAYOUT_VERSION in moat.h).
const LayoutVersion = 3

// MaxIdentities bounds namespace identities (1 to MaxIdentities-1): they index the policy map.
const MaxIdentities = 65536

// OrderNone marks a RuleRef that holds no rule.
const OrderNone = 0xffffffff

// MaxRules bounds rule ids: they index the rule_counts map.
const MaxRules = 65536

// MaxPolicyEntries is the size of one identity's policy trie (max_entries of the policy map's inner map).
const MaxPolicyEntries = 1 << 20

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
	statMax                     = moatMoatStatMOAT_STAT_MAX
	KindHeader                  = moatMoatPolicyKindMOAT_KIND_HEADER
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

// HeaderKey is the key of an identity's policy header.
func HeaderKey() PolicyKey {
	k := PolicyKey{Prefixlen: 8}
	k.Data[0] = uint8(KindHeader)
	return k
}

// PortKey is the key of a port class entry: bits of (direction, protocol, port) significant, counted from the
// direction: 8 = every protocol, 16 = every port of the protocol, 16+n = the first n bits of the port.
func PortKey(dir Direction, protocol uint8, port uint16, bits int) PolicyKey {
	k := PolicyKey{Prefixlen: uint32(8 + bits)}
	k.Data[0] = uint8(KindPort)
	k.Data[1] = uint8(dir)
	if bits > 8 {
		k.Data[2] = protocol
	}
	if bits > 16 {
		p := port &^ (0xffff >> (bits - 16))
		binary.BigEndian.PutUint16(k.Data[3:5], p)
	}
	return k
}

// CIDRKey is the key of a CIDR entry of a port class.
func CIDRKey(class uint16, p netip.Prefix) PolicyKey {
	p = p.Masked()
	k := PolicyKey{Prefixlen: uint32(32 + p.Bits())}
	k.Data[0] = uint8(KindCIDR)
	binary.BigEndian.PutUint16(k.Data[1:3], class)
	k.Data[3] = Family(p.Addr())
	a := Addr16(p.Addr())
	copy(k.Data[4:], a[:])
	return k
}

// PeerKey is the key of a namespace peer entry of a port class.
func PeerKey(class uint16, identity uint32) PolicyKey {
	k := PolicyKey{Prefixlen: 64}
	k.Data[0] = uint8(KindPeer)
	binary.BigEndian.PutUint16(k.Data[1:3], class)
	binary.BigEndian.PutUint32(k.Data[4:8], identity)
	return k
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
