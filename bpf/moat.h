/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures and constants shared by the datapath (moat.c) and Go (bpf2go -type).
 * Every multi-byte field inside an LPM key is big-endian, because the trie compares keys bit by bit from the
 * first byte. Addresses are always 16 bytes: an IPv4 address sits in the first 4 and the rest are zero.
 * See docs/datapath.md for who writes and who reads each map.
 */
#ifndef __MOAT_H
#define __MOAT_H

/*
 * Limits and sizes the Go side shares: one enum, so bpf2go generates them for Go and neither side copies a number.
 * MOAT_LAYOUT_VERSION is bumped whenever a map's key, value or meaning changes; kept in the config map so a new
 * enforcer can refuse pinned maps of another layout. 2: policy is an array of maps by identity; deadlines in
 * jiffies. 3: endpoint MAC and link-local address, TCP sequence tracking in conntrack, per-endpoint conntrack
 * bound, hostports. 4: map keys with typed, big-endian port, class and identity fields (policy, conntrack,
 * hostports); no policy header entry. 5: config.migrated_from; an enforcer of layout 5 migrates the maps
 * of layout 4 (bpf/migrate.go) instead of refusing them, and each new layout migrates those of the one before.
 */
enum moat_limits {
	MOAT_LAYOUT_VERSION = 5,
	MOAT_MAX_ENDPOINT_V4 = 4,  /* addresses of one endpoint, per family */
	MOAT_MAX_ENDPOINT_V6 = 4,
	MOAT_NAMESPACE_LEN = 64,   /* bytes of a namespace name in the identities map, NUL included */
	MOAT_MAX_IDENTITIES = 65536, /* identities index the policy map: 1 .. MOAT_MAX_IDENTITIES-1 */
	MOAT_MAX_RULES = 65536,    /* rule ids index rule_counts */
	MOAT_MAX_POLICY_ENTRIES = 1 << 20, /* entries of one identity's policy trie */
	MOAT_MAX_ENDPOINTS = 16384,  /* endpoints of one node, and their conntrack counts */
	MOAT_IPCACHE_ENTRIES = 524288, /* the default: 150,000 dual-stack pods, their Services and nodes fit */
	MOAT_CONNTRACK_ENTRIES = 262144, /* the default; the enforcer may size the table otherwise */
	MOAT_HOSTPORT_ENTRIES = 16384,
	MOAT_FRAGMENT_ENTRIES = 16384,
	MOAT_EVENTS_BYTES = 4 << 20, /* the ring buffer */
	MOAT_DNS_NAME_ENTRIES = 65536, /* the dns_names map: name patterns of every set */
	MOAT_DNS_NAME_LEN = 256,       /* bytes of a name in a dns_names key (a wire-format name is at most 255) */
	MOAT_DNS_MAX_LABELS = 32,      /* labels of a name pattern, its wildcard included */
	MOAT_FQDN_LEARNED_ENTRIES = 65536, /* the default size of fqdn_learned; the enforcer may size it otherwise */
	MOAT_FQDN_PER_IDENTITY = 4096,     /* the default bound of one identity's learned addresses (dns_timing) */
	MOAT_DNS_MIN_TTL = 30,             /* default seconds a learned address lives at least (dns_timing) */
	MOAT_DNS_GRACE = 60,               /* default seconds it lives past its TTL (dns_timing) */
	MOAT_DNS_RESOLVERS = 256,          /* trusted resolver addresses */
	MOAT_DNS_ANSWER_RECORDS = 16,      /* answer records the datapath reads; more go to the agent */
	MOAT_DNS_ANSWER_LEN = 1024,        /* bytes of an answer the datapath reads; records past them go to the agent */
	MOAT_DNS_FALLBACK_FRAME = 4096,    /* bytes of a frame copied to the agent */
	MOAT_DNS_FALLBACK_BYTES = 1 << 20, /* the dns_fallback ring buffer */
	MOAT_TAILS = 4,                    /* slots of the tails prog array (enum moat_tail) */
	MOAT_DNS_QUERY_ENTRIES = 16384,    /* queries in flight whose answer's latency is measured (dns_queries) */
	MOAT_DNS_STAT_ENTRIES = 65536,     /* per-identity DNS counters (dns_stats) */
	MOAT_DNS_EVENT_ADDRS = 8,          /* answer addresses one DNS event carries */
	MOAT_DNS_EVENTS_BYTES = 1 << 20,   /* the dns_events ring buffer */
	MOAT_DNS_ANSWER_EVENTS = 100,      /* default events a second, per CPU, of answers no fqdn pattern matched */
	MOAT_DNS_LATENCY_BUCKETS = 24,     /* latency buckets: bucket b counts answers under 2^b microseconds */
};

/* The mark of a DNS answer the agent re-injects into a pod (AF_PACKET with SO_MARK on the host veth): to_pod passes
 * it on without reading it again. Only host-side sockets set a mark; a veth clears it on packets that cross from a
 * pod's namespace, so no pod can forge it. */
enum moat_marks {
	MOAT_MARK_DNS_REINJECT = 0x4d4f0035,
};

enum moat_direction {
	MOAT_DIR_EGRESS = 0,  /* from the pod: host veth ingress hook */
	MOAT_DIR_INGRESS = 1, /* to the pod: host veth egress hook */
};

/* What the remote end of a packet is, from the ipcache map; no entry means the world. */
enum moat_class {
	MOAT_CLASS_WORLD = 0,
	MOAT_CLASS_POD = 1,
	MOAT_CLASS_SERVICE = 2,
	MOAT_CLASS_NODE = 3,
	MOAT_CLASS_METADATA = 4,
	MOAT_CLASS_CLUSTER = 5,
};

enum moat_action {
	MOAT_ACTION_NONE = 0,
	MOAT_ACTION_ALLOW = 1,
	MOAT_ACTION_DENY = 2,
};

enum moat_verdict {
	MOAT_VERDICT_ALLOWED = 0,
	MOAT_VERDICT_DENIED = 1,
	MOAT_VERDICT_AUDIT = 2, /* would have been denied (audit namespace) or matched a rule of an Audit policy */
};

/* Why a packet passed or was dropped: indexes reason_counts and travels in every event. */
enum moat_reason {
	MOAT_REASON_NONE = 0,
	/* passed */
	MOAT_REASON_ALLOW_RULE = 1,    /* a rule allowed the new flow */
	MOAT_REASON_ALLOW_DEFAULT = 2, /* no rule matched; the default for the remote class allowed it */
	MOAT_REASON_CT_ESTABLISHED = 3,
	MOAT_REASON_CT_REPLY = 4,
	MOAT_REASON_CT_RELATED = 5, /* an ICMP error about a tracked flow */
	MOAT_REASON_NEIGHBOR = 6,   /* ARP, IPv6 neighbour discovery and MLD */
	MOAT_REASON_FRAGMENT = 7,   /* a non-first fragment of an allowed first fragment */
	MOAT_REASON_AUDIT = 8,      /* would have been dropped; the namespace is in audit mode */
	MOAT_REASON_AUDIT_POLICY = 9, /* report of an Audit policy's first matching rule (events only) */
	/* dropped */
	MOAT_REASON_NO_ENDPOINT = 16,  /* the program runs on a device with no endpoint entry (fail closed) */
	MOAT_REASON_SPOOFED = 17,      /* source address is not the pod's */
	MOAT_REASON_DENY_RULE = 18,
	MOAT_REASON_DENY_DEFAULT = 19, /* no rule matched; the world default is Deny */
	MOAT_REASON_METADATA = 20,     /* the metadata API, and the namespace is not allowed to reach it */
	MOAT_REASON_MALFORMED = 21,    /* truncated or invalid headers */
	MOAT_REASON_FRAG_NO_FIRST = 22, /* a non-first fragment whose first fragment was never seen */
	MOAT_REASON_EXTHDR_LIMIT = 23, /* more IPv6 extension headers than the datapath walks */
	MOAT_REASON_UNSUPPORTED_L3 = 24, /* neither IPv4, IPv6 nor ARP */
	MOAT_REASON_REVOKED = 25,      /* an established flow that the current policy denies */
	MOAT_REASON_NO_POLICY = 26,    /* the identity's policy map has no root PORT entry: never published whole */
	MOAT_REASON_NEIGHBOR_DENIED = 27, /* ARP or ND/MLD that a pod may not send: another's address or MAC, a
					   * router's message, a payload beyond its options */
	MOAT_REASON_NOT_FOR_ENDPOINT = 28, /* to a pod, but not to its address, a broadcast or a multicast group */
	MOAT_REASON_ENCAPSULATION = 29,    /* tunnel traffic (IPIP, 6in4, GRE, VXLAN, Geneve) to the node: needs a rule */
	MOAT_REASON_CT_LIMIT = 30,         /* a new flow past the endpoint's bound of conntrack entries */
	MOAT_REASON_NO_CONFIG = 31,        /* the config map has no entry: the maps were never set up (fail closed) */
	MOAT_REASON_UNKNOWN_POD = 32,      /* an address of a pod range that no known pod holds yet, which a rule by
					    * namespace denies (the pod may be of that namespace) */
	MOAT_REASON_DNS_DENIED = 33,       /* a DNS query for a name the namespace may not resolve: answered NXDOMAIN
					    * by the datapath, never sent on */
	MOAT_REASON_DNS_UNPARSED = 34,     /* a DNS query the datapath cannot read, from a namespace with names it
					    * may not resolve (several questions, a compressed or malformed name) */
	MOAT_REASON_DNS_TO_AGENT = 35,     /* a DNS answer for a name of the pod's fqdn patterns that the datapath
					    * cannot read in place: copied to the agent (dns_fallback), which learns
					    * and re-injects it (UDP); a TCP segment is copied and passed */
	MOAT_REASON_DNS_UNTRUSTED = 36,    /* a new DNS flow (port 53 or 853) of a namespace with fqdn peers to an
					    * address that is no trusted resolver (dns_resolvers) */
	MOAT_REASON_MAX = 40,
};

/* endpoints map value, keyed by the host veth's ifindex. Written by the plugin (and the enforcer on re-tag). */
enum moat_endpoint_mode {
	MOAT_MODE_ENFORCE = 0,
	MOAT_MODE_AUDIT = 1, /* every policy verdict of this endpoint is report-only */
};

struct moat_endpoint {
	__u32 identity;   /* namespace identity; 0 = namespace not known yet (cluster defaults apply) */
	__u8 mode;        /* enum moat_endpoint_mode */
	__u8 n_ipv4;      /* valid entries in ipv4 */
	__u8 n_ipv6;      /* valid entries in ipv6 */
	__u8 pad;
	__u8 ipv4[MOAT_MAX_ENDPOINT_V4][4];
	__u8 ipv6[MOAT_MAX_ENDPOINT_V6][16];
	__u8 mac[6];           /* the pod interface's MAC; all zero = unknown (a record of an older plugin) */
	__u8 pad2[2];
	__u8 link_local6[16];  /* the pod interface's IPv6 link-local address; all zero = unknown */
};

/* config map, one element (key 0). Written by the enforcer. */
enum moat_config_flags {
	MOAT_CFG_ALLOW_EVENTS = 1 << 0, /* also emit an event for every allowed new flow */
	MOAT_CFG_NO_SOURCE_CHECK = 1 << 1, /* FirewallConfig sourceValidation: Disabled: no reverse-path check of cluster
					     * and node sources arriving from outside */
};

struct moat_config {
	__u32 layout_version;    /* MOAT_LAYOUT_VERSION of whoever created the maps */
	__u32 flags;             /* enum moat_config_flags */
	__u64 generation;        /* bumped after every change that can alter a verdict; conntrack entries remember it */
	__u8 default_verdict[2]; /* per direction: world traffic of identities without a policy map (cluster default) */
	__u16 hz;                /* ticks per second of bpf_jiffies64, measured by the enforcer; 0 = not yet */
	__u32 ct_max_per_endpoint; /* conntrack entries one endpoint may hold; 0 = no bound of its own */
	__u32 migrated_from;     /* the layout whose maps these were migrated from; 0 = made by this layout */
};

/* ipcache map: remote address -> class and identity. data = family (4|6), then the address. */
struct moat_ipcache_key {
	__u32 prefixlen; /* 8 + prefix length */
	__u8 family;
	__u8 addr[16];
	__u8 pad[3];
};

struct moat_ipcache_value {
	__u32 identity; /* namespace identity of a pod or Service address; 0 otherwise */
	__u8 class;     /* enum moat_class */
	__u8 pad[3];
};

/*
 * Per-identity policy: the policy map, an array indexed by identity (the kernel inlines its lookup), holds each
 * identity's own LPM trie of struct moat_policy_key. The enforcer builds a new trie beside the old one and swaps
 * the reference, so a packet sees one generation whole. The trie compares keys bit by bit from the kind on
 * (prefixlen counts those bits), so each kind's fields run from the most to the least significant:
 *   PORT: kind, direction, protocol, pad, port. prefixlen 16 = every protocol of the direction, 24 = every
 *         port of the protocol, 32 + n = the first n bits of the port. port = destination port for egress, the
 *         pod's port for ingress, ICMP type, 0 for other protocols. These entries also carry the identity's
 *         flags and world defaults (the compiler writes a root entry per direction).
 *   CIDR: kind, family, class, address. prefixlen 32 + prefix length.
 *   PEER: kind, pad, class, identity. prefixlen 64.
 * class is the port class (moat_policy_value.port_class) the PORT lookup found.
 */
enum moat_policy_kind {
	MOAT_KIND_PORT = 2,
	MOAT_KIND_CIDR = 3,
	MOAT_KIND_PEER = 4,
};

struct moat_policy_port {
	__u8 kind; /* MOAT_KIND_PORT */
	__u8 direction;
	__u8 protocol;
	__u8 pad;
	__be16 port;
	__u8 pad2[14];
};

struct moat_policy_cidr {
	__u8 kind; /* MOAT_KIND_CIDR */
	__u8 family;
	__be16 class;
	__u8 addr[16];
};

struct moat_policy_peer {
	__u8 kind; /* MOAT_KIND_PEER */
	__u8 pad;
	__be16 class;
	__be32 identity;
	__u8 pad2[12];
};

enum moat_policy_bits {
	MOAT_POLICY_BITS_KIND_DIR = 16,   /* PORT: kind and direction */
	MOAT_POLICY_BITS_PROTOCOL = 24,   /* PORT: and the protocol */
	MOAT_POLICY_BITS_PORT_BASE = 32,  /* PORT: the port's bits start after the pad */
	MOAT_POLICY_BITS_CIDR_BASE = 32,  /* CIDR: kind, family and class; the address's bits follow */
	MOAT_POLICY_BITS_PEER = 64,       /* PEER: every field */
};

struct moat_policy_key {
	__u32 prefixlen;
	union {
		__u8 data[20]; /* first, so Go sees the key as bytes: bpf.PortKey, CIDRKey and PeerKey fill them */
		struct moat_policy_port port;
		struct moat_policy_cidr cidr;
		struct moat_policy_peer peer;
	};
};

/* The remote identity of an address in a pod range that no known pod holds (a pod of another node the enforcer
 * has not heard of yet): every Deny rule by namespace names it as a peer, no Allow rule does. */
enum moat_remote_identity {
	MOAT_IDENTITY_UNKNOWN_POD = 0xffffffff,
	/* The remote identity an fqdn peer's name pattern stands for in PEER entries: MOAT_IDENTITY_FQDN + its slot,
	 * the pattern's place in the identity's sorted list of fqdn patterns. A world address the identity learned
	 * from an answer for a name of that pattern is looked up as that peer. */
	MOAT_IDENTITY_FQDN = 0xffffff00,
	MOAT_FQDN_SLOTS = 64, /* fqdn patterns of one identity: a learned address holds them as a 64-bit mask */
};

enum moat_rule_order {
	MOAT_ORDER_NONE = 0xffffffff, /* a moat_rule_ref that holds no rule */
};

/* The first rule that matches: its position in the identity's rule list (smaller wins), id and action. */
struct moat_rule_ref {
	__u32 order;   /* MOAT_ORDER_NONE = no rule */
	__u32 rule_id; /* indexes rule_counts and names the rule in events */
	__u8 action;   /* enum moat_action */
	__u8 pad[3];
};

enum moat_identity_flags {
	MOAT_ID_METADATA_ALLOW = 1 << 0, /* the namespace may reach the metadata API (decided then as the world) */
	MOAT_ID_AUDIT = 1 << 1,          /* moat.dev/mode: Audit: every verdict is report-only */
	MOAT_ID_FQDN = 1 << 2,           /* the identity has fqdn peers: a world remote is looked up in fqdn_learned,
					  * and its DNS goes to trusted resolvers only */
};

struct moat_policy_value {
	struct moat_rule_ref enforce; /* CIDR, PEER: first matching rule of the Enforce policies */
	struct moat_rule_ref audit;   /* CIDR, PEER: first matching rule of the Audit policies */
	__u32 port_class;             /* PORT: the class of rules that apply to this protocol and port; 0 = none */
	__u32 flags;                  /* PORT: enum moat_identity_flags */
	__u8 default_verdict[2];      /* PORT: per direction, world traffic that no rule matched */
	__u8 pad[2];
};

/* conntrack map: conntrack, keyed from the endpoint's side so both directions of a flow find one entry. */
struct moat_ct_key {
	__u32 ifindex; /* the endpoint's host veth */
	__u8 family;
	__u8 protocol;
	__be16 lport; /* the pod's port (ICMP echo: identifier) */
	__be16 rport; /* the remote port */
	__u8 pad[2];
	__u8 laddr[16]; /* the pod's address */
	__u8 raddr[16]; /* the remote address */
};

enum moat_ct_flags {
	MOAT_CT_SEEN_REPLY = 1 << 0,
	MOAT_CT_FIN_LOCAL = 1 << 1,  /* the pod sent FIN */
	MOAT_CT_FIN_REMOTE = 1 << 2, /* the remote sent FIN */
	MOAT_CT_AUDIT = 1 << 3,      /* let through only because of audit mode */
	MOAT_CT_SEQ_LOCAL = 1 << 4,  /* seq_next[MOAT_DIR_EGRESS] holds the pod's next TCP sequence number */
	MOAT_CT_SEQ_REMOTE = 1 << 5, /* seq_next[MOAT_DIR_INGRESS] holds the remote's */
};

struct moat_ct_value {
	__u64 expires;    /* deadline in jiffies (bpf_jiffies64; config.hz per second) */
	__u64 generation; /* config.generation when policy last allowed the flow */
	__u32 rule_id;    /* the rule that allowed it (0 = a default) */
	__u8 direction;   /* direction of the first packet: enum moat_direction */
	__u8 flags;       /* enum moat_ct_flags */
	__u16 port;       /* the port policy judged the first packet by (ICMP: its type), for decisions again */
	__u32 seq_next[2]; /* TCP, by direction of the sender: the sequence number it sends next (highest seen) */
};

/* ct_counts map value, keyed by the endpoint's host veth ifindex: its conntrack entries, against
 * config.ct_max_per_endpoint. The datapath counts up on insert and down on its own deletes; LRU evictions are not
 * seen, so the enforcer recounts the table now and then. */
struct moat_ct_count {
	__u64 live;    /* entries the endpoint holds (an estimate never below the truth after a recount) */
	__u64 created; /* entries ever inserted, so a recount can add those made while it ran */
};

/* fragments map: the verdict of a first fragment, for the fragments that follow it. */
struct moat_frag_key {
	__u32 ifindex;
	__u32 id; /* IPv4 identification or IPv6 fragment id */
	__u8 family;
	__u8 protocol;
	__u8 pad[2];
	__u8 saddr[16];
	__u8 daddr[16];
};

struct moat_frag_value {
	__u64 expires; /* deadline in jiffies */
	__u32 rule_id;
	__u8 pass;   /* 1 = the first fragment passed */
	__u8 reason; /* the first fragment's reason */
	__u8 pad[2];
};

/*
 * Names a namespace may not resolve (dnsDeny). dns_sets maps an identity to its set of name patterns (identities
 * whose patterns are the same share one set); dns_names holds each set's patterns by their base name: the
 * wire-format labels in reverse order (com, example, www: "\3com\7example\3www"), lower-case, zero-padded, so
 * that every suffix of a query's name is one lookup and overlapping patterns all count. A pattern is one of three
 * forms of its base name.
 */
enum moat_dns_form {
	MOAT_DNS_EXACT = 0,    /* the name itself */
	MOAT_DNS_ONE = 1,      /* *.base: one label more */
	MOAT_DNS_ANY = 2,      /* **.base: one label or more */
	MOAT_DNS_FORMS = 3,
};
struct moat_dns_key {
	__u32 set;
	__u8 name[MOAT_DNS_NAME_LEN];
};
/* Per form, the rule that denies it (0 = none): of an Enforce policy in rule, of an Audit policy in audit_rule. */
struct moat_dns_value {
	__u32 rule[MOAT_DNS_FORMS];
	__u32 audit_rule[MOAT_DNS_FORMS];
};

/*
 * Egress by name, learned from DNS answers (fqdn peers). fqdn_sets maps an identity to its set of fqdn patterns;
 * fqdn_names holds each set's patterns by base name (struct moat_dns_key, as dns_names), the value per form the
 * slots (bits: the pattern's place in the identity's sorted patterns) that form of that base name is. An answer
 * from a trusted resolver (dns_resolvers) for a name of a slot writes the addresses in it to fqdn_learned, keyed
 * by the pod's identity: decide() looks a world remote up there and each slot as the peer MOAT_IDENTITY_FQDN+slot.
 */
struct moat_fqdn_value {
	__u64 slots[MOAT_DNS_FORMS];
};
struct moat_resolver_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];
};
struct moat_fqdn_key {
	__u32 identity;
	__u8 family; /* 4 or 6; an address of a NAT64 prefix is kept as the IPv4 address it embeds */
	__u8 pad[3];
	__u8 addr[16];
};
struct moat_fqdn_learned {
	__u64 slots;   /* the patterns whose names the address was an answer for */
	__u64 expires; /* jiffies: the latest answer's TTL (at least min_ttl) plus grace */
};
/* dns_timing, one element: what config would hold, in a map of its own so struct moat_config stays as it is. */
struct moat_dns_timing {
	__u32 min_ttl;          /* seconds */
	__u32 grace;            /* seconds */
	__u32 max_per_identity; /* learned addresses one identity may hold (fqdn_counts); 0 = no bound */
	__u32 answer_events;    /* events a second, per CPU, of answers no fqdn pattern matched (the rest always
				 * have one); 0 = none */
};
/* One dns_fallback record: an answer the datapath could not read in place, for the agent. */
struct moat_dns_fallback {
	__u32 ifindex;  /* the pod's host veth */
	__u32 identity; /* the pod's identity */
	__u32 len;      /* bytes of the frame (Ethernet on) in frame */
	__u32 wire_len; /* bytes of the whole frame */
	__u8 frame[MOAT_DNS_FALLBACK_FRAME];
};

/* A DNS query in flight (dns_queries): the pod's host veth, its port (host order) and the message id (as sent). */
struct moat_dns_query_key {
	__u32 ifindex;
	__u16 port;
	__u16 id;
};

/* What a DNS counter counts (dns_stats, per CPU): */
enum moat_dns_stat_kind {
	MOAT_DNS_STAT_QUERIES = 0,     /* queries a pod sent to port 53 */
	MOAT_DNS_STAT_ANSWERS = 1,     /* answers from trusted resolvers, by type (value) and rcode */
	MOAT_DNS_STAT_LATENCY = 2,     /* answers whose query was seen, by latency bucket (value) */
	MOAT_DNS_STAT_SYNTHESIZED = 3, /* NXDOMAIN answers (or TCP resets) the datapath gave for dnsDeny names */
	MOAT_DNS_STAT_FALLBACK = 4,    /* answers handed to the agent */
};
struct moat_dns_stat_key {
	__u32 identity;
	__u16 value; /* the query type (types the enforcer names; 0 for any other), or the latency bucket */
	__u8 kind;   /* enum moat_dns_stat_kind */
	__u8 rcode;
};

/* What a DNS event says besides its fields. */
enum moat_dns_event_flags {
	MOAT_DNS_EV_SYNTHESIZED = 1, /* the datapath answered NXDOMAIN (or reset the TCP connection): a dnsDeny name */
	MOAT_DNS_EV_AUDIT = 2,       /* a dnsDeny name an Audit policy (or audit mode) reports: resolved all the same */
	MOAT_DNS_EV_FQDN = 4,        /* the name is one of the namespace's fqdn patterns: its addresses are learned */
	MOAT_DNS_EV_TO_AGENT = 8,    /* the datapath handed the answer to the agent, which learns and gives it back */
	MOAT_DNS_EV_TRUNCATED = 16,  /* the resolver set TC: the stub asks again over TCP */
	MOAT_DNS_EV_PARTIAL = 32,    /* not every record was read: the addresses are the ones read */
	MOAT_DNS_EV_TCP = 64,        /* over TCP */
};
struct moat_dns_addr {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u32 ttl;
	__u8 addr[16];
};
/* One dns_events record: an answer a pod got from a trusted resolver, or from the datapath. */
struct moat_dns_event {
	__u64 time_ns;    /* bpf_ktime_get_ns */
	__u64 latency_ns; /* from the query the pod sent; 0 when it was not seen */
	__u64 slots;      /* the fqdn slots the name is the pattern of */
	__u32 ifindex;    /* the pod's host veth */
	__u32 identity;
	__u32 rule_id;    /* the dnsDeny rule of a synthesized (or audited) answer */
	__u16 qtype;
	__u8 rcode;
	__u8 flags;       /* enum moat_dns_event_flags */
	__u8 family;      /* of pod and resolver */
	__u8 naddr;       /* addresses in addrs */
	__u16 name_len;   /* bytes of the question's name in name, as sent (wire format) */
	__u16 port;       /* the pod's port */
	__u16 ancount;    /* answer records */
	__u8 pod[16];
	__u8 resolver[16];
	struct moat_dns_addr addrs[MOAT_DNS_EVENT_ADDRS];
	__u8 name[MOAT_DNS_NAME_LEN];
};

/* Per-reason and per-rule counters (per-CPU arrays). */
struct moat_counter {
	__u64 packets;
	__u64 bytes;
};

/* stats map indexes (per-CPU array). */
enum moat_stat {
	MOAT_STAT_EVENTS_LOST = 0, /* the ring buffer was full */
	MOAT_STAT_CT_CREATED = 1,
	MOAT_STAT_CT_LIMITED = 2, /* new flows refused by the per-endpoint conntrack bound */
	MOAT_STAT_FQDN_LEARNED = 3,   /* addresses written to fqdn_learned from answers */
	MOAT_STAT_DNS_FALLBACK = 4,   /* answers copied to the agent (dns_fallback) */
	MOAT_STAT_DNS_FALLBACK_LOST = 5, /* answers for the agent that found its ring full */
	MOAT_STAT_DNS_EVENTS_LOST = 6,   /* DNS events that found dns_events full */
	MOAT_STAT_DNS_EVENTS_SAMPLED = 7, /* answers over the answer_events rate: counted, without an event */
	MOAT_STAT_MAX = 8,
};

/* One ring buffer record. Ports in host byte order. */
struct moat_event {
	__u64 time_ns; /* bpf_ktime_get_ns */
	__u32 ifindex;
	__u32 identity;
	__u32 remote_identity;
	__u32 rule_id;
	__u8 family;
	__u8 protocol;
	__u8 direction;    /* enum moat_direction */
	__u8 verdict;      /* enum moat_verdict */
	__u8 reason;       /* enum moat_reason */
	__u8 remote_class; /* enum moat_class */
	__u8 pad[2];
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 pad2;
};

/* hostports map: a pod's hostPort on a node address, so that a pod reaching another through it is decided as pod
 * to pod. Written by the enforcer (from the Pods' hostPorts), read by the datapath. */
struct moat_hostport_key {
	__u8 family;   /* 4 or 6 */
	__u8 protocol; /* TCP, UDP or SCTP */
	__be16 port;   /* the host port */
	__u8 addr[16]; /* the node address it is open on */
};

struct moat_hostport_value {
	__u32 identity; /* the pod's namespace identity */
	__u8 addr[16];  /* the pod's address */
	__u16 port;     /* the container port, host order */
	__u8 local;     /* the pod runs on this node: its ingress is decided at the sender (portmap masquerades) */
	__u8 pad;
};

/* identities map key: the namespace name, NUL padded. Written by the enforcer, read by the plugin. */
struct moat_namespace_key {
	char name[MOAT_NAMESPACE_LEN];
};

#endif
