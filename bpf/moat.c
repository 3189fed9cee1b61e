//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Moat's datapath: two TC programs on the host side of every pod's veth.
 *   from_pod: host veth ingress, packets the pod sends (egress policy)
 *   to_pod:   host veth egress, packets the pod receives (ingress policy)
 * Pipeline: endpoint -> parse -> neighbour discovery -> anti-spoof -> fragments -> conntrack -> classify the
 * remote -> policy -> verdict, counters, event. docs/datapath.md describes it with every map.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "moat.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* tcx return codes: Debian's UAPI headers predate them. */
#define TCX_NEXT -1
#define TCX_PASS 0
#define TCX_DROP 2

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_IPV6 0x86DD

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

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

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

/* UDP ports of the encapsulations a node decapsulates */
#define UDP_PORT_VXLAN 4789
#define UDP_PORT_VXLAN_LINUX 8472 /* the kernel's and flannel's default */
#define UDP_PORT_GENEVE 6081

/* The longest ICMP error a real stack sends, IP header included: RFC 1812 4.3.2.3 for IPv4, RFC 4443 2.4(c) */
#define ICMP_ERROR_MAX_V4 576
#define ICMP_ERROR_MAX_V6 1280

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define MAX_EXTHDRS 8 /* IPv6 extension headers walked before a packet is dropped */

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

/* ---- maps ---- */

/* key 0 -> struct moat_config: layout version, policy generation, flags, cluster defaults */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct moat_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* host veth ifindex -> struct moat_endpoint */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct moat_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} local_endpoints SEC(".maps");

/* namespace name -> identity (__u32); the datapath never reads it, the plugin does at ADD */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct moat_namespace_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} identities SEC(".maps");

/* (family, remote prefix) -> struct moat_ipcache_value: class and identity of a remote address */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct moat_ipcache_key);
	__type(value, struct moat_ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* identity (__u32) -> that identity's policy trie (header, port classes, CIDR and peer entries; layouts in
 * moat.h), swapped whole on every change */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MOAT_MAX_IDENTITIES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__uint(max_entries, 1048576);
		__uint(map_flags, BPF_F_NO_PREALLOC);
		__type(key, struct moat_policy_key);
		__type(value, struct moat_policy_value);
	});
} policy SEC(".maps");

/* struct moat_ct_key -> struct moat_ct_value; LRU, so a full table evicts rather than refuses */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct moat_ct_key);
	__type(value, struct moat_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* endpoint host veth ifindex -> struct moat_ct_count: its conntrack entries, against config.ct_max_per_endpoint */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct moat_ct_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_counts SEC(".maps");

/* struct moat_hostport_key -> struct moat_hostport_value: the pod behind a hostPort on a node address */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct moat_hostport_key);
	__type(value, struct moat_hostport_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hostports SEC(".maps");

/* struct moat_frag_key -> struct moat_frag_value: first fragment verdicts */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct moat_frag_key);
	__type(value, struct moat_frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

/* struct moat_event records for the enforcer's flow log */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* enum moat_reason -> struct moat_counter, per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOAT_REASON_MAX);
	__type(key, __u32);
	__type(value, struct moat_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} reason_counts SEC(".maps");

/* rule id -> struct moat_counter, per CPU: packets a rule decided (or reported, for Audit policies) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOAT_MAX_RULES);
	__type(key, __u32);
	__type(value, struct moat_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_counts SEC(".maps");

/* enum moat_stat -> __u64, per CPU */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MOAT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

/* Keep the shared types whole in BTF for bpf2go -type (clang would emit only forward declarations of the
 * inner map's key and value, and nothing of the event). Read-only, so no map of its own. */
const struct moat_event *const unused_event __attribute__((unused)) = 0;
const struct moat_policy_key *const unused_policy_key __attribute__((unused)) = 0;
const struct moat_policy_value *const unused_policy_value __attribute__((unused)) = 0;
const struct {
	enum moat_direction direction;
	enum moat_class class;
	enum moat_action action;
	enum moat_verdict verdict;
	enum moat_reason reason;
	enum moat_endpoint_mode mode;
	enum moat_config_flags config_flags;
	enum moat_policy_kind kind;
	enum moat_identity_flags identity_flags;
	enum moat_ct_flags ct_flags;
	enum moat_stat stat;
} *const unused_enums __attribute__((unused)) = 0;

/* ---- packet parsing ---- */

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

struct l4hdr {
	__be16 sport;
	__be16 dport;
	__u8 rest[10]; /* TCP: seq, ack, data offset; byte 13 of the header is at rest[9] */
};

/*
 * Reads len bytes at off: straight from the packet's linear data when they are there (the common case), through
 * bpf_skb_load_bytes otherwise (headers in a non-linear part). Either way a short packet gives an error.
 * Used for the headers every packet has; the extension header walk and ICMP quotes use bpf_skb_load_bytes
 * alone, since a second branch per read there multiplies the verifier's states past its limit.
 */
static __always_inline int load(struct __sk_buff *skb, const struct packet *p, __u32 off, void *to,
				const __u32 len)
{
	void *data = p->data;

	if (off <= 0xffff && data + off + len <= p->data_end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, 16);
}

static __always_inline void clear16(__u8 *dst)
{
	__builtin_memset(dst, 0, 16);
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
 * Reads the L4 header at p->l4_off: ports for TCP, UDP and SCTP, type and echo identifier for ICMP.
 * Returns MOAT_REASON_MALFORMED when the header does not fit in the datagram.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, struct packet *p)
{
	struct l4hdr l4 = {};
	__u32 need;

	switch (p->protocol) {
	case IPPROTO_TCP:
		need = 20;
		break;
	case IPPROTO_UDP:
		need = 8;
		break;
	case IPPROTO_SCTP:
		need = 12;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		need = 8;
		break;
	default:
		return 0;
	}
	if (p->l4_off + need > p->l3_end)
		return MOAT_REASON_MALFORMED;
	/* ports and ICMP type and identifier are in the first 8 bytes; TCP flags in byte 13 */
	if (p->protocol == IPPROTO_TCP) {
		if (load(skb, p, p->l4_off, &l4, 14) < 0)
			return MOAT_REASON_MALFORMED;
	} else if (load(skb, p, p->l4_off, &l4, 8) < 0) {
		return MOAT_REASON_MALFORMED;
	}

	if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6) {
		__u8 *b = (__u8 *)&l4;
		p->icmp_type = b[0];
		p->icmp_code = b[1];
		if (is_icmp_echo(p->family, p->icmp_type)) {
			/* the identifier stands for both ports, so request and reply meet in conntrack */
			p->sport = ((__u16)b[4] << 8) | b[5];
			p->dport = p->sport;
			p->has_ports = 1;
		}
		return 0;
	}
	p->sport = bpf_ntohs(l4.sport);
	p->dport = bpf_ntohs(l4.dport);
	p->has_ports = 1;
	if (p->protocol == IPPROTO_TCP) {
		__u32 doff = (l4.rest[8] >> 4) * 4;

		/* a header shorter than 20 bytes, or options past the datagram (a tiny first fragment) */
		if (doff < 20 || p->l4_off + doff > p->l3_end)
			return MOAT_REASON_MALFORMED;
		p->tcp_flags = l4.rest[9];
		p->tcp_seq = ((__u32)l4.rest[0] << 24) | ((__u32)l4.rest[1] << 16) | ((__u32)l4.rest[2] << 8) | l4.rest[3];
		p->tcp_ack = ((__u32)l4.rest[4] << 24) | ((__u32)l4.rest[5] << 16) | ((__u32)l4.rest[6] << 8) | l4.rest[7];
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
	if ((ip.ver_ihl >> 4) != 4)
		return MOAT_REASON_MALFORMED;
	ihl = (ip.ver_ihl & 0xf) * 4;
	tot_len = bpf_ntohs(ip.tot_len);
	if (ihl < 20 || tot_len < ihl || ETH_HLEN + tot_len > skb->len)
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
	if (frag & (IP_MF | IP_OFFSET)) {
		p->fragment = 1;
		p->frag_id = bpf_ntohs(ip.id);
		p->frag_protocol = ip.protocol;
		if (frag & IP_OFFSET) {
			p->non_first = 1;
			return 0;
		}
	}
	return parse_l4(skb, p);
}

struct exthdr {
	__u8 nexthdr;
	__u8 len;
	__be16 frag_off; /* fragment header only */
	__be32 frag_id;  /* fragment header only */
};

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr6 ip;
	struct exthdr ext;
	__u32 off, payload;
	__u8 next;
	int i;

	if (load(skb, p, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return MOAT_REASON_MALFORMED;
	if ((bpf_ntohl(ip.ver_tc_flow) >> 28) != 6)
		return MOAT_REASON_MALFORMED;
	payload = bpf_ntohs(ip.payload_len);
	if (payload == 0 || ETH_HLEN + 40 + payload > skb->len)
		return MOAT_REASON_MALFORMED; /* jumbograms are not expected on a pod veth */

	p->family = 6;
	p->hop_limit = ip.hop_limit;
	copy16(p->saddr, ip.saddr);
	copy16(p->daddr, ip.daddr);
	p->l3_end = ETH_HLEN + 40 + payload;

	off = ETH_HLEN + 40;
	next = ip.nexthdr;
#pragma unroll
	for (i = 0; i < MAX_EXTHDRS; i++) {
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (off + 8 > p->l3_end || bpf_skb_load_bytes(skb, off, &ext, 2) < 0)
				return MOAT_REASON_MALFORMED;
			next = ext.nexthdr;
			off += ((__u32)ext.len + 1) * 8;
			break;
		case IPPROTO_AH:
			if (off + 8 > p->l3_end || bpf_skb_load_bytes(skb, off, &ext, 2) < 0)
				return MOAT_REASON_MALFORMED;
			next = ext.nexthdr;
			off += ((__u32)ext.len + 2) * 4;
			break;
		case IPPROTO_FRAGMENT: {
			__u16 fo;
			if (off + 8 > p->l3_end || bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
				return MOAT_REASON_MALFORMED;
			fo = bpf_ntohs(ext.frag_off);
			next = ext.nexthdr;
			off += 8;
			if ((fo & 0xfff8) == 0 && !(fo & 1))
				break; /* an atomic fragment: a whole datagram */
			p->fragment = 1;
			p->frag_id = bpf_ntohl(ext.frag_id);
			p->frag_protocol = next;
			if (fo & 0xfff8) {
				p->non_first = 1;
				p->protocol = next;
				p->l4_off = off;
				return 0;
			}
			break;
		}
		default:
			goto done;
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
done:
	if (off > p->l3_end)
		return MOAT_REASON_MALFORMED;
	p->protocol = next;
	p->l4_off = off;
	return parse_l4(skb, p);
}

/* ---- counters and events ---- */

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
	__u32 identity_flags; /* the header's enum moat_identity_flags that decide() read */
	__u8 audit_action;
	__u8 hostport_local;   /* decide() went through a hostPort to a pod of this node: its ingress is still due */
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

/* ---- addresses ---- */

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

static __always_inline int is_link_local6(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
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

/* ---- remote classification and policy ---- */

static __always_inline void classify(__u8 family, const __u8 *addr, __u8 *class, __u32 *identity)
{
	struct moat_ipcache_key k = {};
	struct moat_ipcache_value *v;

	k.prefixlen = 8 + (family == 4 ? 32 : 128);
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

#include "neighbor.h"

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

/*
 * Decides a new flow of the endpoint (or re-decides an established one): the metadata rule, then the first
 * matching rule of the identity's Enforce policies, then the defaults. Fills d->reason, d->rule_id, the remote
 * and the Audit policy report; returns MOAT_ACTION_ALLOW or MOAT_ACTION_DENY before audit mode is applied.
 */
static __always_inline __u8 decide(const struct moat_config *cfg, __u32 identity, __u8 dir, __u8 family,
				   __u8 protocol, __u16 port, const __u8 *remote, struct decision *d)
{
	struct moat_policy_key k = {};
	struct moat_policy_value *v;
	struct moat_rule_ref enforce = {.order = MOAT_ORDER_NONE}, audit = {.order = MOAT_ORDER_NONE};
	__u32 flags = 0, pclass = 0;
	__u8 class, world_default;
	__u8 embedded[16] __attribute__((aligned(8)));
	void *inner;

	/* A NAT64 address is decided by the IPv4 address it stands for: the metadata block and every IPv4 rule hold
	 * through the translator. */
	if (family == 6 && nat64_embeds_ipv4(remote)) {
		clear16(embedded);
		__builtin_memcpy(embedded, remote + 12, 4);
		remote = embedded;
		family = 4;
	}
	classify(family, remote, &class, &d->remote_identity);
	/* Through a pod's hostPort on a node address, the flow goes to that pod: decided as pod to pod, with the
	 * container port (the node translates it so; its address alone would make it node traffic). Only node
	 * addresses are looked up, so other flows pay nothing for it. */
	if (dir == MOAT_DIR_EGRESS && class == MOAT_CLASS_NODE &&
	    (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP)) {
		struct moat_hostport_key hk = {.family = family, .protocol = protocol};
		struct moat_hostport_value *hp;

		hk.port[0] = port >> 8;
		hk.port[1] = port & 0xff;
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
		k.prefixlen = 40;
		k.data[0] = MOAT_KIND_PORT;
		k.data[1] = dir;
		k.data[2] = protocol;
		k.data[3] = port >> 8;
		k.data[4] = port & 0xff;
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
		__builtin_memset(k.data, 0, sizeof(k.data));
		k.prefixlen = 32 + (family == 4 ? 32 : 128);
		k.data[0] = MOAT_KIND_CIDR;
		k.data[1] = pclass >> 8;
		k.data[2] = pclass & 0xff;
		k.data[3] = family;
		__builtin_memcpy(&k.data[4], remote, 16);
		v = bpf_map_lookup_elem(inner, &k);
		if (v) {
			better(&enforce, &v->enforce);
			better(&audit, &v->audit);
		}
		if (d->remote_identity) {
			__u32 rid = d->remote_identity;
			__builtin_memset(k.data, 0, sizeof(k.data));
			k.prefixlen = 64;
			k.data[0] = MOAT_KIND_PEER;
			k.data[1] = pclass >> 8;
			k.data[2] = pclass & 0xff;
			k.data[4] = rid >> 24;
			k.data[5] = rid >> 16;
			k.data[6] = rid >> 8;
			k.data[7] = rid;
			v = bpf_map_lookup_elem(inner, &k);
			if (v) {
				better(&enforce, &v->enforce);
				better(&audit, &v->audit);
			}
		}
	}

	/* an Audit policy reports its first matching rule when, enforced, it would have decided */
	if (audit.order < enforce.order) {
		d->audit_rule_id = audit.rule_id;
		d->audit_action = audit.action;
	}

	if (enforce.order != MOAT_ORDER_NONE) {
		d->rule_id = enforce.rule_id;
		if (enforce.action == MOAT_ACTION_ALLOW) {
			d->reason = MOAT_REASON_ALLOW_RULE;
			return MOAT_ACTION_ALLOW;
		}
		d->reason = MOAT_REASON_DENY_RULE;
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
	if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6)
		return p->icmp_type;
	if (!p->has_ports)
		return 0;
	return p->dport;
}

/* ---- where a source may come from ---- */

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
#define NF_CT_OPTS_SIZE 12	/* the options every kernel with these kfuncs takes (later ones add a zone) */
#define NF_CT_DIR_REPLY 1	/* IP_CT_DIR_REPLY */
#define NF_CT_SRC_NAT (1 << 4) /* IPS_SRC_NAT */
#define NF_CT_NETNS_OF_SKB (-1) /* BPF_F_CURRENT_NETNS */

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
	struct bpf_ct_opts o = {.netns_id = NF_CT_NETNS_OF_SKB};
	struct nf_conn *ct;
	__u32 size;
	int ok;

	if (p->protocol == IPPROTO_SCTP || !bpf_skb_ct_lookup || !bpf_ct_release)
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

/* ---- conntrack ---- */

static __always_inline int is_tcp_open(const struct packet *p)
{
	return p->protocol == IPPROTO_TCP && p->has_ports &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_SYN;
}

static __always_inline void ct_key_for(struct moat_ct_key *k, __u32 ifindex, __u8 family, __u8 protocol,
				       const __u8 *laddr, __u16 lport, const __u8 *raddr, __u16 rport)
{
	k->ifindex = ifindex;
	k->family = family;
	k->protocol = protocol;
	k->lport[0] = lport >> 8;
	k->lport[1] = lport & 0xff;
	k->rport[0] = rport >> 8;
	k->rport[1] = rport & 0xff;
	k->pad[0] = 0;
	k->pad[1] = 0;
	copy16(k->laddr, laddr);
	copy16(k->raddr, raddr);
}

/* Ticks per second: the enforcer measures them before any program is attached; should it not have, the largest
 * HZ Linux builds with makes every deadline late, never early. */
static __always_inline __u64 ticks(const struct moat_config *cfg, __u64 seconds)
{
	return seconds * (cfg->hz ? cfg->hz : 1000);
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

/*
 * An entry allowed under an older generation is decided again, as its first packet was, under the current
 * policy. Returns 1 when the flow may go on.
 */
static __always_inline int ct_revalidate(const struct moat_config *cfg, const struct moat_endpoint *ep,
					 const struct moat_ct_key *k, struct moat_ct_value *ct, struct decision *d)
{
	struct decision r = {};
	__u8 action;

	if (ct->generation == cfg->generation)
		return 1;
	action = decide_flow(cfg, ep->identity, ct->direction, k->family, k->protocol, ct->port, k->raddr, k->laddr, &r);
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

/* ---- the per-endpoint conntrack bound ---- */

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

/*
 * Looks the flow up in conntrack. Returns 1 and fills d when conntrack decides the packet (an established or
 * related flow, or one that a policy change revoked), 0 when it is new.
 */
static __always_inline int ct_lookup(struct __sk_buff *skb, const struct moat_config *cfg,
				     const struct moat_endpoint *ep, const struct packet *p, __u8 dir,
				     struct decision *d)
{
	struct moat_ct_key k;
	struct moat_ct_value *ct;
	const __u8 *laddr = dir == MOAT_DIR_EGRESS ? p->saddr : p->daddr;
	const __u8 *raddr = dir == MOAT_DIR_EGRESS ? p->daddr : p->saddr;
	__u16 lport = dir == MOAT_DIR_EGRESS ? p->sport : p->dport;
	__u16 rport = dir == MOAT_DIR_EGRESS ? p->dport : p->sport;
	__u64 now = bpf_jiffies64();
	int related = 0;

	if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6) {
		if (is_icmp_echo(p->family, p->icmp_type)) {
			rport = 0;
		} else if (is_icmp_error(p->family, p->icmp_type)) {
			/* an error about a packet that went the other way: look up the flow it quotes */
			struct packet in = {};
			struct iphdr4 ip4;
			struct iphdr6 ip6;
			__u32 off = p->l4_off + 8;

			/* a quote longer than a real stack sends carries something else: plain ICMP for policy */
			if (p->l3_end - ETH_HLEN > (p->family == 4 ? ICMP_ERROR_MAX_V4 : ICMP_ERROR_MAX_V6))
				return 0;
			if (p->family == 4) {
				if (bpf_skb_load_bytes(skb, off, &ip4, sizeof(ip4)) < 0)
					return 0;
				in.protocol = ip4.protocol;
				__builtin_memcpy(in.saddr, ip4.saddr, 4);
				__builtin_memcpy(in.daddr, ip4.daddr, 4);
				off += (ip4.ver_ihl & 0xf) * 4;
			} else {
				if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
					return 0;
				in.protocol = ip6.nexthdr;
				copy16(in.saddr, ip6.saddr);
				copy16(in.daddr, ip6.daddr);
				off += 40;
			}
			if (in.protocol == IPPROTO_TCP || in.protocol == IPPROTO_UDP || in.protocol == IPPROTO_SCTP ||
			    in.protocol == icmp_proto(p->family)) {
				__u8 ports[8];
				if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
					return 0;
				if (in.protocol == icmp_proto(p->family)) {
					in.sport = ((__u16)ports[4] << 8) | ports[5];
					in.dport = 0;
				} else {
					in.sport = ((__u16)ports[0] << 8) | ports[1];
					in.dport = ((__u16)ports[2] << 8) | ports[3];
				}
			} else {
				in.sport = 0;
				in.dport = 0;
			}
			/* An error goes back to the sender of the packet it quotes: to the peer of the flow when the pod
			 * sends it, to the pod when it receives it. One sent anywhere else is not related to the flow
			 * (it would carry data past policy to any address): plain ICMP for policy. */
			if (!addr_eq(in.saddr, p->daddr))
				return 0;
			/* the quoted packet travelled in the other direction: its source is ours for to_pod */
			if (dir == MOAT_DIR_INGRESS)
				ct_key_for(&k, skb->ifindex, p->family, in.protocol, in.saddr, in.sport, in.daddr,
					   in.dport);
			else
				ct_key_for(&k, skb->ifindex, p->family, in.protocol, in.daddr,
					   in.protocol == icmp_proto(p->family) ? in.sport : in.dport, in.saddr,
					   in.protocol == icmp_proto(p->family) ? 0 : in.sport);
			related = 1;
			goto lookup;
		} else {
			return 0; /* other ICMP is judged packet by packet */
		}
	} else if (!p->has_ports) {
		lport = 0;
		rport = 0;
	}
	ct_key_for(&k, skb->ifindex, p->family, p->protocol, laddr, lport, raddr, rport);

lookup:
	ct = bpf_map_lookup_elem(&conntrack, &k);
	if (!ct)
		return 0;
	if (ct->expires < now) {
		ct_delete(&k);
		return 0;
	}
	if (!ct_revalidate(cfg, ep, &k, ct, d)) {
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
	if (dir != ct->direction)
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
	{
		__u64 deadline = now + ticks(cfg, ct_timeout(p->protocol, ct->flags, ct->flags & MOAT_CT_SEEN_REPLY));
		if (deadline > ct->expires + ticks(cfg, CT_REFRESH_SLACK) || deadline < ct->expires)
			ct->expires = deadline;
	}
	return 1;
}

/*
 * Records an allowed new flow. Returns 0, or MOAT_REASON_CT_LIMIT when the endpoint already holds its bound of
 * entries: a flood of new flows fills its own share, never the table of everyone else.
 */
static __always_inline int ct_create(__u32 ifindex, const struct packet *p, __u8 dir,
				     const struct moat_config *cfg, const struct decision *d)
{
	struct moat_ct_key k;
	struct moat_ct_value v = {};
	const __u8 *laddr = dir == MOAT_DIR_EGRESS ? p->saddr : p->daddr;
	const __u8 *raddr = dir == MOAT_DIR_EGRESS ? p->daddr : p->saddr;
	__u16 lport = dir == MOAT_DIR_EGRESS ? p->sport : p->dport;
	__u16 rport = dir == MOAT_DIR_EGRESS ? p->dport : p->sport;

	struct moat_ct_count *c = 0;

	if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6) {
		if (!is_icmp_echo(p->family, p->icmp_type))
			return 0;
		rport = 0;
	} else if (!p->has_ports) {
		lport = 0;
		rport = 0;
	}
	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_RST))
		return 0;
	ct_key_for(&k, ifindex, p->family, p->protocol, laddr, lport, raddr, rport);
	if (cfg->ct_max_per_endpoint) {
		c = ct_count_of(ifindex);
		/* at the bound, only an entry that exists already (a SYN on a reused port) may be written again */
		if (c && c->live >= cfg->ct_max_per_endpoint && !bpf_map_lookup_elem(&conntrack, &k)) {
			stat_inc(MOAT_STAT_CT_LIMITED);
			return MOAT_REASON_CT_LIMIT;
		}
	}
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
	if (bpf_map_update_elem(&conntrack, &k, &v, BPF_NOEXIST) == 0) {
		stat_inc(MOAT_STAT_CT_CREATED);
		if (c) {
			__sync_fetch_and_add(&c->live, 1);
			__sync_fetch_and_add(&c->created, 1);
		}
	} else {
		bpf_map_update_elem(&conntrack, &k, &v, BPF_ANY); /* replaces a stale entry: no new one to count */
	}
	return 0;
}

/* ---- fragments ---- */

static __always_inline void frag_key_for(struct moat_frag_key *k, __u32 ifindex, const struct packet *p)
{
	k->ifindex = ifindex;
	k->id = p->frag_id;
	k->family = p->family;
	k->protocol = p->frag_protocol;
	k->pad[0] = 0;
	k->pad[1] = 0;
	copy16(k->saddr, p->saddr);
	copy16(k->daddr, p->daddr);
}

/* ---- the pipeline ---- */

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

static __always_inline int process(struct __sk_buff *skb, __u8 dir)
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
	if (!cfg)
		return TCX_DROP;

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
		err = arp_check(skb, &p, ep, dir);
		if (err) {
			d.reason = err;
			return finish(skb, ep, &p, dir, &d);
		}
		d.pass = 1;
		d.reason = MOAT_REASON_NEIGHBOR;
		d.emit = 0;
		return finish(skb, ep, &p, dir, &d);
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
		if (err) {
			d.reason = err;
			return finish(skb, ep, &p, dir, &d);
		}
		d.pass = 1;
		d.reason = MOAT_REASON_NEIGHBOR;
		d.emit = 0;
		return finish(skb, ep, &p, dir, &d);
	}
	if (dir == MOAT_DIR_EGRESS && !endpoint_owns(ep, p.family, p.saddr)) {
		d.reason = MOAT_REASON_SPOOFED;
		return finish(skb, ep, &p, dir, &d);
	}

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
	return process(skb, MOAT_DIR_EGRESS);
}

SEC("tc")
int moat_to_pod(struct __sk_buff *skb)
{
	return process(skb, MOAT_DIR_INGRESS);
}

/* Not attached: the enforcer runs it (BPF_PROG_TEST_RUN) to read the jiffies clock of conntrack deadlines, and
 * twice some time apart to learn config.hz. It returns the low 32 bits of jiffies, and writes the monotonic clock
 * (8 bytes, ns) over the start of the packet, read in the same instant, so the rate measured does not depend on
 * when user space got to run. */
SEC("tc")
int moat_jiffies(struct __sk_buff *skb)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 j = bpf_jiffies64();

	bpf_skb_store_bytes(skb, 0, &now, sizeof(now), 0);
	return (__u32)j;
}
