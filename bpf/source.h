/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Where a source may come from: a new flow towards a pod that claims a cluster or node address must have reached
 * the node the way the cluster network brings that address (strict reverse-path check), and one of the node's
 * own addresses only through netfilter's NAT.
 */
#ifndef __MOAT_SOURCE_H
#define __MOAT_SOURCE_H

#define AF_INET 2
#define AF_INET6 10

/*
 * netfilter's conntrack, read through its kfuncs. Weak: a kernel built without them loads the program all the
 * same, and the check that needs them passes what it cannot judge.
 */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_size,
					 struct bpf_ct_opts *opts, __u32 opts_size) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

#define ENOENT 2
#define NF_CT_OPTS_SIZE 12     /* the options every kernel with these kfuncs takes (later ones add a zone) */
#define NF_CT_DIR_REPLY 1      /* IP_CT_DIR_REPLY */
#define NF_CT_SRC_NAT (1 << 4) /* IPS_SRC_NAT */

/*
 * A packet forwarded to a pod with one of the node's own addresses as source: did netfilter put that address
 * there? A masqueraded flow's reply tuple runs from the pod to the node's address; the packet is that tuple
 * reversed, and its entry carries IPS_SRC_NAT. A packet that arrived claiming the address from outside has no such
 * entry (netfilter tracks it as a flow of its own, unNATed) and is spoofed. netfilter looks up TCP and UDP only:
 * SCTP, which kube-proxy masquerades too, passes unjudged; nothing else is masqueraded towards a pod, so any other
 * protocol is spoofed.
 */
static __always_inline int masqueraded(struct __sk_buff *skb, const struct packet *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts o = {.netns_id = BPF_F_CURRENT_NETNS}; /* the netns of the skb's device */
	struct nf_conn *ct;
	__u32 size;
	int ok;

	if (p->protocol == IPPROTO_SCTP || !bpf_ksym_exists(bpf_skb_ct_lookup) || !bpf_ksym_exists(bpf_ct_release))
		return 1;
	if ((p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP) || !p->has_ports || p->fragment)
		return 0;
	o.l4proto = p->protocol;
	if (p->family == 4) {
		__builtin_memcpy(&t.ipv4.saddr, p->daddr, 4);
		__builtin_memcpy(&t.ipv4.daddr, p->saddr, 4);
		t.ipv4.sport = bpf_htons(p->dport);
		t.ipv4.dport = bpf_htons(p->sport);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->daddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->saddr, 16);
		t.ipv6.sport = bpf_htons(p->dport);
		t.ipv6.dport = bpf_htons(p->sport);
		size = sizeof(t.ipv6);
	}
	ct = bpf_skb_ct_lookup(skb, &t, size, &o, NF_CT_OPTS_SIZE);
	if (!ct)
		return o.error != -ENOENT; /* no entry: spoofed; an error of the lookup itself: not judged */
	ok = o.dir == NF_CT_DIR_REPLY && (ct->status & NF_CT_SRC_NAT);
	bpf_ct_release(ct);
	return ok;
}

/*
 * Did a packet from a cluster or node address reach the node the way the cluster network brings that address? A
 * pod or a node address is not the world's to use: a packet from outside that claims one would otherwise be
 * decided as cluster traffic (allowed by default) and reach namespaces that deny the world.
 *   - made on this node (no ingress device), or sent by a pod of this node (its own veth, where anti-spoofing
 *     checked the source): yes;
 *   - the world and the metadata API: nothing to check, policy decides them as such;
 *   - else the route back to the source must leave through the device the packet came in on, as strict
 *     reverse-path filtering would have it: a pod of another node over the CNI's tunnel, the node's pods through
 *     its bridge. One of the node's own addresses (a local route) passes only when netfilter masqueraded the
 *     flow on the way in (a NodePort with externalTrafficPolicy Cluster, a hairpin): see masqueraded(). The
 *     kernel drops IPv4 packets that arrive claiming one (martian source); IPv6 has no such check.
 * Only a new flow towards the pod is checked; FirewallConfig sourceValidation: Disabled turns it off (multipath or
 * asymmetric routing).
 */
static __always_inline int source_path_ok(struct __sk_buff *skb, const struct moat_config *cfg, const struct packet *p)
{
	struct bpf_fib_lookup f = {};
	__u32 iif = skb->ingress_ifindex, identity;
	__u8 class;
	long rc;

	if (iif == 0 || (cfg->flags & MOAT_CFG_NO_SOURCE_CHECK) || bpf_map_lookup_elem(&local_endpoints, &iif))
		return 1;
	classify(p->family, p->saddr, &class, &identity);
	if (class == MOAT_CLASS_WORLD || class == MOAT_CLASS_METADATA)
		return 1;
	/* the route a packet to the source would take, had it come in on iif */
	if (p->family == 4) {
		f.family = AF_INET;
		__builtin_memcpy(&f.ipv4_dst, p->saddr, 4);
		__builtin_memcpy(&f.ipv4_src, p->daddr, 4);
	} else {
		f.family = AF_INET6;
		__builtin_memcpy(f.ipv6_dst, p->saddr, 16);
		__builtin_memcpy(f.ipv6_src, p->daddr, 16);
	}
	f.ifindex = iif;
	rc = bpf_fib_lookup(skb, &f, sizeof(f), BPF_FIB_LOOKUP_SKIP_NEIGH);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return f.ifindex == iif;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return 0; /* no way back to that source at all */
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		/* not a unicast route: one of the node's own addresses (or a broadcast or multicast one, never a source) */
		return masqueraded(skb, p);
	}
	/* forwarding off on iif, an error: nothing this check can judge */
	return 1;
}

#endif
