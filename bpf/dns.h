/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The DNS stage (egress only): a pod whose namespace has names it may not resolve (dnsDeny, through dns_sets and
 * dns_names; moat.h) gets NXDOMAIN from the datapath for them. The query is read in place: one question, its name
 * in plain labels; each suffix of the name, lower-cased and with its labels reversed, is one lookup in
 * dns_names, so "www.example.com" meets the patterns of com, example.com and www.example.com, each in the forms
 * its depth allows. A denied query is turned into its own answer (addresses, ports and MACs swapped, the header
 * an NXDOMAIN answer with nothing in it) and handed back to the pod, which never knows the query did not leave.
 * A query this stage cannot read, from such a namespace, is dropped: reading it another way than the resolver
 * would is how a name would slip through.
 */
#ifndef __MOAT_DNS_H
#define __MOAT_DNS_H

#define DNS_PORT 53
#define DNS_HDR_LEN 12
#define UDP_HLEN 8
#define DNS_LABEL_MAX 63
#define DNS_QR 0x80      /* flags' first byte: a response */
#define DNS_OPCODE 0x78  /* flags' first byte: the opcode's bits */
#define DNS_RD 0x01      /* flags' first byte: recursion desired */
#define DNS_RA 0x80      /* flags' second byte: recursion available */
#define DNS_CD 0x10      /* flags' second byte: checking disabled */
#define DNS_NXDOMAIN 3

enum dns_outcome {
	DNS_PASS = 0,     /* not a query this stage decides: on to conntrack and policy */
	DNS_ANSWERED = 1, /* denied: the packet is its NXDOMAIN answer now, for the pod */
	DNS_DROP = 2,     /* a query that cannot be read: dropped */
	DNS_AUDIT = 3,    /* a name only an Audit policy denies, or any in a namespace in audit mode: reported, passed */
};

/* What the walk over a query's name keeps: the bytes read, the labels, where the key's next label goes, the rules
 * found. */
struct dns_walk {
	__u32 avail; /* bytes of the name read into the scratch space */
	__u32 pos;   /* where the next label starts; at the end, where the root label is */
	__u32 end;   /* the root label was found */
	__u32 n;     /* labels of the name */
	__u32 w;     /* bytes of the key's name so far */
	__u32 rule;  /* the most specific Enforce rule that denies the name so far; 0 = none */
	__u32 audit; /* the same of the Audit policies */
	__u32 err;
	__u32 fqdn;  /* the suffixes are looked up in fqdn_names (an answer's question), not dns_names (a query's) */
	__u64 slots; /* fqdn: the slots of the patterns the name is */
};

/* One address an answer holds for the name asked, until the walk has read every record. */
struct dns_found {
	__u8 family;
	__u8 pad[3];
	__u32 ttl;
	__u8 addr[16];
};

enum dns_walk_end {
	DNS_WALK_GOING = 0,
	DNS_WALK_DONE = 1,      /* every record read: what was found is learned */
	DNS_WALK_AGENT = 2,     /* readable, but not here: the agent reads it */
	DNS_WALK_MALFORMED = 3, /* a record past the message, a label of no type: nothing is learned */
};

#define DNS_CHAIN_MAX 8 /* CNAME targets an answer's chain follows */
#define DNS_PTR_HOPS 16 /* compression pointers a CNAME target's name may follow */

/* The walk over an answer's records (dns_record), in the scratch space. */
struct dns_answer_walk {
	__u32 off;   /* where the next record starts in the message */
	__u32 len;   /* bytes of the message */
	__u32 have;  /* bytes of it in msg (the rest is past what the datapath reads) */
	__u32 count; /* answer records */
	__u32 read;  /* records read */
	__u32 qlen;  /* bytes of the question's name, its root label included */
	__u32 end;   /* enum dns_walk_end */
	__u32 nchain;
	__u32 chain[DNS_CHAIN_MAX]; /* where the accepted CNAME targets' names start */
	__u32 n;                    /* addresses found */
	__u32 identity;
	__u64 now;                  /* jiffies */
	__u64 hz;
	__u32 min_ttl;
	__u32 grace;
	__u64 slots;                /* the patterns the question's name is */
	struct dns_found found[MOAT_DNS_ANSWER_RECORDS];
	struct moat_fqdn_key key;   /* the learned entry being written */
	struct moat_fqdn_learned val;
	struct moat_resolver_key resolver;
	/* a name's walk, byte by byte (dns_name_byte): where it started, the byte, the next length byte, equal to
	 * the question so far, its result; a target's (dns_target_step): where, pointers followed, bytes */
	__u32 start, j, next, eq, res;
	__u32 pos, hops, total;
};

/* Per CPU, the room the stage works in (the pipeline leaves it almost no stack): the name as sent, its labels, the
 * key it builds, the walk, the answer's fields. */
struct dns_scratch {
	struct moat_dns_key key;
	__u8 raw[MOAT_DNS_NAME_LEN + 64]; /* the name as sent; the rest is room the verifier's bounds want */
	__u8 offs[MOAT_DNS_MAX_LABELS];   /* where each of the last labels starts in raw (a ring) */
	struct dns_walk walk;
	__u8 hdr[DNS_HDR_LEN];            /* the query's header: id, flags, the four counts */
	__u8 opt[12];                     /* its EDNS record: root name, type, size, extended RCODE, version, flags */
	__u32 word[2];                    /* the aligned word of the record's extended RCODE and version: as sent, as
					   * answered */
	__u32 dns_off;                    /* where the message starts in the frame */
	__u8 tcp[4];                      /* a TCP query's data offset byte; its flags word as sent and as reset */
	__u32 seq[4];                     /* a TCP query's sequence and acknowledgement numbers: as sent, as reset */
	__u16 fields[8];                  /* 0, 1: the answer's ports; 4, 5: its old and new flags; 7: a TCP query's
					   * length */
	__u8 frame[64];                   /* an answer's MACs and addresses while they are swapped */
	struct dns_answer_walk ans;       /* an answer's records (learning) */
	struct {                          /* dns_query_seen's and dns_report's keys (their stack is the pipeline's) */
		struct moat_dns_stat_key stat;
		struct moat_dns_query_key query;
		__u64 one;
		__u64 now;
		__u64 latency;
		__u32 identity, meta, rule_id, len;
		__u8 pod[16], resolver[16];
		__u16 qtype;
		__u8 rcode;
		__u8 doff;
		__u8 qt[2];
	} rep;
	__u8 msg[MOAT_DNS_ANSWER_LEN];    /* an answer, as much of it as the datapath reads */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct dns_scratch)); /* no BTF type: Go never sees it (and struct packet has pointers) */
} dns_scratch SEC(".maps");

enum moat_tail {
	MOAT_TAIL_DNS = 0,    /* moat_dns_query */
	MOAT_TAIL_ANSWER = 1, /* moat_dns_answer */
	MOAT_TAIL_TO_POD = 2, /* moat_to_pod_answered */
};

/* The stages the pipeline hands a packet on to by tail call (enum moat_tail): programs of their own, each with
 * its own 512 bytes of stack, which the pipeline has used up. Pinned, so that no tail call fails while no enforcer
 * runs; each load puts its own programs in. */
int moat_dns_query(struct __sk_buff *skb);
int moat_dns_answer(struct __sk_buff *skb);
int moat_to_pod_answered(struct __sk_buff *skb);
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, MOAT_TAILS);
	__uint(key_size, sizeof(__u32));
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* the kernel empties a prog array when its last file goes */
	__array(values, int(struct __sk_buff *));
} tails SEC(".maps") = {
	.values = {[MOAT_TAIL_DNS] = (void *)&moat_dns_query, [MOAT_TAIL_ANSWER] = (void *)&moat_dns_answer,
		   [MOAT_TAIL_TO_POD] = (void *)&moat_to_pod_answered},
};

/* dns_match folds the patterns found for a suffix of k labels of a name of n labels into the rules that deny it. */
static __always_inline void dns_match(const struct moat_dns_value *v, __u32 k, __u32 n, __u32 *rule, __u32 *audit)
{
	if (k == n) {
		if (v->rule[MOAT_DNS_EXACT])
			*rule = v->rule[MOAT_DNS_EXACT];
		if (v->audit_rule[MOAT_DNS_EXACT])
			*audit = v->audit_rule[MOAT_DNS_EXACT];
		return;
	}
	if (k + 1 == n) {
		if (v->rule[MOAT_DNS_ONE])
			*rule = v->rule[MOAT_DNS_ONE];
		if (v->audit_rule[MOAT_DNS_ONE])
			*audit = v->audit_rule[MOAT_DNS_ONE];
	}
	if (v->rule[MOAT_DNS_ANY])
		*rule = v->rule[MOAT_DNS_ANY];
	if (v->audit_rule[MOAT_DNS_ANY])
		*audit = v->audit_rule[MOAT_DNS_ANY];
}

/* fqdn_match is the slots whose pattern covers a name of n labels through the entry of its suffix of k labels: the
 * name itself, one label more, one label or more. */
static __always_inline __u64 fqdn_match(const struct moat_fqdn_value *v, __u32 k, __u32 n)
{
	if (k == n)
		return v->slots[MOAT_DNS_EXACT];
	if (k + 1 == n)
		return v->slots[MOAT_DNS_ONE] | v->slots[MOAT_DNS_ANY];
	return v->slots[MOAT_DNS_ANY];
}

/* dns_swap turns the frame around: MACs, addresses and ports swapped (no checksum changes). */
static __always_inline int dns_swap(struct __sk_buff *skb, const struct packet *p, struct dns_scratch *s)
{
	__u32 l3 = sizeof(struct ethhdr_moat);
	__u8 *f = s->frame;
	__u16 *v = s->fields;

	/* the MACs: f[0..11] as sent, f[16..27] swapped */
	if (bpf_skb_load_bytes(skb, 0, f, 2 * ETH_ALEN) < 0)
		return -1;
	__builtin_memcpy(f + 16, f + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(f + 16 + ETH_ALEN, f, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, f + 16, 2 * ETH_ALEN, 0) < 0)
		return -1;
	copy16(f + 32, p->daddr);
	copy16(f + 48, p->saddr);
	if (p->family == 4) {
		__builtin_memcpy(f + 36, f + 48, 4);
		if (bpf_skb_store_bytes(skb, l3 + 12, f + 32, 8, 0) < 0)
			return -1;
	} else if (bpf_skb_store_bytes(skb, l3 + 8, f + 32, 32, 0) < 0) {
		return -1;
	}
	v[0] = bpf_htons(p->dport);
	v[1] = bpf_htons(p->sport);
	return bpf_skb_store_bytes(skb, p->l4_off, v, 4, 0);
}

/* dns_reset turns a pod's TCP segment carrying a denied query into the resolver's reset of the connection: the
 * frame turned around, RST and ACK with the sequence number the pod expects next and the acknowledgement of the
 * query's bytes (a reset may carry data; the query's stays and is not read), the TCP checksum following the
 * change. The query never reaches the resolver, whose side of the connection times out. */
static __always_inline int dns_reset(struct __sk_buff *skb, const struct packet *p, struct dns_scratch *s)
{
	__u32 csum_off = p->l4_off + 16;

	/* what changes, read first: sequence and acknowledgement numbers, the data offset and flags */
	if (bpf_skb_load_bytes(skb, p->l4_off + 4, &s->seq[0], 8) < 0 ||
	    bpf_skb_load_bytes(skb, p->l4_off + 12, &s->tcp[0], 2) < 0)
		return -1;
	s->seq[2] = s->seq[1];
	s->seq[3] = bpf_htonl(bpf_ntohl(s->seq[0]) + p->tcp_len);
	s->tcp[2] = s->tcp[0];
	s->tcp[3] = TCP_FLAG_RST | TCP_FLAG_ACK;
	if (dns_swap(skb, p, s) < 0 || bpf_skb_store_bytes(skb, p->l4_off + 4, &s->seq[2], 8, 0) < 0 ||
	    bpf_skb_store_bytes(skb, p->l4_off + 12, &s->tcp[2], 2, 0) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, s->seq[0], s->seq[2], 4) < 0 ||
	    bpf_l4_csum_replace(skb, csum_off, s->seq[1], s->seq[3], 4) < 0 ||
	    bpf_l4_csum_replace(skb, csum_off, *(__u16 *)&s->tcp[0], *(__u16 *)&s->tcp[2], 2) < 0)
		return -1;
	return 0;
}

/* dns_answer_nxdomain turns the query in skb into its NXDOMAIN answer, in place and at the same length: the frame
 * goes back the way it came, the header says an answer with nothing in it, and an EDNS record the client sent is
 * echoed with its extended RCODE and version zero (its bits would change the RCODE). The UDP checksum follows
 * what changed (swapping addresses and ports changes no sum). A query with another additional record (only OPT
 * is read) is not answered (-1). Its fields live in the scratch space s, as everything of this stage. */
static __always_inline int dns_answer_nxdomain(struct __sk_buff *skb, const struct packet *p, __u32 dns_off,
					       struct dns_scratch *s)
{
	__u32 csum_off = p->l4_off + 6, opt_off, o, w;
	__u8 *h = s->hdr;
	__u16 *v = s->fields; /* 4, 5: old and new flags */

	/* the EDNS record first (what fails leaves the packet as it was) */
	if (h[11]) {
		opt_off = dns_off + DNS_HDR_LEN + s->walk.pos + 1 + 4;
		if (opt_off + 11 > p->l3_end || bpf_skb_load_bytes(skb, opt_off, s->opt, 11) < 0)
			return -1;
		if (s->opt[0] != 0 || s->opt[1] != 0 || s->opt[2] != 41)
			return -1; /* not OPT: TSIG, SIG(0), ...: not answered */
		/* the extended RCODE and version are bytes 5 and 6 of the record; the sum is of 16-bit words */
		o = DNS_HDR_LEN + s->walk.pos + 1 + 4 + 5;
		w = o & ~1U;
		if (bpf_skb_load_bytes(skb, dns_off + w, &s->word[0], 4) < 0)
			return -1;
		s->word[1] = s->word[0];
		((__u8 *)&s->word[1])[(o - w) & 1] = 0;
		((__u8 *)&s->word[1])[((o - w) & 1) + 1] = 0;
	}

	if (dns_swap(skb, p, s) < 0)
		return -1;

	__builtin_memcpy(&v[4], &h[2], 2);
	h[2] = DNS_QR | (h[2] & (DNS_OPCODE | DNS_RD));
	h[3] = DNS_RA | (h[3] & DNS_CD) | DNS_NXDOMAIN;
	__builtin_memcpy(&v[5], &h[2], 2);
	if (bpf_skb_store_bytes(skb, dns_off + 2, &h[2], 2, 0) < 0)
		return -1;
	/* IPv4's UDP may carry no checksum (0), which BPF_F_MARK_MANGLED_0 keeps; IPv6's always has one */
	if (bpf_l4_csum_replace(skb, csum_off, v[4], v[5], 2 | BPF_F_MARK_MANGLED_0) < 0)
		return -1;
	if (h[11]) {
		if (bpf_skb_store_bytes(skb, dns_off + w, &s->word[1], 4, 0) < 0 ||
		    bpf_l4_csum_replace(skb, csum_off, s->word[0], s->word[1], 4 | BPF_F_MARK_MANGLED_0) < 0)
			return -1;
	}
	return 0;
}

/* dns_label (a bpf_loop callback) reads the label at the walk's pos and notes where it starts. */
static long dns_label(__u32 i, void *ctx)
{
	struct dns_scratch *s;
	struct dns_walk *c;
	__u32 zero = 0;
	__u8 len;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	c = &s->walk;
	if (c->pos >= c->avail) {
		c->err = 1;
		return 1;
	}
	len = s->raw[c->pos & (MOAT_DNS_NAME_LEN - 1)];
	if (len == 0) {
		c->end = 1;
		return 1;
	}
	if (len > DNS_LABEL_MAX) {
		c->err = 1;
		return 1;
	}
	s->offs[c->n & (MOAT_DNS_MAX_LABELS - 1)] = c->pos;
	c->n++;
	c->pos += len + 1;
	return 0;
}

/* dns_suffix (a bpf_loop callback, i from 0) adds the name's label i from the end to the key in the scratch
 * space, lower-cased, and folds in what dns_names holds for the suffix it makes. */
static long dns_suffix(__u32 i, void *ctx)
{
	struct dns_scratch *s;
	struct moat_dns_value *v;
	struct dns_walk *c;
	__u32 zero = 0, k = i + 1, off, len, j;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	c = &s->walk;
	if (k > c->n)
		return 1;
	off = s->offs[(c->n - k) & (MOAT_DNS_MAX_LABELS - 1)];
	len = s->raw[off & (MOAT_DNS_NAME_LEN - 1)];
	for (j = 0; j <= DNS_LABEL_MAX; j++) {
		__u8 ch;

		if (j > len)
			break;
		ch = s->raw[(off + j) & (MOAT_DNS_NAME_LEN - 1)];
		if (j && ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		s->key.name[(c->w + j) & (MOAT_DNS_NAME_LEN - 1)] = ch;
	}
	c->w += len + 1;
	if (c->fqdn) {
		struct moat_fqdn_value *f = bpf_map_lookup_elem(&fqdn_names, &s->key);

		if (f)
			c->slots |= fqdn_match(f, k, c->n);
		return 0;
	}
	v = bpf_map_lookup_elem(&dns_names, &s->key);
	if (v)
		dns_match(v, k, c->n, &c->rule, &c->audit);
	return 0;
}

/* dns_question reads the name of the question at s->dns_off (plain labels: a pointer or another label type is
 * not read) and looks each of its suffixes up, in fqdn_names when fqdn is set (an answer's), else in dns_names
 * (a query's); the walk holds what was found. -1: the name could not be read (or its type and class are past
 * the datagram). */
static __always_inline int dns_question(struct __sk_buff *skb, const struct packet *p, struct dns_scratch *s,
					__u32 fqdn)
{
	__u64 avail; /* 64 bits: the clamp and the helper's length in one register, whose bounds the verifier knows */

	avail = (__u64)p->l3_end - (s->dns_off + DNS_HDR_LEN);
	if (avail > MOAT_DNS_NAME_LEN)
		avail = MOAT_DNS_NAME_LEN;
	if (avail < 1 || bpf_skb_load_bytes(skb, s->dns_off + DNS_HDR_LEN, s->raw, avail) < 0)
		return -1;

	/* the labels, first to last */
	__builtin_memset(&s->walk, 0, sizeof(s->walk));
	s->walk.avail = avail;
	s->walk.fqdn = fqdn;
	bpf_loop(MOAT_DNS_NAME_LEN / 2, dns_label, NULL, 0);
	if (s->walk.err || !s->walk.end)
		return -1;
	/* the root label ends the name, then its type and class */
	if (s->walk.pos >= MOAT_DNS_NAME_LEN - 1 || s->dns_off + DNS_HDR_LEN + s->walk.pos + 1 + 4 > p->l3_end)
		return -1;

	/* each suffix, its last label first: a lookup per label added */
	__builtin_memset(s->key.name, 0, sizeof(s->key.name));
	bpf_loop(MOAT_DNS_MAX_LABELS, dns_suffix, NULL, 0);
	return s->walk.err ? -1 : 0;
}

/* dns_message finds where a DNS message starts in a UDP datagram or a TCP segment (after its two-byte length) into
 * s->dns_off; for TCP, *whole says whether the segment holds the whole message as its length announces. */
static __always_inline int dns_message(struct __sk_buff *skb, const struct packet *p, struct dns_scratch *s,
				       int *whole)
{
	*whole = 1;
	if (p->protocol != IPPROTO_TCP) {
		s->dns_off = p->l4_off + UDP_HLEN;
		return 0;
	}
	if (bpf_skb_load_bytes(skb, p->l4_off + 12, s->tcp, 1) < 0)
		return -1;
	s->dns_off = p->l4_off + (s->tcp[0] >> 4) * WORD + 2;
	if (p->tcp_len < 2 + DNS_HDR_LEN || bpf_skb_load_bytes(skb, s->dns_off - 2, &s->fields[7], 2) < 0)
		return -1;
	*whole = bpf_ntohs(s->fields[7]) == p->tcp_len - 2;
	return 0;
}

/* dns_query reads a query of a pod whose namespace has names it may not resolve, and decides it: DNS_PASS to go on,
 * DNS_AUDIT to report and go on, DNS_ANSWERED to hand the packet (its answer now) back, DNS_DROP; d says why. */
static __always_inline int dns_query(struct __sk_buff *skb, const struct packet *p, struct decision *d,
				     const struct moat_endpoint *ep)
{
	__u32 zero = 0, identity = ep->identity, *set;
	struct dns_scratch *s;
	int whole;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	set = bpf_map_lookup_elem(&dns_sets, &identity);
	if (!s || !set || !*set)
		return DNS_PASS; /* its names went meanwhile (the scratch space is always there) */
	s->key.set = *set;

	d->reason = MOAT_REASON_DNS_UNPARSED;
	d->verdict = MOAT_VERDICT_DENIED;
	d->emit = 1;
	if (p->fragment)
		return DNS_DROP;
	/* over TCP, a segment that is one whole message after its length: what a stub sends; any other cut (a
	 * message over two segments, two in one) is not read, and dropped */
	if (dns_message(skb, p, s, &whole) < 0 || !whole)
		return DNS_DROP;
	if (s->dns_off + DNS_HDR_LEN >= p->l3_end || bpf_skb_load_bytes(skb, s->dns_off, s->hdr, DNS_HDR_LEN) < 0)
		return DNS_DROP;
	if (s->hdr[2] & (DNS_QR | DNS_OPCODE))
		return DNS_PASS; /* an answer, or no standard query: nothing is asked by name */
	/* one question (resolvers answer one; which, when there are several, is theirs to say), no answer or
	 * authority records, at most one additional (a query's EDNS record) */
	if (s->hdr[4] != 0 || s->hdr[5] != 1 || s->hdr[6] || s->hdr[7] || s->hdr[8] || s->hdr[9] || s->hdr[10] ||
	    s->hdr[11] > 1)
		return DNS_DROP;
	if (dns_question(skb, p, s, 0) < 0)
		return DNS_DROP;
	if (!s->walk.rule && !s->walk.audit)
		return DNS_PASS;
	if (!s->walk.rule || ep->mode == MOAT_MODE_AUDIT) {
		/* an Audit policy's name, or a namespace in audit mode: reported (by the caller), and resolved */
		d->rule_id = s->walk.rule ? s->walk.rule : s->walk.audit;
		d->reason = MOAT_REASON_DNS_DENIED;
		d->verdict = MOAT_VERDICT_AUDIT;
		return DNS_AUDIT;
	}
	d->rule_id = s->walk.rule;
	d->reason = MOAT_REASON_DNS_DENIED;
	if (p->protocol == IPPROTO_TCP ? dns_reset(skb, p, s) < 0 : dns_answer_nxdomain(skb, p, s->dns_off, s) < 0) {
		d->reason = MOAT_REASON_DNS_UNPARSED;
		return DNS_DROP;
	}
	return DNS_ANSWERED;
}

/* dns_candidate: a packet the pipeline lets out that this stage must see first: UDP to port 53 (a first fragment
 * or a whole datagram, of a new flow or an established one: a pod may ask many names on one socket) or a TCP
 * segment with data to port 53, from a pod whose namespace has names it may not resolve. */
static __always_inline int dns_candidate(const struct packet *p, const struct moat_endpoint *ep)
{
	__u32 identity = ep->identity, *set;

	if (p->dport != DNS_PORT || p->non_first)
		return 0;
	if (p->protocol != IPPROTO_UDP && !(p->protocol == IPPROTO_TCP && p->tcp_len))
		return 0;
	set = bpf_map_lookup_elem(&dns_sets, &identity);
	return set && *set;
}


/*
 * Learning (egress by name): an answer from a trusted resolver (dns_resolvers) to a pod whose identity has fqdn
 * patterns (fqdn_sets) is read in place before the pod sees it. Its question's name is matched as a query's is,
 * in fqdn_names, giving the slots of the patterns it is; then the answer records are read (at most
 * MOAT_DNS_ANSWER_RECORDS, in the first MOAT_DNS_ANSWER_LEN bytes): a record counts when its class is IN and
 * its owner is the question's name or the target of a CNAME this answer already accepted. The owner is known by
 * where its name is: a compression pointer to the question (offset 12) or to an accepted CNAME's target; a name
 * written out in full is compared with the question's. A or AAAA records that count write fqdn_learned; a CNAME
 * that counts adds its target to the chain. Nothing is learned until every record was read: an answer with a
 * record past its end learns nothing. What can be read but not here (more records, a message longer than the
 * datapath reads, a TCP segment without the whole message, an owner pointing elsewhere once a chain began) goes
 * to the agent. Past the identity's bound the answer is learned all the same, and the agent asked to make room.
 */

static __always_inline __u8 dns_lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

#define DNS_MSG_MASK (MOAT_DNS_ANSWER_LEN - 1)

enum dns_name_res {
	DNS_NAME_GOING = 0,
	DNS_NAME_EQUAL = 1, /* the question's name, written out */
	DNS_NAME_OTHER = 2, /* another name (or one ending in a pointer) */
	DNS_NAME_BAD = 3,   /* w->end says why */
};

/* dns_name_byte (a bpf_loop callback) reads byte j of a name written out from w->start, label by label, and
 * compares it with the question's (its length bytes too), case-insensitively. */
static long dns_name_byte(__u32 i, void *ctx)
{
	struct dns_answer_walk *w;
	struct dns_scratch *s;
	__u32 zero = 0, at;
	__u8 c, q;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	w = &s->ans;
	at = w->start + w->j;
	if (at >= w->have) {
		w->end = at >= w->len ? DNS_WALK_MALFORMED : DNS_WALK_AGENT;
		w->res = DNS_NAME_BAD;
		return 1;
	}
	c = s->msg[at & DNS_MSG_MASK];
	if (w->j == w->next) {
		if (c == 0) {
			w->off = at + 1;
			w->res = w->eq && w->j + 1 == w->qlen ? DNS_NAME_EQUAL : DNS_NAME_OTHER;
			return 1;
		}
		if ((c & 0xc0) == 0xc0) {
			/* the name ends in a pointer: some other name, or the question's written oddly */
			w->off = at + 2;
			w->res = DNS_NAME_OTHER;
			return 1;
		}
		if (c & 0xc0) {
			w->end = DNS_WALK_MALFORMED;
			w->res = DNS_NAME_BAD;
			return 1;
		}
		w->next = w->j + c + 1;
	}
	q = w->j < w->qlen ? s->msg[(DNS_HDR_LEN + w->j) & DNS_MSG_MASK] : 0;
	if (w->j >= w->qlen || dns_lower(q) != dns_lower(c))
		w->eq = 0;
	w->j++;
	return 0;
}

/* dns_owner reads the owner name of the record at w->off: 1 when it is the question's name or an accepted CNAME's
 * target, 0 when it is another name, -1 when the walk ends (w->end says how). It moves w->off past the name. */
static __always_inline int dns_owner(struct dns_scratch *s, struct dns_answer_walk *w)
{
	__u32 off = w->off, ptr, k;
	__u8 b0, b1;

	if (off + 2 > w->have) {
		w->end = off + 2 > w->len ? DNS_WALK_MALFORMED : DNS_WALK_AGENT;
		return -1;
	}
	b0 = s->msg[off & DNS_MSG_MASK];
	b1 = s->msg[(off + 1) & DNS_MSG_MASK];
	if ((b0 & 0xc0) == 0xc0) {
		ptr = (__u32)(b0 & 0x3f) << 8 | b1;
		w->off = off + 2;
		if (ptr == DNS_HDR_LEN)
			return 1;
		for (k = 0; k < DNS_CHAIN_MAX; k++)
			if (k < w->nchain && w->chain[k] == ptr)
				return 1;
		/* the name is somewhere else: not read here (it may be the question's, written again) */
		w->end = DNS_WALK_AGENT;
		return -1;
	}
	if (b0 & 0xc0) {
		w->end = DNS_WALK_MALFORMED;
		return -1;
	}
	/* written out */
	w->start = off;
	w->j = 0;
	w->next = 0;
	w->eq = 1;
	w->res = DNS_NAME_GOING;
	bpf_loop(MOAT_DNS_NAME_LEN, dns_name_byte, NULL, 0);
	if (w->res == DNS_NAME_EQUAL)
		return 1;
	if (w->res == DNS_NAME_GOING) {
		w->end = DNS_WALK_MALFORMED; /* longer than a name may be */
		return -1;
	}
	if (w->res == DNS_NAME_BAD)
		return -1;
	if (w->nchain) {
		/* once a chain began, another name may be a target written out again: the agent compares names */
		w->end = DNS_WALK_AGENT;
		return -1;
	}
	return 0;
}

/* dns_target_step (a bpf_loop callback) takes one step along a CNAME target's name: a label, a pointer (backwards
 * only, at most DNS_PTR_HOPS), or its end; w->res is DNS_NAME_EQUAL for a name, DNS_NAME_BAD otherwise. */
static long dns_target_step(__u32 i, void *ctx)
{
	struct dns_answer_walk *w;
	struct dns_scratch *s;
	__u32 zero = 0, ptr, pos;
	__u8 c;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	w = &s->ans;
	pos = w->pos;
	w->res = DNS_NAME_BAD;
	if (pos >= w->have)
		return 1;
	c = s->msg[pos & DNS_MSG_MASK];
	if (c == 0) {
		if (w->total + 1 <= 255)
			w->res = DNS_NAME_EQUAL;
		return 1;
	}
	if ((c & 0xc0) == 0xc0) {
		if (pos + 1 >= w->have || ++w->hops > DNS_PTR_HOPS)
			return 1;
		ptr = (__u32)(c & 0x3f) << 8 | s->msg[(pos + 1) & DNS_MSG_MASK];
		if (ptr >= pos || ptr < DNS_HDR_LEN)
			return 1;
		w->pos = ptr;
		w->res = DNS_NAME_GOING;
		return 0;
	}
	if (c & 0xc0)
		return 1;
	w->total += c + 1;
	if (w->total >= 255)
		return 1;
	w->pos = pos + c + 1;
	w->res = DNS_NAME_GOING;
	return 0;
}

/* dns_target_ok checks that a CNAME's target name, from off, is a name (labels, pointers backwards only, at most
 * DNS_PTR_HOPS of them, 255 bytes at most), inside the message the datapath holds. */
static __always_inline int dns_target_ok(struct dns_answer_walk *w, __u32 off)
{
	w->pos = off;
	w->hops = 0;
	w->total = 0;
	w->res = DNS_NAME_GOING;
	bpf_loop(MOAT_DNS_NAME_LEN, dns_target_step, NULL, 0);
	return w->res == DNS_NAME_EQUAL;
}

/* dns_record (a bpf_loop callback) reads the answer record at the walk's offset. */
static long dns_record(__u32 i, void *ctx)
{
	struct dns_answer_walk *w;
	struct dns_scratch *s;
	__u32 zero = 0, off, type, class, rdlen, rdata, ttl;
	int owner;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	w = &s->ans;
	if (w->read >= w->count) {
		w->end = DNS_WALK_DONE;
		return 1;
	}
	owner = dns_owner(s, w);
	if (owner < 0)
		return 1;
	off = w->off;
	if (off + 10 > w->have) {
		w->end = off + 10 > w->len ? DNS_WALK_MALFORMED : DNS_WALK_AGENT;
		return 1;
	}
	type = (__u32)s->msg[off & DNS_MSG_MASK] << 8 | s->msg[(off + 1) & DNS_MSG_MASK];
	class = (__u32)s->msg[(off + 2) & DNS_MSG_MASK] << 8 | s->msg[(off + 3) & DNS_MSG_MASK];
	ttl = (__u32)s->msg[(off + 4) & DNS_MSG_MASK] << 24 | (__u32)s->msg[(off + 5) & DNS_MSG_MASK] << 16 |
	      (__u32)s->msg[(off + 6) & DNS_MSG_MASK] << 8 | s->msg[(off + 7) & DNS_MSG_MASK];
	rdlen = (__u32)s->msg[(off + 8) & DNS_MSG_MASK] << 8 | s->msg[(off + 9) & DNS_MSG_MASK];
	rdata = off + 10;
	if (rdata + rdlen > w->len) {
		w->end = DNS_WALK_MALFORMED; /* the record runs past the message */
		return 1;
	}
	w->off = rdata + rdlen;
	w->read++;
	if (!owner || class != 1)
		return 0;
	if ((type == 1 && rdlen == 4) || (type == 28 && rdlen == 16)) {
		struct dns_found *f;
		__u32 b;

		if (rdata + rdlen > w->have || w->n >= MOAT_DNS_ANSWER_RECORDS) {
			w->end = DNS_WALK_AGENT;
			return 1;
		}
		f = &w->found[w->n & (MOAT_DNS_ANSWER_RECORDS - 1)];
		__builtin_memset(f, 0, sizeof(*f));
		f->family = type == 1 ? 4 : 6;
		f->ttl = ttl;
		for (b = 0; b < 16; b++)
			if (b < rdlen)
				f->addr[b] = s->msg[(rdata + b) & DNS_MSG_MASK];
		w->n++;
		return 0;
	}
	if (type == 5) {
		if (w->nchain >= DNS_CHAIN_MAX || !dns_target_ok(w, rdata)) {
			w->end = DNS_WALK_AGENT;
			return 1;
		}
		w->chain[w->nchain & (DNS_CHAIN_MAX - 1)] = rdata;
		w->nchain++;
	}
	return 0;
}

/* dns_learn (a bpf_loop callback) writes the walk's address i to fqdn_learned: its slots or'ed into those of an
 * entry that has not expired, its deadline the later one; a new key counts against the identity's bound. An
 * address of a NAT64 prefix is kept as the IPv4 address it embeds, as decide() looks it up. */
static long dns_learn(__u32 i, void *ctx)
{
	struct moat_fqdn_learned *old;
	struct dns_answer_walk *w;
	struct dns_scratch *s;
	struct dns_found *f;
	__u32 zero = 0;
	__u64 secs, *count;

	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	w = &s->ans;
	if (i >= w->n || i >= MOAT_DNS_ANSWER_RECORDS)
		return 1;
	asm volatile("" : "+r"(i)); /* keep the mask: the verifier wants it on the register it indexes with */
	f = &w->found[i & (MOAT_DNS_ANSWER_RECORDS - 1)];
	__builtin_memset(&w->key, 0, sizeof(w->key));
	w->key.identity = w->identity;
	if (f->family == 6 && nat64_embeds_ipv4(f->addr)) {
		w->key.family = 4;
		__builtin_memcpy(w->key.addr, f->addr + 12, 4);
	} else {
		w->key.family = f->family;
		copy16(w->key.addr, f->addr);
	}
	secs = (f->ttl > w->min_ttl ? f->ttl : w->min_ttl) + (__u64)w->grace;
	w->val.slots = w->slots;
	w->val.expires = w->now + secs * w->hz;
	old = bpf_map_lookup_elem(&fqdn_learned, &w->key);
	if (old && old->expires >= w->now) {
		w->val.slots |= old->slots;
		if (old->expires > w->val.expires)
			w->val.expires = old->expires;
	} else if (!old) {
		count = bpf_map_lookup_elem(&fqdn_counts, &w->identity);
		if (count)
			__sync_fetch_and_add(count, 1);
	}
	bpf_map_update_elem(&fqdn_learned, &w->key, &w->val, BPF_ANY);
	stat_inc(MOAT_STAT_FQDN_LEARNED);
	return 0;
}

/* dns_to_agent copies the frame (its first MOAT_DNS_FALLBACK_FRAME bytes) to the agent's ring, with the pod's host
 * veth and identity. */
static __always_inline void dns_to_agent(struct __sk_buff *skb, __u32 identity)
{
	struct moat_dns_fallback *r;
	__u64 len = skb->len; /* 64 bits: the clamp and the helper's length in one register */

	r = bpf_ringbuf_reserve(&dns_fallback, sizeof(*r), 0);
	if (!r) {
		stat_inc(MOAT_STAT_DNS_FALLBACK_LOST);
		return;
	}
	if (len > MOAT_DNS_FALLBACK_FRAME)
		len = MOAT_DNS_FALLBACK_FRAME;
	if (len < 1 || bpf_skb_load_bytes(skb, 0, r->frame, len) < 0) {
		bpf_ringbuf_discard(r, 0);
		stat_inc(MOAT_STAT_DNS_FALLBACK_LOST);
		return;
	}
	r->ifindex = skb->ifindex;
	r->identity = identity;
	r->len = len;
	r->wire_len = skb->len;
	bpf_ringbuf_submit(r, 0);
	stat_inc(MOAT_STAT_DNS_FALLBACK);
}

/*
 * Visibility: every answer a pod gets from a trusted resolver, and every answer the query stage gives for a dnsDeny
 * name, is counted per identity (dns_stats: by type and rcode, by latency, synthesized, handed to the agent) and
 * reported (dns_events): always when the datapath answered, audited, learned or handed it over; otherwise at most
 * dns_timing.answer_events a second on each CPU (the rest counted as sampled). A query's latency runs from when
 * the pod sent it (dns_queries, by host veth, port and message id) to when its answer reaches the pod's veth.
 * Both are global functions: the pipelines that call them are near the verifier's bound, and a global function is
 * verified once, on its own.
 */

/* The pod's and the remote's addresses as struct packet holds them, one after the other (saddr, daddr). */
struct dns_pair {
	__u8 a[16];
	__u8 b[16];
};

enum dns_report_meta {
	DNS_REPORT_TO_POD = 1 << 12, /* an answer on its way to the pod: a is the resolver, b the pod */
};

static __always_inline void dns_stat_add(struct dns_scratch *s)
{
	__u64 *v = bpf_map_lookup_elem(&dns_stats, &s->rep.stat);

	if (v) {
		*v += 1; /* this CPU's own counter */
		return;
	}
	s->rep.one = 1;
	bpf_map_update_elem(&dns_stats, &s->rep.stat, &s->rep.one, BPF_NOEXIST);
}

/* dns_type_bucket keeps the query types the enforcer names, and folds every other into 0, so no pod can make the
 * counters of every type there is. */
static __always_inline __u16 dns_type_bucket(__u16 t)
{
	switch (t) {
	case 1:   /* A */
	case 2:   /* NS */
	case 5:   /* CNAME */
	case 6:   /* SOA */
	case 12:  /* PTR */
	case 15:  /* MX */
	case 16:  /* TXT */
	case 28:  /* AAAA */
	case 33:  /* SRV */
	case 35:  /* NAPTR */
	case 64:  /* SVCB */
	case 65:  /* HTTPS */
	case 255: /* ANY */
	case 257: /* CAA */
		return t;
	}
	return 0;
}

/* dns_budget_spend takes one event from this CPU's budget of the second now falls in: 0 when it is spent (or
 * answers without a pattern are not reported at all). */
static __always_inline int dns_budget_spend(__u64 now)
{
	struct moat_dns_timing *t;
	struct dns_budget *b;
	__u32 zero = 0;

	t = bpf_map_lookup_elem(&dns_timing, &zero);
	b = bpf_map_lookup_elem(&dns_budget, &zero);
	if (!t || !b || !t->answer_events)
		return 0;
	if (b->second != now >> 30) {
		b->second = now >> 30;
		b->spent = 0;
	}
	if (b->spent >= t->answer_events)
		return 0;
	b->spent++;
	return 1;
}

/* dns_query_seen notes when a pod sent a DNS query to port 53 (its id, read at the message's start: after the UDP
 * header, or after a TCP segment's header and the message's length), and counts it. meta: the L4 header's offset
 * (low 16 bits) and the protocol (the next 8). */
__noinline int dns_query_seen(struct __sk_buff *skb, __u32 identity, __u32 meta, __u32 port)
{
	__u32 zero = 0, l4 = meta & 0xffff, off = l4 + UDP_HLEN;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch, &zero);

	if (!skb || !s)
		return 0;
	__builtin_memset(&s->rep, 0, sizeof(s->rep));
	if (((meta >> 16) & 0xff) == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, l4 + 12, &s->rep.doff, 1) < 0)
			return 0;
		off = l4 + (s->rep.doff >> 4) * WORD + 2;
	}
	if (bpf_skb_load_bytes(skb, off, &s->rep.query.id, 2) < 0)
		return 0;
	s->rep.query.ifindex = skb->ifindex;
	s->rep.query.port = port;
	s->rep.now = bpf_ktime_get_ns();
	bpf_map_update_elem(&dns_queries, &s->rep.query, &s->rep.now, BPF_ANY);
	s->rep.stat.identity = identity;
	s->rep.stat.kind = MOAT_DNS_STAT_QUERIES;
	dns_stat_add(s);
	return 0;
}

/* dns_report counts an answer a pod gets and reports it (see above). What it reports is in the scratch space: the
 * header (s->hdr), the question's name (s->raw, s->walk) at s->dns_off, its slots, and for a resolver's answer
 * the addresses read (s->ans). meta: enum moat_dns_event_flags (low 8 bits), the family (next 4),
 * DNS_REPORT_TO_POD, the pod's port (high 16). rule_id: the dnsDeny rule of an answer the datapath gave. */
__noinline int dns_report(struct __sk_buff *skb, __u32 identity, __u32 meta, __u32 rule_id,
			  const struct dns_pair *addrs)
{
	struct moat_dns_event *e;
	struct dns_scratch *s;
	__u32 zero = 0, i;
	__u64 *sent;

	/* everything in the scratch space: this function's stack is what the pipeline leaves, a few words */
	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!skb || !s || !addrs)
		return 0;
	__builtin_memset(&s->rep, 0, sizeof(s->rep));
	s->rep.identity = identity;
	s->rep.meta = meta;
	s->rep.rule_id = rule_id;
	if (meta & DNS_REPORT_TO_POD) {
		copy16(s->rep.pod, addrs->b);
		copy16(s->rep.resolver, addrs->a);
	} else {
		copy16(s->rep.pod, addrs->a);
		copy16(s->rep.resolver, addrs->b);
	}
	s->rep.len = s->walk.pos + 1;
	if (s->rep.len > MOAT_DNS_NAME_LEN)
		return 0;
	s->rep.now = bpf_ktime_get_ns();
	bpf_skb_load_bytes(skb, s->dns_off + DNS_HDR_LEN + s->rep.len, s->rep.qt, 2);
	s->rep.qtype = (__u16)s->rep.qt[0] << 8 | s->rep.qt[1];
	s->rep.rcode = s->rep.meta & MOAT_DNS_EV_SYNTHESIZED ? DNS_NXDOMAIN : s->hdr[3] & 0xf;

	if (s->rep.meta & DNS_REPORT_TO_POD) {
		s->rep.query.ifindex = skb->ifindex;
		s->rep.query.port = s->rep.meta >> 16;
		__builtin_memcpy(&s->rep.query.id, s->hdr, 2);
		sent = bpf_map_lookup_elem(&dns_queries, &s->rep.query);
		if (sent) {
			if (s->rep.now > *sent)
				s->rep.latency = s->rep.now - *sent;
			bpf_map_delete_elem(&dns_queries, &s->rep.query);
		}
	}

	s->rep.stat.identity = s->rep.identity;
	if (s->rep.meta & MOAT_DNS_EV_SYNTHESIZED) {
		s->rep.stat.kind = MOAT_DNS_STAT_SYNTHESIZED;
		s->rep.stat.value = dns_type_bucket(s->rep.qtype);
		dns_stat_add(s);
	} else if (s->rep.meta & DNS_REPORT_TO_POD) {
		s->rep.stat.kind = MOAT_DNS_STAT_ANSWERS;
		s->rep.stat.value = dns_type_bucket(s->rep.qtype);
		s->rep.stat.rcode = s->rep.rcode;
		dns_stat_add(s);
		if (s->rep.latency) {
			/* the bucket: the least b with latency < 2^b microseconds, the last one open */
			s->rep.stat.kind = MOAT_DNS_STAT_LATENCY;
			s->rep.stat.rcode = 0;
			s->rep.stat.value = MOAT_DNS_LATENCY_BUCKETS - 1;
			for (i = 0; i < MOAT_DNS_LATENCY_BUCKETS - 1; i++) {
				if (s->rep.latency / 1000 < (1ULL << i)) {
					s->rep.stat.value = i;
					break;
				}
			}
			dns_stat_add(s);
		}
		if (s->rep.meta & MOAT_DNS_EV_TO_AGENT) {
			s->rep.stat.kind = MOAT_DNS_STAT_FALLBACK;
			s->rep.stat.value = 0;
			s->rep.stat.rcode = 0;
			dns_stat_add(s);
		}
	}
	if (!(s->rep.meta & (MOAT_DNS_EV_SYNTHESIZED | MOAT_DNS_EV_AUDIT | MOAT_DNS_EV_FQDN | MOAT_DNS_EV_TO_AGENT)) &&
	    !dns_budget_spend(s->rep.now)) {
		stat_inc(MOAT_STAT_DNS_EVENTS_SAMPLED);
		return 0;
	}

	e = bpf_ringbuf_reserve(&dns_events, sizeof(*e), 0);
	if (!e) {
		stat_inc(MOAT_STAT_DNS_EVENTS_LOST);
		return 0;
	}
	e->time_ns = s->rep.now;
	e->latency_ns = s->rep.latency;
	e->slots = s->walk.fqdn ? s->walk.slots : 0;
	e->ifindex = skb->ifindex;
	e->identity = s->rep.identity;
	e->rule_id = s->rep.rule_id;
	e->qtype = s->rep.qtype;
	e->rcode = s->rep.rcode;
	e->flags = s->rep.meta & 0xff;
	e->family = (s->rep.meta >> 8) & 0xf;
	e->name_len = s->rep.len;
	e->port = s->rep.meta >> 16;
	e->ancount = (__u16)s->hdr[6] << 8 | s->hdr[7];
	copy16(e->pod, s->rep.pod);
	copy16(e->resolver, s->rep.resolver);
	e->naddr = 0;
	if (s->rep.meta & DNS_REPORT_TO_POD)
		e->naddr = s->ans.n < MOAT_DNS_EVENT_ADDRS ? s->ans.n : MOAT_DNS_EVENT_ADDRS;
	for (i = 0; i < MOAT_DNS_EVENT_ADDRS; i++) {
		if (i < e->naddr)
			__builtin_memcpy(&e->addrs[i], &s->ans.found[i], sizeof(e->addrs[i]));
		else
			__builtin_memset(&e->addrs[i], 0, sizeof(e->addrs[i]));
	}
	__builtin_memcpy(e->name, s->raw, MOAT_DNS_NAME_LEN);
	/* the reader is not woken for each event (a wake-up costs the answer microseconds on a virtual machine): it
	 * looks every quarter second, and is woken once an eighth of the ring waits */
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&dns_events, BPF_RB_AVAIL_DATA) > MOAT_DNS_EVENTS_BYTES / 8 ?
				   BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

/* dns_room_request asks the agent to bring an identity back under its bound: a dns_fallback record with no frame. */
static __always_inline void dns_room_request(__u32 identity)
{
	struct moat_dns_fallback *r = bpf_ringbuf_reserve(&dns_fallback, sizeof(*r), 0);

	if (!r) {
		stat_inc(MOAT_STAT_DNS_FALLBACK_LOST);
		return;
	}
	r->ifindex = 0;
	r->identity = identity;
	r->len = 0;
	r->wire_len = 0;
	bpf_ringbuf_submit(r, 0);
}

/* dns_query_meta is dns_report's meta for an answer the query stage gave (or audited) for the query in p. */
static __always_inline __u32 dns_query_meta(const struct packet *p, __u32 flags)
{
	if (p->protocol == IPPROTO_TCP)
		flags |= MOAT_DNS_EV_TCP;
	return flags | (__u32)p->family << 8 | (__u32)p->sport << 16;
}

/* dns_answer_candidate: what to_pod hands to moat_dns_answer: a UDP datagram (whole, or its first fragment) or a
 * TCP segment with data from port 53, not re-injected by the agent. */
static __always_inline int dns_answer_candidate(const struct __sk_buff *skb, const struct packet *p)
{
	if (p->sport != DNS_PORT || p->non_first || skb->mark == MOAT_MARK_DNS_REINJECT)
		return 0;
	return p->protocol == IPPROTO_UDP || (p->protocol == IPPROTO_TCP && p->tcp_len);
}

/* dns_answer reads an answer from a trusted resolver for a pod, reports it (dns_report), and learns from it when
 * its name is one of the identity's fqdn patterns (see above): DNS_PASS to go on to conntrack and policy
 * (learned or not), DNS_DROP when a datagram went to the agent (d says so). */
static __always_inline int dns_answer(struct __sk_buff *skb, const struct packet *p, struct decision *d,
				      const struct moat_endpoint *ep, const struct moat_config *cfg)
{
	__u32 zero = 0, identity, *set, flags, meta;
	struct moat_dns_timing *t;
	struct dns_answer_walk *w;
	struct dns_scratch *s;
	__u64 have, *count;
	int whole;

	if (!ep || !cfg || !dns_answer_candidate(skb, p))
		return DNS_PASS;
	identity = ep->identity;
	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	set = bpf_map_lookup_elem(&fqdn_sets, &identity);
	t = bpf_map_lookup_elem(&dns_timing, &zero);
	if (!s || !t || !cfg->hz || p->fragment)
		return DNS_PASS; /* a fragmented answer is not read: nothing is learned from it */
	w = &s->ans;
	/* only a trusted resolver's answers */
	__builtin_memset(&w->resolver, 0, sizeof(w->resolver));
	w->resolver.family = p->family;
	copy16(w->resolver.addr, p->saddr);
	if (!bpf_map_lookup_elem(&dns_resolvers, &w->resolver))
		return DNS_PASS;

	s->key.set = set ? *set : 0;
	if (dns_message(skb, p, s, &whole) < 0)
		return DNS_PASS;
	if (s->dns_off + DNS_HDR_LEN >= p->l3_end || bpf_skb_load_bytes(skb, s->dns_off, s->hdr, DNS_HDR_LEN) < 0)
		return DNS_PASS;
	/* a standard answer (QR, opcode 0) to one question */
	if ((s->hdr[2] & (DNS_QR | DNS_OPCODE)) != DNS_QR || s->hdr[4] != 0 || s->hdr[5] != 1)
		return DNS_PASS;
	if (dns_question(skb, p, s, 1) < 0)
		return DNS_PASS; /* a name that cannot be read: not learned, not reported */
	if (!s->key.set)
		s->walk.slots = 0;

	__builtin_memset(w, 0, sizeof(*w));
	flags = p->protocol == IPPROTO_TCP ? MOAT_DNS_EV_TCP : 0;
	if (s->walk.slots)
		flags |= MOAT_DNS_EV_FQDN;
	meta = (__u32)p->family << 8 | DNS_REPORT_TO_POD | (__u32)p->dport << 16;
	if (s->hdr[2] & 0x02) {
		/* truncated (TC): nothing to learn, the stub asks again over TCP */
		dns_report(skb, identity, meta | flags | MOAT_DNS_EV_TRUNCATED, 0, (const struct dns_pair *)p->saddr);
		return DNS_PASS;
	}

	w->slots = s->walk.slots;
	w->qlen = s->walk.pos + 1;
	w->off = DNS_HDR_LEN + w->qlen + 4;
	w->len = p->l3_end - s->dns_off;
	w->count = (__u32)s->hdr[6] << 8 | s->hdr[7];
	w->identity = identity;
	if (!whole || w->count > MOAT_DNS_ANSWER_RECORDS) {
		w->end = DNS_WALK_AGENT;
	} else {
		have = w->len;
		if (have > MOAT_DNS_ANSWER_LEN)
			have = MOAT_DNS_ANSWER_LEN;
		if (have < 1 || bpf_skb_load_bytes(skb, s->dns_off, s->msg, have) < 0)
			return DNS_PASS;
		w->have = have;
		bpf_loop(MOAT_DNS_ANSWER_RECORDS + 1, dns_record, NULL, 0);
	}
	if (!w->slots) {
		/* no pattern of the identity's: only reported, with the addresses read */
		if (w->end != DNS_WALK_DONE)
			flags |= MOAT_DNS_EV_PARTIAL;
		dns_report(skb, identity, meta | flags, 0, (const struct dns_pair *)p->saddr);
		return DNS_PASS;
	}
	if (w->end == DNS_WALK_DONE) {
		w->now = bpf_jiffies64();
		w->hz = cfg->hz;
		w->min_ttl = t->min_ttl;
		w->grace = t->grace;
		bpf_loop(MOAT_DNS_ANSWER_RECORDS, dns_learn, NULL, 0);
		/* past the identity's bound: learned all the same (the table's LRU bounds them all), and the agent asked
		 * to make room (the identity's entries that expire first go); with no agent, the answer still works */
		count = bpf_map_lookup_elem(&fqdn_counts, &identity);
		if (t->max_per_identity && count && *count > t->max_per_identity)
			dns_room_request(identity);
		dns_report(skb, identity, meta | flags, 0, (const struct dns_pair *)p->saddr);
		return DNS_PASS;
	}
	if (w->end != DNS_WALK_AGENT) {
		/* malformed: nothing learned; the stub judges it */
		dns_report(skb, identity, meta | flags | MOAT_DNS_EV_PARTIAL, 0, (const struct dns_pair *)p->saddr);
		return DNS_PASS;
	}
	dns_to_agent(skb, identity);
	dns_report(skb, identity, meta | flags | MOAT_DNS_EV_TO_AGENT | MOAT_DNS_EV_PARTIAL, 0,
		   (const struct dns_pair *)p->saddr);
	if (p->protocol == IPPROTO_TCP)
		return DNS_PASS; /* the agent learns from the copy; a connection the pod opens before is retried */
	d->reason = MOAT_REASON_DNS_TO_AGENT;
	d->verdict = MOAT_VERDICT_DENIED;
	d->emit = 1;
	return DNS_DROP;
}

/* dns_untrusted: a new flow of an identity with fqdn peers to a DNS port (53, or 853 for DNS over TLS) of an
 * address that is no trusted resolver: it could learn what no trusted answer said, or hide what it asks. A global
 * function: the pipeline's frame is nearly full. */
__noinline int dns_untrusted(__u32 family_proto_port, const struct fqdn_addr *daddr)
{
	struct dns_scratch *s;
	__u32 zero = 0, port = family_proto_port & 0xffff, proto = (family_proto_port >> 16) & 0xff;

	if (!daddr || (port != DNS_PORT && port != 853) || (proto != IPPROTO_UDP && proto != IPPROTO_TCP))
		return 0;
	s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!s)
		return 1;
	__builtin_memset(&s->ans.resolver, 0, sizeof(s->ans.resolver));
	s->ans.resolver.family = family_proto_port >> 24;
	__builtin_memcpy(s->ans.resolver.addr, daddr->a, 16);
	return !bpf_map_lookup_elem(&dns_resolvers, &s->ans.resolver);
}

#endif
