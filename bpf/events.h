/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The exit stage: what the pipeline decided about a packet (struct decision), the per-reason and per-rule
 * counters, and the flow event in the ring buffer.
 */
#ifndef __MOAT_EVENTS_H
#define __MOAT_EVENTS_H

static __always_inline void count(void *map, __u32 idx, __u32 bytes)
{
	struct moat_counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		(*v)++;
}

/* What the pipeline decided about one packet, for the exit path. */
struct decision {
	__u8 pass;
	__u8 reason;
	__u8 verdict;
	__u8 remote_class;
	__u8 create_ct;  /* a new flow that policy let through */
	__u8 ct_audit;   /* it passed only because of audit mode */
	__u8 emit;       /* send an event */
	__u8 pad;
	__u32 rule_id;
	__u32 remote_identity;
	__u32 audit_rule_id; /* an Audit policy's first matching rule to report; 0 = none */
	__u32 identity_flags; /* the enum moat_identity_flags that decide() read from the identity's policy */
	__u8 hostport_local;   /* decide() went through a hostPort to a pod of this node: its ingress is still due */
	__u8 pad2;
	__u16 hostport_port;   /* that pod's container port */
	__u32 hostport_identity;
};

static __always_inline void emit_event(struct __sk_buff *skb, const struct packet *p, __u32 identity, __u8 dir,
				       __u8 verdict, __u8 reason, __u32 rule_id, __u32 remote_identity,
				       __u8 remote_class)
{
	struct moat_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		stat_inc(MOAT_STAT_EVENTS_LOST); /* never wait for the reader */
		return;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->identity = identity;
	e->remote_identity = remote_identity;
	e->rule_id = rule_id;
	e->family = p->family;
	e->protocol = p->protocol;
	e->direction = dir;
	e->verdict = verdict;
	e->reason = reason;
	e->remote_class = remote_class;
	e->pad[0] = 0;
	e->pad[1] = 0;
	copy16(e->saddr, p->saddr);
	copy16(e->daddr, p->daddr);
	e->sport = p->sport;
	e->dport = p->dport;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}

/* The exit of every packet: its reason's and rule's counters, its events, and the verdict for tcx. */
static __always_inline int finish(struct __sk_buff *skb, const struct moat_endpoint *ep, const struct packet *p,
				  __u8 dir, struct decision *d)
{
	__u32 identity = ep ? ep->identity : 0;

	count(&reason_counts, d->reason, skb->len);
	if (d->rule_id)
		count(&rule_counts, d->rule_id, skb->len);
	if (d->audit_rule_id) {
		count(&rule_counts, d->audit_rule_id, skb->len);
		emit_event(skb, p, identity, dir, MOAT_VERDICT_AUDIT, MOAT_REASON_AUDIT_POLICY, d->audit_rule_id,
			   d->remote_identity, d->remote_class);
	}
	if (d->emit)
		emit_event(skb, p, identity, dir, d->verdict, d->reason, d->rule_id, d->remote_identity,
			   d->remote_class);
	return d->pass ? TCX_NEXT : TCX_DROP;
}

#endif
