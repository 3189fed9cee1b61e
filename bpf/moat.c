//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Moat's datapath: two TC programs on the host side of every pod's veth.
 *   from_pod: host veth ingress, packets the pod sends (egress policy)
 *   to_pod:   host veth egress, packets the pod receives (ingress policy)
 * This file is the pipeline; each stage is a header of its own:
 *   endpoint and config -> parse (parse.h) -> neighbour discovery (neighbor.h) -> anti-spoof -> names a pod may
 *   not resolve, and learning from DNS answers (dns.h) -> fragments and conntrack (conntrack.h) -> where the source came from (source.h) -> classify the remote and policy
 *   (policy.h) -> verdict, counters, event (events.h).
 * The maps are in maps.h, the structures shared with Go in moat.h. docs/datapath.md describes it with every map.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "moat.h"
#include "maps.h"
#include "parse.h"
#include "events.h"
#include "policy.h"
#include "neighbor.h"
#include "source.h"
#include "conntrack.h"
#include "dns.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* process runs the pipeline; with_dns (moat_dns_query only) runs the DNS stage in it, where moat_from_pod hands
 * the packets that stage must see on to moat_dns_query. */
static __always_inline int process(struct __sk_buff *skb, __u8 dir, const int with_dns)
{
	struct packet p = {};
	struct decision d = {};
	struct moat_endpoint *ep;
	struct moat_config *cfg;
	__u32 ifindex = skb->ifindex, zero = 0;
	struct ethhdr_moat eth;
	__u16 proto;
	int err;

	d.verdict = MOAT_VERDICT_DENIED;
	d.emit = 1;
	p.data = (void *)(long)skb->data;
	p.data_end = (void *)(long)skb->data_end;

	ep = bpf_map_lookup_elem(&local_endpoints, &ifindex);
	if (!ep) {
		d.reason = MOAT_REASON_NO_ENDPOINT;
		count(&reason_counts, d.reason, skb->len);
		return TCX_DROP; /* no event: there is no endpoint to name, and this may be a storm */
	}
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg) {
		d.reason = MOAT_REASON_NO_CONFIG;
		return finish(skb, ep, &p, dir, &d);
	}

	if (load(skb, &p, 0, &eth, sizeof(eth)) < 0) {
		d.reason = MOAT_REASON_MALFORMED;
		return finish(skb, ep, &p, dir, &d);
	}
	/* a pod sends with its own MAC only, so it cannot take over another's place in the bridge's table */
	if (dir == MOAT_DIR_EGRESS && mac_known(ep) && !mac_eq(eth.source, ep->mac)) {
		d.reason = MOAT_REASON_SPOOFED;
		return finish(skb, ep, &p, dir, &d);
	}
	proto = bpf_ntohs(eth.proto);
	if (proto == ETH_P_ARP) {
		return finish_neighbor(skb, ep, &p, dir, &d, arp_check(skb, &p, ep, dir));
	}
	if (proto == ETH_P_IP)
		err = parse_ipv4(skb, &p);
	else if (proto == ETH_P_IPV6)
		err = parse_ipv6(skb, &p);
	else
		err = MOAT_REASON_UNSUPPORTED_L3;
	if (err) {
		d.reason = err;
		return finish(skb, ep, &p, dir, &d);
	}

	/* to a pod only what is addressed to it: nothing rides to a pod on a frame sent to its MAC */
	if (dir == MOAT_DIR_INGRESS && !for_endpoint(ep, &p)) {
		d.reason = MOAT_REASON_NOT_FOR_ENDPOINT;
		return finish(skb, ep, &p, dir, &d);
	}
	/* A pod's ARP and ND pass without policy, so neither can be blocked by a deny-everything policy, but only
	 * for its own addresses and towards its link (neighbor.h). An ND or MLD type with another hop limit is no
	 * neighbour message to any receiver: plain ICMPv6 for policy. */
	if (is_neighbor_message(&p) && nd_on_link(&p)) {
		err = dir == MOAT_DIR_EGRESS ? nd_from_pod(skb, &p, ep) : 0;
		return finish_neighbor(skb, ep, &p, dir, &d, err);
	}
	if (dir == MOAT_DIR_EGRESS && !endpoint_owns(ep, p.family, p.saddr)) {
		d.reason = MOAT_REASON_SPOOFED;
		return finish(skb, ep, &p, dir, &d);
	}

	/* a DNS answer to a pod whose identity has fqdn peers: learned from (dns.h, moat_dns_answer) before the pod
	 * sees it; moat_dns_answer hands it back to moat_to_pod_answered (this with with_dns), which goes on. When
	 * the stage cannot be reached, nothing is learned: the answer goes on. */
	if (dir == MOAT_DIR_INGRESS && !with_dns && dns_answer_candidate(skb, &p))
		bpf_tail_call(skb, &tails, MOAT_TAIL_ANSWER);

	if (dir == MOAT_DIR_EGRESS && dns_candidate(&p, ep)) {
		if (!with_dns) {
			bpf_tail_call(skb, &tails, MOAT_TAIL_DNS);
			/* only if the DNS stage could not be reached: its names must not slip through */
			d.reason = MOAT_REASON_DNS_UNPARSED;
			return finish(skb, ep, &p, dir, &d);
		}
		switch (dns_query(skb, &p, &d, ep)) {
		case DNS_ANSWERED:
			/* the answer goes into the pod as if its resolver had sent it (the peer's ingress) */
			dns_report(skb, ep->identity, dns_query_meta(&p, MOAT_DNS_EV_SYNTHESIZED), d.rule_id,
				   (const struct dns_pair *)p.saddr);
			finish(skb, ep, &p, dir, &d);
			return bpf_redirect_peer(ifindex, 0);
		case DNS_DROP:
			return finish(skb, ep, &p, dir, &d);
		case DNS_AUDIT:
			count(&rule_counts, d.rule_id, skb->len);
			emit_event(skb, &p, ep->identity, dir, d.verdict, d.reason, d.rule_id, 0, 0);
			dns_report(skb, ep->identity, dns_query_meta(&p, MOAT_DNS_EV_AUDIT), d.rule_id,
				   (const struct dns_pair *)p.saddr);
			break;
		}
		d.rule_id = 0;
		d.reason = MOAT_REASON_NONE;
		d.verdict = MOAT_VERDICT_DENIED;
		d.emit = 1;
	}

	/* a query: when it left, for its answer's latency (dns.h) */
	if (dir == MOAT_DIR_EGRESS && p.dport == DNS_PORT && !p.non_first &&
	    (p.protocol == IPPROTO_UDP || (p.protocol == IPPROTO_TCP && p.tcp_len)))
		dns_query_seen(skb, ep->identity, p.l4_off | (__u32)p.protocol << 16, p.sport);

	if (p.non_first) {
		struct moat_frag_key fk;
		struct moat_frag_value *fv;

		frag_key_for(&fk, ifindex, &p);
		fv = bpf_map_lookup_elem(&fragments, &fk);
		if (!fv || fv->expires < bpf_jiffies64()) {
			d.reason = MOAT_REASON_FRAG_NO_FIRST;
			return finish(skb, ep, &p, dir, &d);
		}
		d.rule_id = fv->rule_id;
		if (fv->pass) {
			d.pass = 1;
			d.verdict = MOAT_VERDICT_ALLOWED;
			d.reason = MOAT_REASON_FRAGMENT;
			d.emit = 0;
		} else {
			d.reason = fv->reason;
		}
		return finish(skb, ep, &p, dir, &d);
	}

	d.emit = 0;
	/* A pure SYN opens a connection: policy decides it whatever conntrack holds (a stale entry of a reused
	 * port is replaced), which spares new connections the conntrack lookup. */
	if (is_tcp_open(&p) || !ct_lookup(skb, cfg, ep, &p, dir, &d)) {
		__u8 action;

		if (dir == MOAT_DIR_INGRESS && !source_path_ok(skb, cfg, &p)) {
			/* not policy: dropped in audit mode too */
			d.reason = MOAT_REASON_SPOOFED;
			d.verdict = MOAT_VERDICT_DENIED;
			d.emit = 1;
			return finish(skb, ep, &p, dir, &d);
		}
		action = decide_flow(cfg, ep->identity, dir, p.family, p.protocol, policy_port(&p),
				     dir == MOAT_DIR_EGRESS ? p.daddr : p.saddr, dir == MOAT_DIR_EGRESS ? p.saddr : p.daddr, &d);
		/* DNS of an identity with fqdn peers goes to trusted resolvers only: as a policy denial (audit mode
		 * reports it) */
		if (dir == MOAT_DIR_EGRESS && (d.identity_flags & MOAT_ID_FQDN) && p.has_ports &&
		    dns_untrusted((__u32)p.family << 24 | (__u32)p.protocol << 16 | p.dport,
				  (const struct fqdn_addr *)p.daddr)) {
			action = MOAT_ACTION_DENY;
			d.reason = MOAT_REASON_DNS_UNTRUSTED;
			d.rule_id = 0;
		}
		if (action == MOAT_ACTION_ALLOW) {
			d.pass = 1;
			d.verdict = MOAT_VERDICT_ALLOWED;
			d.create_ct = 1;
			d.emit = (cfg->flags & MOAT_CFG_ALLOW_EVENTS) != 0;
		} else if (audit_mode(ep, &d)) {
			d.pass = 1;
			d.verdict = MOAT_VERDICT_AUDIT;
			d.create_ct = 1;
			d.ct_audit = 1;
			d.emit = 1;
		} else {
			d.pass = 0;
			d.verdict = MOAT_VERDICT_DENIED;
			d.emit = 1;
		}
		if (d.create_ct && ct_create(ifindex, &p, dir, cfg, &d)) {
			/* past the endpoint's conntrack bound: not policy, so audit mode does not pass it either */
			d.pass = 0;
			d.verdict = MOAT_VERDICT_DENIED;
			d.reason = MOAT_REASON_CT_LIMIT;
			d.emit = 1;
		}
	}

	if (p.fragment) {
		/* the first fragment: the fragments after it follow this verdict */
		struct moat_frag_key fk;
		struct moat_frag_value fv = {};

		frag_key_for(&fk, ifindex, &p);
		fv.expires = bpf_jiffies64() + ticks(cfg, FRAG_TIMEOUT);
		fv.pass = d.pass;
		fv.reason = d.reason;
		fv.rule_id = d.rule_id;
		bpf_map_update_elem(&fragments, &fk, &fv, BPF_ANY);
	}
	return finish(skb, ep, &p, dir, &d);
}

SEC("tc")
int moat_from_pod(struct __sk_buff *skb)
{
	return process(skb, MOAT_DIR_EGRESS, 0);
}

SEC("tc")
int moat_to_pod(struct __sk_buff *skb)
{
	return process(skb, MOAT_DIR_INGRESS, 0);
}

/* The pipeline with the DNS stage (dns.h) in it: moat_from_pod hands on (tail call) what a pod of a namespace with
 * names it may not resolve sends to port 53, so that its own pipeline keeps the stack the DNS stage would take. */
SEC("tc")
int moat_dns_query(struct __sk_buff *skb)
{
	return process(skb, MOAT_DIR_EGRESS, 1);
}

/* The learning from DNS answers (dns.h): moat_to_pod hands on (tail call) what comes from port 53 to a pod whose
 * identity has fqdn peers. A program of its own, with only the parsing before it, so that the walk over the
 * records has the stack the pipeline uses up; it hands the answer on to moat_to_pod_answered, the pipeline after
 * the stage (or drops it when the stage gave it to the agent). */
SEC("tc")
int moat_dns_answer(struct __sk_buff *skb)
{
	struct packet p = {};
	struct decision d = {};
	struct moat_endpoint *ep;
	struct moat_config *cfg;
	__u32 ifindex = skb->ifindex, zero = 0;
	struct ethhdr_moat eth;
	int err = -1;

	p.data = (void *)(long)skb->data;
	p.data_end = (void *)(long)skb->data_end;
	ep = bpf_map_lookup_elem(&local_endpoints, &ifindex);
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (ep && cfg && load(skb, &p, 0, &eth, sizeof(eth)) == 0) {
		if (eth.proto == bpf_htons(ETH_P_IP))
			err = parse_ipv4(skb, &p);
		else if (eth.proto == bpf_htons(ETH_P_IPV6))
			err = parse_ipv6(skb, &p);
	}
	if (!err && dns_answer(skb, &p, &d, ep, cfg) == DNS_DROP)
		return finish(skb, ep, &p, MOAT_DIR_INGRESS, &d);
	bpf_tail_call(skb, &tails, MOAT_TAIL_TO_POD);
	/* only if the pipeline could not be reached: nothing reaches a pod undecided */
	d.reason = MOAT_REASON_DNS_UNPARSED;
	d.verdict = MOAT_VERDICT_DENIED;
	d.emit = 1;
	return finish(skb, ep, &p, MOAT_DIR_INGRESS, &d);
}

/* moat_to_pod after the learning: moat_dns_answer hands the answers it read on to it. */
SEC("tc")
int moat_to_pod_answered(struct __sk_buff *skb)
{
	return process(skb, MOAT_DIR_INGRESS, 1);
}

/* Not attached: the enforcer runs it (BPF_PROG_TEST_RUN) to read the jiffies clock of conntrack deadlines, and
 * twice some time apart to learn config.hz. It returns the low 32 bits of jiffies, and writes the monotonic clock
 * (8 bytes, ns) over the start of the packet and all 64 bits of jiffies after it (fqdn_learned's deadlines), read
 * in the same instant, so the rate measured does not depend on when user space got to run. */
SEC("tc")
int moat_jiffies(struct __sk_buff *skb)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 j = bpf_jiffies64();

	bpf_skb_store_bytes(skb, 0, &now, sizeof(now), 0);
	bpf_skb_store_bytes(skb, sizeof(now), &j, sizeof(j), 0);
	return (__u32)j;
}

