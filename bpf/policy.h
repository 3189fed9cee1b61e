/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The policy stage: what the remote address is (the ipcache: class and namespace identity), and the verdict for a
 * new flow from the identity's policy trie: the metadata rule, the first matching rule, then the defaults.
 */
#ifndef __MOAT_POLICY_H
#define __MOAT_POLICY_H

/* UDP ports of the encapsulations a node decapsulates */
#define UDP_PORT_VXLAN 4789
#define UDP_PORT_VXLAN_LINUX 8472 /* the kernel's and flannel's default */
#define UDP_PORT_GENEVE 6081

#define IPCACHE_BITS_FAMILY 8 /* an ipcache key's prefix starts with the family byte */

static __always_inline void classify(__u8 family, const __u8 *addr, __u8 *class, __u32 *identity)
{
	struct moat_ipcache_key k = {};
	struct moat_ipcache_value *v;

	k.prefixlen = IPCACHE_BITS_FAMILY + addr_bits(family);
	k.family = family;
	copy16(k.addr, addr);
	v = bpf_map_lookup_elem(&ipcache, &k);
	if (v) {
		*class = v->class;
		*identity = v->identity;
	} else {
		*class = MOAT_CLASS_WORLD;
		*identity = 0;
	}
}

static __always_inline void better(struct moat_rule_ref *best, const struct moat_rule_ref *r)
{
	if (r->order < best->order)
		*best = *r;
}

/* Is a an IPv6 address of a NAT64 prefix that embeds an IPv4 address in its last 32 bits: the well-known
 * 64:ff9b::/96 (RFC 6052), or the local-use 64:ff9b:1::/48 (RFC 8215) with a /96 NAT64 prefix inside it? */
static __always_inline int nat64_embeds_ipv4(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	if (a[0] != 0x00 || a[1] != 0x64 || a[2] != 0xff || a[3] != 0x9b)
		return 0;
	if (w[1] == 0 && w[2] == 0)
		return 1; /* 64:ff9b::/96 */
	return a[4] == 0x00 && a[5] == 0x01; /* 64:ff9b:1::/48 */
}

/* Encapsulation a node decapsulates (IPIP, 6in4, GRE, EtherIP, L2TP; VXLAN and Geneve by their UDP ports): sent
 * to the node, its inner packet would go where policy never looked. port is the destination port. */
static __always_inline int is_encapsulation(__u8 protocol, __u16 port)
{
	switch (protocol) {
	case IPPROTO_IPIP:
	case IPPROTO_IPV6:
	case IPPROTO_GRE:
	case IPPROTO_ETHERIP:
	case IPPROTO_L2TP:
		return 1;
	case IPPROTO_UDP:
		return port == UDP_PORT_VXLAN || port == UDP_PORT_VXLAN_LINUX || port == UDP_PORT_GENEVE;
	}
	return 0;
}

/* Per CPU, what decide() and fqdn_peers keep off the pipeline's stack (nearly full): the IPv4 address a NAT64
 * address embeds, and fqdn_peers' keys. */
struct policy_scratch {
	union { /* first: its address is the scratch space's, which spares fqdn_peers a register */
		struct moat_fqdn_key learned;
		struct moat_policy_key peer;
	};
	__u8 embedded[16];
	struct moat_rule_ref enforce;
	struct moat_rule_ref audit;
	__u64 slots;
	__u32 identity;
	__u32 before[2]; /* the orders of the best Enforce and Audit rules before fqdn_peers */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct policy_scratch));
} policy_scratch SEC(".maps");

struct fqdn_addr {
	__u8 a[16];
};

/* fqdn_peers looks up the PEER entries of the fqdn patterns the identity learned the remote for, as namespace peers
 * are: each set bit of the learned slots, lowest first, until none is left. It returns 1 when it found an Enforce
 * rule ahead of enforce_order (the best so far), 2 when an Audit rule ahead of audit_order, or'ed; the rules are
 * in policy_scratch (fqdn_fold takes them). A global function: the verifier checks it once, not on every path of
 * the pipeline that reaches it, and its frame is its own (the pipeline's is nearly full). family_class is the
 * family << 16 | the port class (a call takes five arguments). */
__noinline int fqdn_peers(__u32 family_class, __u32 identity, const struct fqdn_addr *remote, __u32 enforce_order,
			  __u32 audit_order)
{
	struct policy_scratch *s;
	struct moat_fqdn_learned *l;
	struct moat_policy_value *v;
	__u32 zero = 0, i;
	void *inner;

	if (!remote)
		return 0;
	s = bpf_map_lookup_elem(&policy_scratch, &zero);
	if (!s)
		return 0;
	s->learned = (struct moat_fqdn_key){.identity = identity, .family = family_class >> 16};
	__builtin_memcpy(s->learned.addr, remote->a, 16);
	s->identity = identity;
	s->enforce.order = s->before[0] = enforce_order;
	s->audit.order = s->before[1] = audit_order;
	l = bpf_map_lookup_elem(&fqdn_learned, &s->learned);
	if (!l || l->expires < bpf_jiffies64())
		return 0;
	s->slots = l->slots;
	inner = bpf_map_lookup_elem(&policy, &s->identity);
	if (!inner)
		return 0;
	s->peer = (struct moat_policy_key){
		.prefixlen = MOAT_POLICY_BITS_PEER,
		.peer = {.kind = MOAT_KIND_PEER, .class = bpf_htons(family_class & 0xffff)},
	};
#pragma clang loop unroll(disable)
	for (i = 0; i < MOAT_FQDN_SLOTS; i++) {
		if (!(s->slots >> i))
			break;
		if (!((s->slots >> i) & 1))
			continue;
		s->peer.peer.identity = bpf_htonl(MOAT_IDENTITY_FQDN + i);
		v = bpf_map_lookup_elem(inner, &s->peer);
		if (v) {
			better(&s->enforce, &v->enforce);
			better(&s->audit, &v->audit);
		}
	}
	return (s->enforce.order < s->before[0]) | (s->audit.order < s->before[1]) << 1;
}

/* fqdn_fold takes what fqdn_peers found (found: its return) into the best rules so far. */
static __always_inline void fqdn_fold(int found, struct moat_rule_ref *enforce, struct moat_rule_ref *audit)
{
	struct policy_scratch *s;
	__u32 zero = 0;

	if (!found)
		return;
	s = bpf_map_lookup_elem(&policy_scratch, &zero);
	if (!s)
		return;
	if (found & 1)
		*enforce = s->enforce;
	if (found & 2)
		*audit = s->audit;
}

/*
 * Decides a new flow of the endpoint (or re-decides an established one): the metadata rule, then the first
 * matching rule of the identity's Enforce policies, then the defaults. Fills d->reason, d->rule_id, the remote
 * and the Audit policy report; returns MOAT_ACTION_ALLOW or MOAT_ACTION_DENY before audit mode is applied.
 */
static __always_inline __u8 decide(const struct moat_config *cfg, __u32 identity, __u8 dir, __u8 family,
				   __u8 protocol, __u16 port, const __u8 *remote, struct decision *d)
{
	struct moat_policy_key k;
	struct moat_policy_value *v;
	struct moat_rule_ref enforce = {.order = MOAT_ORDER_NONE}, audit = {.order = MOAT_ORDER_NONE};
	__u32 flags = 0, pclass = 0;
	__u8 class, world_default;
	void *inner;

	/* A NAT64 address is decided by the IPv4 address it stands for: the metadata block and every IPv4 rule hold
	 * through the translator. */
	if (family == 6 && nat64_embeds_ipv4(remote)) {
		struct policy_scratch *s;
		__u32 zero = 0;

		s = bpf_map_lookup_elem(&policy_scratch, &zero);
		if (!s) {
			d->reason = MOAT_REASON_NO_POLICY;
			return MOAT_ACTION_DENY;
		}
		clear16(s->embedded);
		__builtin_memcpy(s->embedded, remote + 12, 4);
		remote = s->embedded;
		family = 4;
	}
	classify(family, remote, &class, &d->remote_identity);
	/* Through a pod's hostPort on a node address, the flow goes to that pod: decided as pod to pod, with the
	 * container port (the node translates it so; its address alone would make it node traffic). Only node
	 * addresses are looked up, so other flows pay nothing for it. */
	if (dir == MOAT_DIR_EGRESS && class == MOAT_CLASS_NODE &&
	    (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP)) {
		struct moat_hostport_key hk = {.family = family, .protocol = protocol, .port = bpf_htons(port)};
		struct moat_hostport_value *hp;

		copy16(hk.addr, remote);
		hp = bpf_map_lookup_elem(&hostports, &hk);
		if (hp) {
			remote = hp->addr;
			port = hp->port;
			d->hostport_local = hp->local;
			d->hostport_port = hp->port;
			d->hostport_identity = hp->identity;
			classify(family, remote, &class, &d->remote_identity);
		}
	}
	d->remote_class = class;
	d->rule_id = 0;

	/* The port class entry carries the identity's flags and world defaults too (the compiler writes a root
	 * entry per direction), so one lookup serves both. */
	inner = bpf_map_lookup_elem(&policy, &identity);
	if (inner) {
		k = (struct moat_policy_key){
			.prefixlen = MOAT_POLICY_BITS_PORT_BASE + 16,
			.port = {.kind = MOAT_KIND_PORT, .direction = dir, .protocol = protocol, .port = bpf_htons(port)},
		};
		v = bpf_map_lookup_elem(inner, &k);
		if (!v) {
			d->reason = MOAT_REASON_NO_POLICY;
			return MOAT_ACTION_DENY;
		}
		flags = v->flags;
		d->identity_flags = flags;
		world_default = v->default_verdict[dir & 1];
		pclass = v->port_class;
	} else {
		world_default = cfg->default_verdict[dir & 1];
	}

	if (class == MOAT_CLASS_METADATA) {
		if (!(flags & MOAT_ID_METADATA_ALLOW)) {
			d->reason = MOAT_REASON_METADATA;
			return MOAT_ACTION_DENY;
		}
		class = MOAT_CLASS_WORLD;
	}

	if (pclass) {
		k = (struct moat_policy_key){
			.prefixlen = MOAT_POLICY_BITS_CIDR_BASE + addr_bits(family),
			.cidr = {.kind = MOAT_KIND_CIDR, .family = family, .class = bpf_htons(pclass)},
		};
		copy16(k.cidr.addr, remote);
		v = bpf_map_lookup_elem(inner, &k);
		if (v) {
			better(&enforce, &v->enforce);
			better(&audit, &v->audit);
		}
		if (d->remote_identity) {
			k = (struct moat_policy_key){
				.prefixlen = MOAT_POLICY_BITS_PEER,
				.peer = {.kind = MOAT_KIND_PEER, .class = bpf_htons(pclass),
					 .identity = bpf_htonl(d->remote_identity)},
			};
			v = bpf_map_lookup_elem(inner, &k);
			if (v) {
				better(&enforce, &v->enforce);
				better(&audit, &v->audit);
			}
		}
		/* A world address the identity learned from DNS answers is each fqdn pattern it was an answer for (a
		 * peer MOAT_IDENTITY_FQDN + slot). Only the world: a hostile answer naming a pod, a node or the
		 * metadata API opens nothing (d->remote_class is the class before an allowed metadata API is turned
		 * into the world). */
		if (dir == MOAT_DIR_EGRESS && (flags & MOAT_ID_FQDN) && d->remote_class == MOAT_CLASS_WORLD)
			fqdn_fold(fqdn_peers((__u32)family << 16 | pclass, identity, (const struct fqdn_addr *)remote,
					     enforce.order, audit.order),
				  &enforce, &audit);
	}

	/* an Audit policy reports its first matching rule when, enforced, it would have decided */
	if (audit.order < enforce.order)
		d->audit_rule_id = audit.rule_id;

	if (enforce.order != MOAT_ORDER_NONE) {
		d->rule_id = enforce.rule_id;
		if (enforce.action == MOAT_ACTION_ALLOW) {
			d->reason = MOAT_REASON_ALLOW_RULE;
			return MOAT_ACTION_ALLOW;
		}
		d->reason = d->remote_identity == MOAT_IDENTITY_UNKNOWN_POD ? MOAT_REASON_UNKNOWN_POD : MOAT_REASON_DENY_RULE;
		return MOAT_ACTION_DENY;
	}
	if (dir == MOAT_DIR_EGRESS && (class == MOAT_CLASS_NODE || class == MOAT_CLASS_CLUSTER) &&
	    is_encapsulation(protocol, port)) {
		d->reason = MOAT_REASON_ENCAPSULATION;
		return MOAT_ACTION_DENY;
	}
	if (class == MOAT_CLASS_WORLD && world_default == MOAT_ACTION_DENY) {
		d->reason = MOAT_REASON_DENY_DEFAULT;
		return MOAT_ACTION_DENY;
	}
	d->reason = MOAT_REASON_ALLOW_DEFAULT;
	return MOAT_ACTION_ALLOW;
}

/* Is a Deny of this endpoint report-only? Its own mode, or its identity's header as decide() read it. */
static __always_inline int audit_mode(const struct moat_endpoint *ep, const struct decision *d)
{
	return ep->mode == MOAT_MODE_AUDIT || (d->identity_flags & MOAT_ID_AUDIT);
}

/*
 * decide(), and for a flow through the hostPort of a pod of this node, that pod's ingress too, with local (the
 * sending pod's address) as the remote: the portmap plugin masquerades such a flow to the node's address, so the
 * receiving pod's own hook can no longer tell who sent it. A receiver in audit mode does not deny.
 */
static __always_inline __u8 decide_flow(const struct moat_config *cfg, __u32 identity, __u8 dir, __u8 family,
					__u8 protocol, __u16 port, const __u8 *remote, const __u8 *local,
					struct decision *d)
{
	struct decision r = {};
	__u8 action = decide(cfg, identity, dir, family, protocol, port, remote, d);

	if (action != MOAT_ACTION_ALLOW || !d->hostport_local)
		return action;
	if (decide(cfg, d->hostport_identity, MOAT_DIR_INGRESS, family, protocol, d->hostport_port, local, &r) ==
		    MOAT_ACTION_ALLOW ||
	    (r.identity_flags & MOAT_ID_AUDIT))
		return action;
	d->reason = r.reason;
	d->rule_id = r.rule_id;
	return MOAT_ACTION_DENY;
}

/* The port policy judges a flow by: the destination port, which is the remote's for egress and the pod's own for
 * ingress; the type for ICMP; 0 for protocols without ports. */
static __always_inline __u16 policy_port(const struct packet *p)
{
	if (is_icmp(p))
		return p->icmp_type;
	if (!p->has_ports)
		return 0;
	return p->dport;
}

#endif
