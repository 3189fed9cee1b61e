/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The conntrack stage: flows the policy allowed, keyed from the endpoint's side so both directions find one entry;
 * their deadlines, TCP's state (FIN, RST, sequence numbers), a new decision when the policy generation moved, and
 * each endpoint's bound of entries. Also the verdicts of first fragments.
 */
#ifndef __MOAT_CONNTRACK_H
#define __MOAT_CONNTRACK_H

/* Timeouts in seconds. Deadlines of conntrack and fragment entries are in jiffies: bpf_jiffies64 is inlined by
 * the kernel (about 1 ns, against 15 for bpf_ktime_get_coarse_ns on every packet), a tick is precise enough for
 * timeouts of seconds, and config.hz turns seconds into ticks. Events keep the precise clock. */
#define CT_TIMEOUT_TCP_SYN 60
#define CT_TIMEOUT_TCP (6 * 3600)
#define CT_TIMEOUT_TCP_CLOSE 10
#define CT_TIMEOUT_OTHER 60
#define CT_TIMEOUT_ICMP 30
#define CT_REFRESH_SLACK 1 /* write a new deadline only when it moved by more than this */
#define FRAG_TIMEOUT 30
#define HZ_MAX 1000 /* the largest HZ Linux builds with */

static __always_inline int is_tcp_open(const struct packet *p)
{
	return p->protocol == IPPROTO_TCP && p->has_ports &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_SYN;
}

static __always_inline void ct_key_for(struct moat_ct_key *k, __u32 ifindex, __u8 family, __u8 protocol,
				       const __u8 *laddr, __u16 lport, const __u8 *raddr, __u16 rport)
{
	*k = (struct moat_ct_key){
		.ifindex = ifindex,
		.family = family,
		.protocol = protocol,
		.lport = bpf_htons(lport),
		.rport = bpf_htons(rport),
	};
	copy16(k->laddr, laddr);
	copy16(k->raddr, raddr);
}

/*
 * The key of the packet's own flow, from the endpoint's side (local = the pod). An echo's identifier is the local
 * port, with no remote port; protocols without ports have neither. Returns 0 for ICMP that conntrack does not
 * track (anything but echo: errors are looked up by their quote, the rest is judged packet by packet).
 */
static __always_inline int ct_key_of(struct moat_ct_key *k, __u32 ifindex, const struct packet *p, __u8 dir)
{
	int egress = dir == MOAT_DIR_EGRESS;
	__u16 lport = egress ? p->sport : p->dport;
	__u16 rport = egress ? p->dport : p->sport;

	if (is_icmp(p)) {
		if (!is_icmp_echo(p->family, p->icmp_type))
			return 0;
		rport = 0;
	} else if (!p->has_ports) {
		lport = 0;
		rport = 0;
	}
	ct_key_for(k, ifindex, p->family, p->protocol, egress ? p->saddr : p->daddr, lport,
		   egress ? p->daddr : p->saddr, rport);
	return 1;
}

/*
 * The key of the flow an ICMP error quotes. The quoted packet travelled the other way: its source is the pod for
 * an error towards the pod, the peer for one from it. Returns 0 when the error is not related to a flow: its
 * quote does not read (or is longer than a real stack sends), or it does not go back to the quoted packet's
 * source. An error sent anywhere else would carry data past policy to any address: plain ICMP for policy.
 */
static __always_inline int ct_key_of_quote(struct __sk_buff *skb, struct moat_ct_key *k, const struct packet *p,
					   __u8 dir)
{
	struct flow in;

	if (parse_icmp_quote(skb, p, &in) < 0 || !addr_eq(in.saddr, p->daddr))
		return 0;
	if (dir == MOAT_DIR_INGRESS)
		ct_key_for(k, skb->ifindex, p->family, in.protocol, in.saddr, in.sport, in.daddr, in.dport);
	else if (in.protocol == icmp_proto(p->family))
		ct_key_for(k, skb->ifindex, p->family, in.protocol, in.daddr, in.sport, in.saddr, 0);
	else
		ct_key_for(k, skb->ifindex, p->family, in.protocol, in.daddr, in.dport, in.saddr, in.sport);
	return 1;
}

/* Ticks per second: the enforcer measures them before any program is attached; should it not have, the largest
 * HZ Linux builds with makes every deadline late, never early. */
static __always_inline __u64 ticks(const struct moat_config *cfg, __u64 seconds)
{
	return seconds * (cfg->hz ? cfg->hz : HZ_MAX);
}

/* in seconds */
static __always_inline __u64 ct_timeout(__u8 protocol, __u8 flags, int established)
{
	if (protocol == IPPROTO_TCP) {
		if ((flags & (MOAT_CT_FIN_LOCAL | MOAT_CT_FIN_REMOTE)) == (MOAT_CT_FIN_LOCAL | MOAT_CT_FIN_REMOTE))
			return CT_TIMEOUT_TCP_CLOSE;
		return established ? CT_TIMEOUT_TCP : CT_TIMEOUT_TCP_SYN;
	}
	if (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6)
		return CT_TIMEOUT_ICMP;
	return CT_TIMEOUT_OTHER;
}

int dns_untrusted(__u32 family_proto_port, const struct fqdn_addr *daddr); /* dns.h */

/*
 * An entry allowed under an older generation is decided again, as its first packet was, under the current
 * policy, the check of DNS flows of identities with fqdn peers included: a pod's flow to port 53 or 853 of a
 * resolver that is not trusted, opened before its namespace had fqdn rules, goes at its next packet out. (That
 * check needs a frame moat_to_pod has no room for: a reply of such a flow that comes first passes and leaves the
 * entry to be decided by the pod's next packet.) Returns 1 when the flow may go on.
 */
static __always_inline int ct_revalidate(const struct moat_config *cfg, const struct moat_endpoint *ep,
					 const struct moat_ct_key *k, struct moat_ct_value *ct, struct decision *d,
					 __u8 dir)
{
	struct decision r = {};
	__u8 action;

	if (ct->generation == cfg->generation)
		return 1;
	action = decide_flow(cfg, ep->identity, ct->direction, k->family, k->protocol, ct->port, k->raddr, k->laddr, &r);
	if (action == MOAT_ACTION_ALLOW && ct->direction == MOAT_DIR_EGRESS && (r.identity_flags & MOAT_ID_FQDN) &&
	    (k->protocol == IPPROTO_UDP || k->protocol == IPPROTO_TCP) && (ct->port == 53 || ct->port == 853)) {
		if (dir != MOAT_DIR_EGRESS)
			return 1; /* generation left as it was */
		if (dns_untrusted((__u32)k->family << 24 | (__u32)k->protocol << 16 | ct->port,
				  (const struct fqdn_addr *)k->raddr))
			action = MOAT_ACTION_DENY;
	}
	if (action == MOAT_ACTION_ALLOW || audit_mode(ep, &r)) {
		ct->generation = cfg->generation;
		ct->rule_id = r.rule_id;
		if (action != MOAT_ACTION_ALLOW)
			ct->flags |= MOAT_CT_AUDIT;
		else
			ct->flags &= ~MOAT_CT_AUDIT;
		return 1;
	}
	d->rule_id = r.rule_id;
	d->remote_class = r.remote_class;
	d->remote_identity = r.remote_identity;
	return 0;
}

/* ---- the per-endpoint bound ---- */

static __always_inline struct moat_ct_count *ct_count_of(__u32 ifindex)
{
	struct moat_ct_count *c = bpf_map_lookup_elem(&ct_counts, &ifindex);

	if (!c) {
		struct moat_ct_count zero = {};
		bpf_map_update_elem(&ct_counts, &ifindex, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&ct_counts, &ifindex);
	}
	return c;
}

/* Deletes a conntrack entry of the endpoint and counts it out. */
static __always_inline void ct_delete(const struct moat_ct_key *k)
{
	struct moat_ct_count *c;

	if (bpf_map_delete_elem(&conntrack, k) != 0)
		return;
	c = bpf_map_lookup_elem(&ct_counts, &k->ifindex);
	if (c && c->live > 0)
		__sync_fetch_and_add(&c->live, -1);
}

/* The sequence number after a TCP segment: what its sender sends next. */
static __always_inline __u32 tcp_seq_end(const struct packet *p)
{
	return p->tcp_seq + p->tcp_len + ((p->tcp_flags & TCP_FLAG_SYN) ? 1 : 0) +
	       ((p->tcp_flags & TCP_FLAG_FIN) ? 1 : 0);
}

static __always_inline __u8 ct_seq_flag(__u8 dir)
{
	return dir == MOAT_DIR_EGRESS ? MOAT_CT_SEQ_LOCAL : MOAT_CT_SEQ_REMOTE;
}

/*
 * Would the endpoint's own TCP take this RST? Only one that an on-path sender could write: its sequence number is
 * exactly the next one its sender's side of the flow sends (RFC 5961: a modern stack resets only on that, and
 * answers any other in-window RST with a challenge ACK that draws the exact one), or it acknowledges exactly what
 * the other side sent (the answer to a SYN). A blind RST from off the path matches neither.
 */
static __always_inline int tcp_rst_accepted(const struct moat_ct_value *ct, const struct packet *p, __u8 dir)
{
	__u8 other = dir ^ 1;

	if ((ct->flags & ct_seq_flag(dir)) && p->tcp_seq == ct->seq_next[dir & 1])
		return 1;
	return (p->tcp_flags & TCP_FLAG_ACK) && (ct->flags & ct_seq_flag(other)) &&
	       p->tcp_ack == ct->seq_next[other & 1];
}

/* Keeps the highest next sequence number each side of a TCP flow has sent. */
static __always_inline void tcp_track_seq(struct moat_ct_value *ct, const struct packet *p, __u8 dir)
{
	__u32 end = tcp_seq_end(p);
	__u8 own = ct_seq_flag(dir);

	if (!(ct->flags & own) || (__s32)(end - ct->seq_next[dir & 1]) > 0) {
		ct->seq_next[dir & 1] = end;
		ct->flags |= own;
	}
}

/* Moves an entry's deadline on; written only when it moved by more than the slack, or back (a FIN). */
static __always_inline void ct_refresh(const struct moat_config *cfg, struct moat_ct_value *ct, __u8 protocol,
				       __u64 now)
{
	__u64 deadline = now + ticks(cfg, ct_timeout(protocol, ct->flags, ct->flags & MOAT_CT_SEEN_REPLY));

	if (deadline > ct->expires + ticks(cfg, CT_REFRESH_SLACK) || deadline < ct->expires)
		ct->expires = deadline;
}

/*
 * Looks the flow up in conntrack: the packet's own, or for an ICMP error the one it quotes (related). Returns 1
 * and fills d when conntrack decides the packet (an established or related flow, or one that a policy change
 * revoked), 0 when it is new.
 */
static __always_inline int ct_lookup(struct __sk_buff *skb, const struct moat_config *cfg,
				     const struct moat_endpoint *ep, const struct packet *p, __u8 dir,
				     struct decision *d)
{
	struct moat_ct_key k;
	struct moat_ct_value *ct;
	__u64 now = bpf_jiffies64();
	int related = is_icmp(p) && is_icmp_error(p->family, p->icmp_type);

	if (related ? !ct_key_of_quote(skb, &k, p, dir) : !ct_key_of(&k, skb->ifindex, p, dir))
		return 0;
	ct = bpf_map_lookup_elem(&conntrack, &k);
	if (!ct)
		return 0;
	if (ct->expires < now) {
		ct_delete(&k);
		return 0;
	}
	if (!ct_revalidate(cfg, ep, &k, ct, d, dir)) {
		ct_delete(&k);
		d->pass = 0;
		d->reason = MOAT_REASON_REVOKED;
		d->verdict = MOAT_VERDICT_DENIED;
		d->emit = 1;
		return 1;
	}
	d->pass = 1;
	d->verdict = MOAT_VERDICT_ALLOWED;
	d->rule_id = ct->rule_id;
	if (related) {
		d->reason = MOAT_REASON_CT_RELATED;
		return 1;
	}
	d->reason = dir == ct->direction ? MOAT_REASON_CT_ESTABLISHED : MOAT_REASON_CT_REPLY;
	/* flags are written only when they change: a flow's packets in both directions, often on two CPUs, do not
	 * pass the entry's cache line back and forth for a bit that is set already */
	if (dir != ct->direction && !(ct->flags & MOAT_CT_SEEN_REPLY))
		ct->flags |= MOAT_CT_SEEN_REPLY;

	if (p->protocol == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FLAG_RST) {
			/* The RST passes either way: the endpoint's TCP judges it. Only one it would take ends the
			 * flow here, so a blind RST cannot cut an allowed flow out of conntrack. */
			if (tcp_rst_accepted(ct, p, dir))
				ct_delete(&k);
			return 1;
		}
		tcp_track_seq(ct, p, dir);
		if (p->tcp_flags & TCP_FLAG_FIN)
			ct->flags |= dir == MOAT_DIR_EGRESS ? MOAT_CT_FIN_LOCAL : MOAT_CT_FIN_REMOTE;
	}
	ct_refresh(cfg, ct, p->protocol, now);
	return 1;
}

/*
 * Writes a new flow's record over an entry that holds the same key (a SYN on a reused port, a flow that an expiry
 * or a policy change left behind), in place: no table lock, no LRU node, nothing to count. The deadline and the
 * rule go first and the generation last, so a packet of the flow on another CPU sees either the old record or one
 * that the current policy allowed.
 */
static __always_inline void ct_overwrite(struct moat_ct_value *ct, const struct moat_ct_value *v)
{
	ct->expires = v->expires;
	ct->rule_id = v->rule_id;
	ct->direction = v->direction;
	ct->port = v->port;
	ct->seq_next[0] = v->seq_next[0];
	ct->seq_next[1] = v->seq_next[1];
	ct->flags = v->flags;
	__asm__ __volatile__("" ::: "memory"); /* the compiler keeps the generation last */
	ct->generation = v->generation;
}

/*
 * Records an allowed new flow. Returns 0, or MOAT_REASON_CT_LIMIT when the endpoint already holds its bound of
 * entries: a flood of new flows fills its own share, never the table of everyone else. A new flow is inserted
 * straight away (a lookup first would cost every new flow a miss in a cold bucket); only when its key is taken
 * already (a SYN on a reused port, a closed flow in its last seconds, or a flow another CPU inserted meanwhile)
 * is the entry there written over in place.
 */
static __always_inline int ct_create(__u32 ifindex, const struct packet *p, __u8 dir,
				     const struct moat_config *cfg, const struct decision *d)
{
	struct moat_ct_key k;
	struct moat_ct_value v = {};
	struct moat_ct_value *old;
	struct moat_ct_count *c = 0;

	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_RST))
		return 0;
	if (!ct_key_of(&k, ifindex, p, dir))
		return 0;
	v.generation = cfg->generation;
	v.direction = dir;
	v.port = policy_port(p);
	v.rule_id = d->rule_id;
	v.flags = d->ct_audit ? MOAT_CT_AUDIT : 0;
	/* a TCP flow picked up after its handshake (an eviction, a restart) counts as established */
	v.expires = bpf_jiffies64() +
		    ticks(cfg, ct_timeout(p->protocol, 0, p->protocol == IPPROTO_TCP && !(p->tcp_flags & TCP_FLAG_SYN)));
	if (p->protocol == IPPROTO_TCP && p->has_ports) {
		v.seq_next[dir & 1] = tcp_seq_end(p);
		v.flags |= ct_seq_flag(dir);
	}
	if (cfg->ct_max_per_endpoint) {
		c = ct_count_of(ifindex);
		if (c && c->live >= cfg->ct_max_per_endpoint) {
			/* at the bound, only an entry that exists already may be written again */
			old = bpf_map_lookup_elem(&conntrack, &k);
			if (!old) {
				stat_inc(MOAT_STAT_CT_LIMITED);
				return MOAT_REASON_CT_LIMIT;
			}
			ct_overwrite(old, &v);
			return 0;
		}
	}
	if (bpf_map_update_elem(&conntrack, &k, &v, BPF_NOEXIST) == 0) {
		stat_inc(MOAT_STAT_CT_CREATED);
		if (c) {
			__sync_fetch_and_add(&c->live, 1);
			__sync_fetch_and_add(&c->created, 1);
		}
		return 0;
	}
	old = bpf_map_lookup_elem(&conntrack, &k);
	if (old)
		ct_overwrite(old, &v);
	else
		bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY); /* gone in between: no new one to count */
	return 0;
}

/* ---- fragments: the first one's verdict, for those after it ---- */

static __always_inline void frag_key_for(struct moat_frag_key *k, __u32 ifindex, const struct packet *p)
{
	*k = (struct moat_frag_key){
		.ifindex = ifindex,
		.id = p->frag_id,
		.family = p->family,
		.protocol = p->frag_protocol,
	};
	copy16(k->saddr, p->saddr);
	copy16(k->daddr, p->daddr);
}

#endif
