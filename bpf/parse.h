/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The parse stage: the headers of one frame into struct packet (addresses, protocol, ports or ICMP type, TCP
 * flags and sequence numbers, fragments), and the quote of an ICMP error. Every read is bounds-checked; a header
 * that does not fit its datagram is MOAT_REASON_MALFORMED. Also the address helpers every stage uses.
 */
#ifndef __MOAT_PARSE_H
#define __MOAT_PARSE_H

#include <linux/if_ether.h>

#define IPPROTO_HOPOPTS 0
#define IPPROTO_ICMP 1
#define IPPROTO_IPIP 4
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_IPV6 41 /* 6in4 */
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_GRE 47
#define IPPROTO_AH 51
#define IPPROTO_ICMPV6 58
#define IPPROTO_DSTOPTS 60
#define IPPROTO_ETHERIP 97
#define IPPROTO_L2TP 115
#define IPPROTO_SCTP 132

#define IPV4_HLEN_MIN 20 /* an IPv4 header without options */
#define WORD 4            /* IPv4's header length and TCP's data offset count 32-bit words */
#define IPV6_HLEN 40
#define IPV4_MF 0x2000     /* frag_off: more fragments */
#define IPV4_OFFSET 0x1fff /* frag_off: the fragment's offset, in 8-byte units */
#define IPV6_FRAG_OFFSET 0xfff8 /* fragment header: the offset, in 8-byte units, shifted left 3 */
#define IPV6_FRAG_MF 0x0001
#define IPV6_EXTHDR_UNIT 8 /* hop-by-hop, routing, destination options: length in 8-byte units, less one */
#define IPV6_AH_UNIT 4     /* authentication header: length in 4-byte units, less two */
#define IPV6_FRAG_HLEN 8
#define MAX_EXTHDRS 8 /* IPv6 extension headers walked before a packet is dropped */

#define TCP_HLEN_MIN 20
#define UDP_HLEN 8
#define SCTP_HLEN 12 /* the common header: ports, verification tag, checksum */
#define ICMP_HLEN 8  /* type, code, checksum, and the identifier and sequence of an echo (or an error's unused word) */

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define ICMPV6_MLD_QUERY 130
#define ICMPV6_MLD_REPORT 131
#define ICMPV6_MLD_REDUCTION 132
#define ICMPV6_ROUTER_SOLICIT 133
#define ICMPV6_ROUTER_ADVERT 134
#define ICMPV6_NEIGHBOR_SOLICIT 135
#define ICMPV6_NEIGHBOR_ADVERT 136
#define ICMPV6_REDIRECT 137
#define ICMPV6_MLD2_REPORT 143

/* The longest ICMP error a real stack sends, IP header included: RFC 1812 4.3.2.3 for IPv4, RFC 4443 2.4(c) */
#define ICMP_ERROR_MAX_V4 576
#define ICMP_ERROR_MAX_V6 1280

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct packet {
	void *data; /* the skb's linear data, read once from the context */
	void *data_end;
	__u8 family; /* 4 or 6 */
	__u8 protocol;
	__u8 has_ports;  /* sport/dport hold L4 ports or an ICMP identifier */
	__u8 fragment;   /* part of a fragmented datagram */
	__u8 non_first;  /* a fragment without the L4 header */
	__u8 icmp_type;
	__u8 hop_limit;
	__u8 tcp_flags;
	__u16 sport; /* host order */
	__u16 dport;
	__u8 frag_protocol; /* the protocol in a fragment's key: IPv4's, or the IPv6 fragment header's next header */
	__u8 icmp_code;
	__u8 pad[2];
	__u32 tcp_seq; /* host order */
	__u32 tcp_ack;
	__u32 tcp_len; /* TCP payload bytes */
	__u32 frag_id;
	__u32 l4_off; /* offset of the L4 header from the start of the frame */
	__u32 l3_end; /* end of the IP datagram in the frame */
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ethhdr_moat {
	__u8 dest[ETH_ALEN];
	__u8 source[ETH_ALEN];
	__be16 proto;
};

struct iphdr4 {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct iphdr6 {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct exthdr {
	__u8 nexthdr;
	__u8 len;
	__be16 frag_off; /* fragment header only */
	__be32 frag_id;  /* fragment header only */
};

/* The first bytes of an L4 header, as each protocol lays them out. */
union l4hdr {
	struct {
		__be16 sport;
		__be16 dport;
	} ports; /* TCP, UDP, SCTP */
	struct {
		__be16 sport;
		__be16 dport;
		__be32 seq;
		__be32 ack;
		__u8 doff; /* data offset in 32-bit words, in the high nibble */
		__u8 flags;
	} tcp;
	struct {
		__u8 type;
		__u8 code;
		__be16 check;
		__be16 id; /* echo request and reply */
		__be16 seq;
	} icmp;
};

/* A flow as a packet names it: what the quote of an ICMP error carries. Ports in host order. */
struct flow {
	__u8 protocol;
	__u8 pad;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

/*
 * Reads len bytes at off: straight from the packet's linear data when they are there (the common case), through
 * bpf_skb_load_bytes otherwise (headers in a non-linear part). Either way a short packet gives an error.
 * Used for the headers every packet has; the extension header walk and ICMP quotes use bpf_skb_load_bytes
 * alone, since a second branch per read there multiplies the verifier's states past its limit.
 */
#define LINEAR_OFF_MAX 0xffff /* an offset the verifier can bound when added to a packet pointer */

static __always_inline int load(struct __sk_buff *skb, const struct packet *p, __u32 off, void *to,
				const __u32 len)
{
	void *data = p->data;

	if (off <= LINEAR_OFF_MAX && data + off + len <= p->data_end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* ---- addresses: 16 bytes, an IPv4 address in the first 4 ---- */

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

static __always_inline void clear16(__u8 *dst)
{
	__builtin_memset(dst, 0, 16);
}

static __always_inline int addr_is_zero(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;
	return w[0] == 0 && w[1] == 0;
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

/* An address's length in bits: the prefix length that matches it alone. */
static __always_inline __u32 addr_bits(__u8 family)
{
	return family == 4 ? 32 : 128;
}

static __always_inline int is_link_local6(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80; /* fe80::/10 */
}

/* Is addr (family 4 or 6) one of the endpoint's own addresses? */
static __always_inline int endpoint_owns(const struct moat_endpoint *ep, __u8 family, const __u8 *addr)
{
	int i;

	if (family == 4) {
		__u32 a = *(const __u32 *)addr;
#pragma unroll
		for (i = 0; i < MOAT_MAX_ENDPOINT_V4; i++)
			if (i < ep->n_ipv4 && *(const __u32 *)ep->ipv4[i] == a)
				return 1;
		return 0;
	}
#pragma unroll
	for (i = 0; i < MOAT_MAX_ENDPOINT_V6; i++)
		if (i < ep->n_ipv6 && addr_eq(ep->ipv6[i], addr))
			return 1;
	return 0;
}

/* ---- IP ---- */

/* The version in the first nibble of an IP header. */
static __always_inline __u8 ip_version(__u8 first)
{
	return first >> 4;
}

/* IPv4's header length, from the low nibble of its first byte. */
static __always_inline __u32 ipv4_hlen(__u8 ver_ihl)
{
	return (ver_ihl & 0xf) * WORD;
}

/* ---- ICMP ---- */

static __always_inline int is_icmp(const struct packet *p)
{
	return p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6;
}

static __always_inline int is_icmp_error(__u8 family, __u8 type)
{
	if (family == 4)
		return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH || type == ICMP_TIME_EXCEEDED ||
		       type == ICMP_PARAMETERPROB;
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG || type == ICMPV6_TIME_EXCEED ||
	       type == ICMPV6_PARAMPROB;
}

static __always_inline int is_icmp_echo(__u8 family, __u8 type)
{
	if (family == 4)
		return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
	return type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY;
}

static __always_inline int icmp_proto(__u8 family)
{
	return family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
}

/*
 * The flow an ICMP error quotes: the IP header and the first 8 bytes of the datagram that drew it (ports, or an
 * echo's identifier as the source port with no destination port, as conntrack keys echo flows). Returns 0 when
 * the error is no longer than a real stack sends and its quote reads whole, -1 otherwise (then it is plain ICMP).
 */
static __always_inline int parse_icmp_quote(struct __sk_buff *skb, const struct packet *p, struct flow *in)
{
	struct iphdr4 ip4;
	struct iphdr6 ip6;
	union l4hdr l4;
	__u32 off = p->l4_off + ICMP_HLEN;

	if (p->l3_end - ETH_HLEN > (p->family == 4 ? ICMP_ERROR_MAX_V4 : ICMP_ERROR_MAX_V6))
		return -1;
	if (p->family == 4) {
		if (bpf_skb_load_bytes(skb, off, &ip4, sizeof(ip4)) < 0)
			return -1;
		in->protocol = ip4.protocol;
		clear16(in->saddr);
		clear16(in->daddr);
		__builtin_memcpy(in->saddr, ip4.saddr, 4);
		__builtin_memcpy(in->daddr, ip4.daddr, 4);
		off += ipv4_hlen(ip4.ver_ihl);
	} else {
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		in->protocol = ip6.nexthdr;
		copy16(in->saddr, ip6.saddr);
		copy16(in->daddr, ip6.daddr);
		off += IPV6_HLEN;
	}
	in->sport = 0;
	in->dport = 0;
	if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP || in->protocol == IPPROTO_SCTP ||
	    in->protocol == icmp_proto(p->family)) {
		/* the 8 bytes every error quotes past the IP header */
		if (bpf_skb_load_bytes(skb, off, &l4.icmp, sizeof(l4.icmp)) < 0)
			return -1;
		if (in->protocol == icmp_proto(p->family)) {
			in->sport = bpf_ntohs(l4.icmp.id);
		} else {
			in->sport = bpf_ntohs(l4.ports.sport);
			in->dport = bpf_ntohs(l4.ports.dport);
		}
	}
	return 0;
}

/* ---- headers ---- */

/*
 * Reads the L4 header at p->l4_off: ports for TCP, UDP and SCTP, type and echo identifier for ICMP.
 * Returns MOAT_REASON_MALFORMED when the header does not fit in the datagram.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, struct packet *p)
{
	union l4hdr l4 = {};
	__u32 need;

	switch (p->protocol) {
	case IPPROTO_TCP:
		need = TCP_HLEN_MIN;
		break;
	case IPPROTO_UDP:
		need = UDP_HLEN;
		break;
	case IPPROTO_SCTP:
		need = SCTP_HLEN;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		need = ICMP_HLEN;
		break;
	default:
		return 0;
	}
	if (p->l4_off + need > p->l3_end)
		return MOAT_REASON_MALFORMED;
	/* ports, ICMP type and identifier are in the first 8 bytes; TCP's flags end at byte 14 */
	if (p->protocol == IPPROTO_TCP) {
		if (load(skb, p, p->l4_off, &l4.tcp, sizeof(l4.tcp)) < 0)
			return MOAT_REASON_MALFORMED;
	} else if (load(skb, p, p->l4_off, &l4.icmp, sizeof(l4.icmp)) < 0) {
		return MOAT_REASON_MALFORMED;
	}

	if (is_icmp(p)) {
		p->icmp_type = l4.icmp.type;
		p->icmp_code = l4.icmp.code;
		if (is_icmp_echo(p->family, p->icmp_type)) {
			/* the identifier stands for both ports, so request and reply meet in conntrack */
			p->sport = bpf_ntohs(l4.icmp.id);
			p->dport = p->sport;
			p->has_ports = 1;
		}
		return 0;
	}
	p->sport = bpf_ntohs(l4.ports.sport);
	p->dport = bpf_ntohs(l4.ports.dport);
	p->has_ports = 1;
	if (p->protocol == IPPROTO_TCP) {
		__u32 doff = (l4.tcp.doff >> 4) * WORD;

		/* a header shorter than 20 bytes, or options past the datagram (a tiny first fragment) */
		if (doff < TCP_HLEN_MIN || p->l4_off + doff > p->l3_end)
			return MOAT_REASON_MALFORMED;
		p->tcp_flags = l4.tcp.flags;
		p->tcp_seq = bpf_ntohl(l4.tcp.seq);
		p->tcp_ack = bpf_ntohl(l4.tcp.ack);
		p->tcp_len = p->l3_end - p->l4_off - doff;
	}
	return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr4 ip;
	__u32 ihl, tot_len;
	__u16 frag;

	if (load(skb, p, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return MOAT_REASON_MALFORMED;
	if (ip_version(ip.ver_ihl) != 4)
		return MOAT_REASON_MALFORMED;
	ihl = ipv4_hlen(ip.ver_ihl);
	tot_len = bpf_ntohs(ip.tot_len);
	if (ihl < IPV4_HLEN_MIN || tot_len < ihl || ETH_HLEN + tot_len > skb->len)
		return MOAT_REASON_MALFORMED;

	p->family = 4;
	p->protocol = ip.protocol;
	p->hop_limit = ip.ttl;
	clear16(p->saddr);
	clear16(p->daddr);
	__builtin_memcpy(p->saddr, ip.saddr, 4);
	__builtin_memcpy(p->daddr, ip.daddr, 4);
	p->l4_off = ETH_HLEN + ihl; /* IP options are skipped, never interpreted */
	p->l3_end = ETH_HLEN + tot_len;

	frag = bpf_ntohs(ip.frag_off);
	if (frag & (IPV4_MF | IPV4_OFFSET)) {
		p->fragment = 1;
		p->frag_id = bpf_ntohs(ip.id);
		p->frag_protocol = ip.protocol;
		if (frag & IPV4_OFFSET) {
			p->non_first = 1;
			return 0;
		}
	}
	return parse_l4(skb, p);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr6 ip;
	struct exthdr ext;
	__u32 off, payload;
	__u8 next;
	int i;

	if (load(skb, p, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return MOAT_REASON_MALFORMED;
	if (ip_version(bpf_ntohl(ip.ver_tc_flow) >> 24) != 6)
		return MOAT_REASON_MALFORMED;
	payload = bpf_ntohs(ip.payload_len);
	if (payload == 0 || ETH_HLEN + IPV6_HLEN + payload > skb->len)
		return MOAT_REASON_MALFORMED; /* jumbograms are not expected on a pod veth */

	p->family = 6;
	p->hop_limit = ip.hop_limit;
	copy16(p->saddr, ip.saddr);
	copy16(p->daddr, ip.daddr);
	p->l3_end = ETH_HLEN + IPV6_HLEN + payload;

	off = ETH_HLEN + IPV6_HLEN;
	next = ip.nexthdr;
#pragma unroll
	for (i = 0; i < MAX_EXTHDRS; i++) {
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (off + IPV6_EXTHDR_UNIT > p->l3_end || bpf_skb_load_bytes(skb, off, &ext, 2) < 0)
				return MOAT_REASON_MALFORMED;
			next = ext.nexthdr;
			off += ((__u32)ext.len + 1) * IPV6_EXTHDR_UNIT;
			break;
		case IPPROTO_AH:
			if (off + IPV6_EXTHDR_UNIT > p->l3_end || bpf_skb_load_bytes(skb, off, &ext, 2) < 0)
				return MOAT_REASON_MALFORMED;
			next = ext.nexthdr;
			off += ((__u32)ext.len + 2) * IPV6_AH_UNIT;
			break;
		case IPPROTO_FRAGMENT: {
			__u16 fo;
			if (off + IPV6_FRAG_HLEN > p->l3_end || bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
				return MOAT_REASON_MALFORMED;
			fo = bpf_ntohs(ext.frag_off);
			next = ext.nexthdr;
			off += IPV6_FRAG_HLEN;
			if (!(fo & (IPV6_FRAG_OFFSET | IPV6_FRAG_MF)))
				break; /* an atomic fragment: a whole datagram */
			p->fragment = 1;
			p->frag_id = bpf_ntohl(ext.frag_id);
			p->frag_protocol = next;
			if (fo & IPV6_FRAG_OFFSET) {
				p->non_first = 1;
				p->protocol = next;
				p->l4_off = off;
				return 0;
			}
			break;
		}
		default:
			goto upper_layer;
		}
	}
	/* still an extension header after MAX_EXTHDRS: refuse rather than guess. The Mobility header (135) is an
	 * upper-layer protocol for policy, as the receiving stack treats it, never a header to look past. */
	switch (next) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_FRAGMENT:
		return MOAT_REASON_EXTHDR_LIMIT;
	}
upper_layer:
	if (off > p->l3_end)
		return MOAT_REASON_MALFORMED;
	p->protocol = next;
	p->l4_off = off;
	return parse_l4(skb, p);
}

#endif
