/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The neighbour stage of the pipeline: ARP, IPv6 neighbour discovery and MLD, and what may reach a pod at all.
 * Included by moat.c after parse.h and policy.h (an NS target is classified like a remote).
 *
 * ARP and ND keep a pod's link working, so they pass without policy (a deny-everything policy must not cut a pod
 * off its gateway). In exchange a pod may speak them only for itself:
 *   - every frame from a pod carries the pod's own MAC as its source;
 *   - ARP: the pod's MAC and its own IPv4 address (0.0.0.0 for a probe) as sender, nothing after the message;
 *   - NA: only for the pod's own addresses, with its own MAC as target link-layer address;
 *   - no Router Advertisement, no Redirect, no MLD query (a pod is neither router nor querier);
 *   - NS, RS and MLD reports only to their on-link groups (NS also to its target, for unreachability detection),
 *     with hop limit 255 (ND) or 1 (MLD), and nothing beyond their fixed part and known options; an NS only for an
 *     on-link target (link-local, in the pod's own /64, or a cluster address).
 * To a pod only packets addressed to it pass: one of its addresses, a multicast group, the broadcast address, its
 * link-local address. So no data rides to a pod inside a frame sent to its MAC.
 * When the endpoint's MAC (or link-local address) is unknown, from the record of an older plugin, the checks that
 * need it are skipped; the address checks still hold.
 */
#ifndef __MOAT_NEIGHBOR_H
#define __MOAT_NEIGHBOR_H

#define ARP_HTYPE_ETHER 1
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY 2
#define ARP_LEN 28             /* an Ethernet/IPv4 ARP message */
#define ETH_MIN_FRAME 60       /* a frame padded to Ethernet's minimum, as some senders do */
#define ND_OPT_SOURCE_LLADDR 1 /* option types (RFC 4861, RFC 7527) */
#define ND_OPT_TARGET_LLADDR 2
#define ND_OPT_NONCE 14
#define ND_MAX_OPTIONS 3   /* options of 8 bytes a pod's NS, NA or RS may carry */
#define ND_OPT_UNIT 8      /* option lengths count 8-byte units */
#define ND_HOP_LIMIT 255   /* RFC 4861: what a neighbour sends, and a router's forwarding would lower */
#define MLD_HOP_LIMIT 1    /* RFC 2710, RFC 3810 */
#define ND_TARGET_END (ICMP_HLEN + 16) /* NS, NA and MLDv1: the fixed part ends after a 16-byte address */
#define MLD2_RECORD_TYPE_MAX 6        /* RFC 3810 5.2.12: mode is include/exclude, changes and allow/block */
#define MULTICAST6_PREFIX 0xff
#define MULTICAST6_LINK_LOCAL 0xff020000 /* the first word of ff02::/16, the link-local scope */
#define MULTICAST6_ALL_ROUTERS 2         /* ff02::2 */
#define MULTICAST6_MLD2_ROUTERS 0x16     /* ff02::16 */
#define SOLICITED_NODE_WORD2 1           /* ff02::1:ffXX:XXXX: the third word, then 0xff and 24 bits */
#define MULTICAST4_MASK 0xf0             /* 224.0.0.0/4 */
#define MULTICAST4_PREFIX 0xe0
#define IPV4_ALEN 4
#define MLD2_MAX_RECORDS 8 /* multicast address records of one MLDv2 report from a pod */
#define MLD2_MAX_SOURCES 8 /* sources of one record */

struct arphdr_moat {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

static __always_inline int mac_known(const struct moat_endpoint *ep)
{
	return (ep->mac[0] | ep->mac[1] | ep->mac[2] | ep->mac[3] | ep->mac[4] | ep->mac[5]) != 0;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline int is_multicast6(const __u8 *a)
{
	return a[0] == MULTICAST6_PREFIX;
}

/* Is a the endpoint's link-local address (any link-local one, when the endpoint's is unknown)? */
static __always_inline int own_link_local(const struct moat_endpoint *ep, const __u8 *a)
{
	if (!is_link_local6(a))
		return 0;
	return addr_is_zero(ep->link_local6) || addr_eq(a, ep->link_local6);
}

/* Does a share its first 64 bits with one of the endpoint's IPv6 addresses: on the pod's own link? */
static __always_inline int on_own_prefix(const struct moat_endpoint *ep, const __u8 *a)
{
	const __u64 *x = (const __u64 *)a;
	int i;

#pragma unroll
	for (i = 0; i < MOAT_MAX_ENDPOINT_V6; i++)
		if (i < ep->n_ipv6 && *(const __u64 *)ep->ipv6[i] == x[0])
			return 1;
	return 0;
}

/* One of the endpoint's IPv6 addresses, link-local included: what ND may speak for. */
static __always_inline int owns6(const struct moat_endpoint *ep, const __u8 *a)
{
	return own_link_local(ep, a) || endpoint_owns(ep, 6, a);
}

/* Is the packet for this pod at all? Its addresses, multicast, IPv4 broadcast, its link-local address. */
static __always_inline int for_endpoint(const struct moat_endpoint *ep, const struct packet *p)
{
	if (p->family == 4) {
		__u32 all = 0xffffffff;
		if ((p->daddr[0] & MULTICAST4_MASK) == MULTICAST4_PREFIX || *(const __u32 *)p->daddr == all)
			return 1;
		return endpoint_owns(ep, 4, p->daddr);
	}
	return is_multicast6(p->daddr) || owns6(ep, p->daddr);
}

/* ---- ARP ---- */

/* ARP: well formed both ways; from the pod only for itself, to the pod only replies for it. 0 or a reason. */
static __always_inline int arp_check(struct __sk_buff *skb, const struct packet *p, const struct moat_endpoint *ep,
				     __u8 dir)
{
	struct arphdr_moat a;
	__u16 op;

	if (skb->len < ETH_HLEN + ARP_LEN || load(skb, p, ETH_HLEN, &a, sizeof(a)) < 0)
		return MOAT_REASON_MALFORMED;
	op = bpf_ntohs(a.op);
	if (a.htype != bpf_htons(ARP_HTYPE_ETHER) || a.ptype != bpf_htons(ETH_P_IP) || a.hlen != ETH_ALEN || a.plen != IPV4_ALEN ||
	    (op != ARP_OP_REQUEST && op != ARP_OP_REPLY))
		return MOAT_REASON_NEIGHBOR_DENIED;

	if (dir == MOAT_DIR_INGRESS) {
		__u8 tpa[16] __attribute__((aligned(8))) = {};
		/* a reply names its receiver; a request is a broadcast every neighbour sees */
		__builtin_memcpy(tpa, a.tpa, 4);
		if (op == ARP_OP_REPLY && !endpoint_owns(ep, 4, tpa))
			return MOAT_REASON_NOT_FOR_ENDPOINT;
		return 0;
	}

	if (mac_known(ep) && !mac_eq(a.sha, ep->mac))
		return MOAT_REASON_NEIGHBOR_DENIED;
	{
		__u8 spa[16] __attribute__((aligned(8))) = {};
		__builtin_memcpy(spa, a.spa, 4);
		/* 0.0.0.0 only in a probe (RFC 5227), which is a request */
		if (addr_is_zero(spa) ? op != ARP_OP_REQUEST : !endpoint_owns(ep, 4, spa))
			return MOAT_REASON_NEIGHBOR_DENIED;
	}
	/* a request's target hardware address is not yet known: zero (or all ones, as some senders write) */
	if (op == ARP_OP_REQUEST) {
		int zero = (a.tha[0] | a.tha[1] | a.tha[2] | a.tha[3] | a.tha[4] | a.tha[5]) == 0;
		int ones = (a.tha[0] & a.tha[1] & a.tha[2] & a.tha[3] & a.tha[4] & a.tha[5]) == 0xff;
		if (!zero && !ones)
			return MOAT_REASON_NEIGHBOR_DENIED;
	}
	/* nothing after the message but an Ethernet minimum's padding of zeros */
	if (skb->len != ETH_HLEN + ARP_LEN) {
		__u64 pad[3] = {};
		if (skb->len != ETH_MIN_FRAME ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + ARP_LEN, pad, ETH_MIN_FRAME - ETH_HLEN - ARP_LEN) < 0)
			return MOAT_REASON_NEIGHBOR_DENIED;
		if ((pad[0] | pad[1] | pad[2]) != 0)
			return MOAT_REASON_NEIGHBOR_DENIED;
	}
	return 0;
}

/* ---- IPv6 neighbour discovery and MLD ---- */

/* An ND option of one unit: type, length (in units), and a link-layer address or a nonce's first bytes. */
struct nd_option {
	__u8 type;
	__u8 len;
	__u8 lladdr[ETH_ALEN];
};

/* MLDv2 report (RFC 3810 5.2): the ICMPv6 header, then the number of records. */
struct mld2_report_hdr {
	__u8 type;
	__u8 code;
	__be16 check;
	__be16 reserved;
	__be16 records;
};

/* A multicast address record, without its sources (16 bytes each) and auxiliary data. */
struct mld2_record {
	__u8 type;
	__u8 aux_len;
	__be16 sources;
	__u8 group[16];
};

/* An ICMPv6 type of neighbour discovery (RFC 4861) or MLD (RFC 2710, RFC 3810). */
static __always_inline int is_neighbor_message(const struct packet *p)
{
	if (p->family != 6 || p->protocol != IPPROTO_ICMPV6 || p->fragment)
		return 0;
	return (p->icmp_type >= ICMPV6_MLD_QUERY && p->icmp_type <= ICMPV6_REDIRECT) ||
	       p->icmp_type == ICMPV6_MLD2_REPORT;
}

/* Sent on the link, as only a neighbour can: ND with hop limit 255, MLD with hop limit 1 to a multicast group.
 * Such messages reach a pod without policy; a routed copy (from the Internet) never qualifies. */
static __always_inline int nd_on_link(const struct packet *p)
{
	if (p->icmp_type >= ICMPV6_ROUTER_SOLICIT && p->icmp_type <= ICMPV6_REDIRECT)
		return p->hop_limit == ND_HOP_LIMIT;
	return p->hop_limit == MLD_HOP_LIMIT && is_multicast6(p->daddr);
}

/* Is a the solicited-node multicast group of target (ff02::1:ffXX:XXXX)? */
static __always_inline int is_solicited_node_of(const __u8 *a, const __u8 *target)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == bpf_htonl(MULTICAST6_LINK_LOCAL) && w[1] == 0 && w[2] == bpf_htonl(SOLICITED_NODE_WORD2) &&
	       a[12] == MULTICAST6_PREFIX &&
	       a[13] == target[13] && a[14] == target[14] && a[15] == target[15];
}

static __always_inline int is_all_routers(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == bpf_htonl(MULTICAST6_LINK_LOCAL) && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(MULTICAST6_ALL_ROUTERS);
}

static __always_inline int is_mld2_routers(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == bpf_htonl(MULTICAST6_LINK_LOCAL) && w[1] == 0 && w[2] == 0 &&
	       w[3] == bpf_htonl(MULTICAST6_MLD2_ROUTERS);
}

/*
 * Options of a pod's NS, NA or RS, from off to the end of the message: each of 8 bytes; a link-layer address
 * option (allowed: ND_OPT_SOURCE_LLADDR or ND_OPT_TARGET_LLADDR, or none when 0) must hold the pod's MAC; a nonce
 * only where nonce_ok (DAD, RFC 7527). Anything else is data that has no business there. 0 or a reason.
 */
static __always_inline int nd_options(struct __sk_buff *skb, const struct packet *p, const struct moat_endpoint *ep,
				      __u32 off, __u8 lladdr, int nonce_ok)
{
	__u32 left = p->l3_end - off;
	int i;

	if (off > p->l3_end || left % ND_OPT_UNIT != 0 || left > ND_MAX_OPTIONS * ND_OPT_UNIT)
		return MOAT_REASON_NEIGHBOR_DENIED;
#pragma unroll
	for (i = 0; i < ND_MAX_OPTIONS; i++) {
		struct nd_option opt;
		if (i * ND_OPT_UNIT >= left)
			break;
		if (bpf_skb_load_bytes(skb, off + i * ND_OPT_UNIT, &opt, sizeof(opt)) < 0)
			return MOAT_REASON_MALFORMED;
		if (opt.len != 1)
			return MOAT_REASON_NEIGHBOR_DENIED;
		if (opt.type == ND_OPT_NONCE && nonce_ok)
			continue;
		if (!lladdr || opt.type != lladdr)
			return MOAT_REASON_NEIGHBOR_DENIED;
		if (mac_known(ep) && !mac_eq(opt.lladdr, ep->mac))
			return MOAT_REASON_NEIGHBOR_DENIED;
	}
	return 0;
}

/* An MLDv2 report: records of known shape that add up to the message exactly, groups that are multicast. */
static __always_inline int mld2_report(struct __sk_buff *skb, const struct packet *p)
{
	struct mld2_report_hdr hdr;
	__u32 off = p->l4_off + sizeof(hdr);
	__u16 n;
	int i;

	if (bpf_skb_load_bytes(skb, p->l4_off, &hdr, sizeof(hdr)) < 0)
		return MOAT_REASON_MALFORMED;
	n = bpf_ntohs(hdr.records);
	if (n > MLD2_MAX_RECORDS)
		return MOAT_REASON_NEIGHBOR_DENIED;
#pragma unroll
	for (i = 0; i < MLD2_MAX_RECORDS; i++) {
		struct mld2_record rec;
		__u16 sources;
		if (i >= n)
			break;
		if (off + sizeof(rec) > p->l3_end || bpf_skb_load_bytes(skb, off, &rec, sizeof(rec)) < 0)
			return MOAT_REASON_NEIGHBOR_DENIED;
		sources = bpf_ntohs(rec.sources);
		/* a record type of RFC 3810, no auxiliary data, a multicast group */
		if (rec.type < 1 || rec.type > MLD2_RECORD_TYPE_MAX || rec.aux_len != 0 || sources > MLD2_MAX_SOURCES ||
		    rec.group[0] != MULTICAST6_PREFIX)
			return MOAT_REASON_NEIGHBOR_DENIED;
		off += sizeof(rec) + (__u32)sources * sizeof(rec.group);
	}
	return off == p->l3_end ? 0 : MOAT_REASON_NEIGHBOR_DENIED;
}

/* Neighbour discovery and MLD from a pod: only for itself and towards its link. 0 or a reason. */
static __always_inline int nd_from_pod(struct __sk_buff *skb, const struct packet *p, const struct moat_endpoint *ep)
{
	__u32 len = p->l3_end - p->l4_off;
	int unspecified = addr_is_zero(p->saddr);
	__u8 target[16] __attribute__((aligned(8)));

	if (!nd_on_link(p) || p->icmp_code != 0)
		return MOAT_REASON_NEIGHBOR_DENIED;
	if (!unspecified && !owns6(ep, p->saddr))
		return MOAT_REASON_SPOOFED;

	switch (p->icmp_type) {
	case ICMPV6_ROUTER_SOLICIT:
		if (len < ICMP_HLEN || !is_all_routers(p->daddr))
			return MOAT_REASON_NEIGHBOR_DENIED;
		return nd_options(skb, p, ep, p->l4_off + ICMP_HLEN, unspecified ? 0 : ND_OPT_SOURCE_LLADDR, 0);
	case ICMPV6_NEIGHBOR_SOLICIT:
	case ICMPV6_NEIGHBOR_ADVERT:
		if (len < ND_TARGET_END || bpf_skb_load_bytes(skb, p->l4_off + ICMP_HLEN, target, sizeof(target)) < 0)
			return MOAT_REASON_MALFORMED;
		if (is_multicast6(target))
			return MOAT_REASON_NEIGHBOR_DENIED;
		if (p->icmp_type == ICMPV6_NEIGHBOR_ADVERT) {
			/* an advertisement speaks for its target: only the pod's own */
			if (unspecified || !owns6(ep, target))
				return MOAT_REASON_NEIGHBOR_DENIED;
			return nd_options(skb, p, ep, p->l4_off + ND_TARGET_END, ND_OPT_TARGET_LLADDR, 0);
		}
		/* a solicitation goes to its target's group, or to the target itself (unreachability detection) */
		if (!is_solicited_node_of(p->daddr, target) && !addr_eq(p->daddr, target))
			return MOAT_REASON_NEIGHBOR_DENIED;
		if (unspecified) {
			/* duplicate address detection: of the pod's own address, to its group, with no source address */
			if (!owns6(ep, target) || !is_solicited_node_of(p->daddr, target))
				return MOAT_REASON_NEIGHBOR_DENIED;
			return nd_options(skb, p, ep, p->l4_off + ND_TARGET_END, 0, 1);
		}
		/* an on-link target: link-local, in the pod's own /64 (its gateway, its neighbours), or inside the
		 * cluster */
		if (!is_link_local6(target) && !on_own_prefix(ep, target)) {
			__u32 identity;
			__u8 class;
			classify(6, target, &class, &identity);
			if (class == MOAT_CLASS_WORLD || class == MOAT_CLASS_METADATA)
				return MOAT_REASON_NEIGHBOR_DENIED;
		}
		return nd_options(skb, p, ep, p->l4_off + ND_TARGET_END, ND_OPT_SOURCE_LLADDR, 0);
	case ICMPV6_MLD_REPORT:
	case ICMPV6_MLD_REDUCTION:
		/* MLDv1: the group and nothing more; a report to the group, a done to all routers */
		if (len != ND_TARGET_END || bpf_skb_load_bytes(skb, p->l4_off + ICMP_HLEN, target, sizeof(target)) < 0)
			return MOAT_REASON_NEIGHBOR_DENIED;
		if (!is_multicast6(target))
			return MOAT_REASON_NEIGHBOR_DENIED;
		if (p->icmp_type == ICMPV6_MLD_REPORT ? !addr_eq(p->daddr, target) : !is_all_routers(p->daddr))
			return MOAT_REASON_NEIGHBOR_DENIED;
		return 0;
	case ICMPV6_MLD2_REPORT:
		if (!is_mld2_routers(p->daddr))
			return MOAT_REASON_NEIGHBOR_DENIED;
		return mld2_report(skb, p);
	}
	/* Router Advertisement, Redirect, MLD query: a router's or querier's word, never a pod's */
	return MOAT_REASON_NEIGHBOR_DENIED;
}

/* The exit of a neighbour message: dropped with the reason its check gave, or passed without policy and without
 * an event (err 0). */
static __always_inline int finish_neighbor(struct __sk_buff *skb, const struct moat_endpoint *ep,
					   const struct packet *p, __u8 dir, struct decision *d, int err)
{
	if (err) {
		d->reason = err;
		return finish(skb, ep, p, dir, d);
	}
	d->pass = 1;
	d->reason = MOAT_REASON_NEIGHBOR;
	d->emit = 0;
	return finish(skb, ep, p, dir, d);
}

#endif
