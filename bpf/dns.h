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
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct dns_scratch)); /* no BTF type: Go never sees it (and struct packet has pointers) */
} dns_scratch SEC(".maps");

enum moat_tail {
	MOAT_TAIL_DNS = 0, /* moat_dns_query */
};

/* The stages the pipeline hands a packet on to by tail call (enum moat_tail): programs of their own, each with
 * its own 512 bytes of stack, which the pipeline has used up. Pinned, so that no tail call fails while no enforcer
 * runs; each load puts its own programs in. */
int moat_dns_query(struct __sk_buff *skb);
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(pinning, LIBBPF_PIN_BY_NAME); /* the kernel empties a prog array when its last file goes */
	__array(values, int(struct __sk_buff *));
} tails SEC(".maps") = {
	.values = {[0] = (void *)&moat_dns_query},
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
	v = bpf_map_lookup_elem(&dns_names, &s->key);
	if (v)
		dns_match(v, k, c->n, &c->rule, &c->audit);
	return 0;
}

/* dns_query reads a query of a pod whose namespace has names it may not resolve, and decides it: DNS_PASS to go on,
 * DNS_AUDIT to report and go on, DNS_ANSWERED to hand the packet (its answer now) back, DNS_DROP; d says why. */
static __always_inline int dns_query(struct __sk_buff *skb, const struct packet *p, struct decision *d,
				     const struct moat_endpoint *ep)
{
	__u32 zero = 0, identity = ep->identity, *set;
	struct dns_scratch *s;
	__u64 avail; /* 64 bits: the clamp and the helper's length in one register, whose bounds the verifier knows */

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
	if (p->protocol == IPPROTO_TCP) {
		/* a segment that is one whole message after its length: what a stub sends; any other cut (a message
		 * over two segments, two in one) is not read, and dropped */
		if (bpf_skb_load_bytes(skb, p->l4_off + 12, s->tcp, 1) < 0)
			return DNS_DROP;
		s->dns_off = p->l4_off + (s->tcp[0] >> 4) * WORD + 2;
		if (p->tcp_len < 2 + DNS_HDR_LEN || bpf_skb_load_bytes(skb, s->dns_off - 2, &s->fields[7], 2) < 0 ||
		    bpf_ntohs(s->fields[7]) != p->tcp_len - 2)
			return DNS_DROP;
	} else {
		s->dns_off = p->l4_off + UDP_HLEN;
	}
	if (s->dns_off + DNS_HDR_LEN >= p->l3_end || bpf_skb_load_bytes(skb, s->dns_off, s->hdr, DNS_HDR_LEN) < 0)
		return DNS_DROP;
	if (s->hdr[2] & (DNS_QR | DNS_OPCODE))
		return DNS_PASS; /* an answer, or no standard query: nothing is asked by name */
	/* one question (resolvers answer one; which, when there are several, is theirs to say), no answer or
	 * authority records, at most one additional (a query's EDNS record) */
	if (s->hdr[4] != 0 || s->hdr[5] != 1 || s->hdr[6] || s->hdr[7] || s->hdr[8] || s->hdr[9] || s->hdr[10] ||
	    s->hdr[11] > 1)
		return DNS_DROP;
	avail = (__u64)p->l3_end - (s->dns_off + DNS_HDR_LEN);
	if (avail > MOAT_DNS_NAME_LEN)
		avail = MOAT_DNS_NAME_LEN;
	if (avail < 1 || bpf_skb_load_bytes(skb, s->dns_off + DNS_HDR_LEN, s->raw, avail) < 0)
		return DNS_DROP;

	/* the labels, first to last; a pointer (or any other label type) in a question is not read */
	__builtin_memset(&s->walk, 0, sizeof(s->walk));
	s->walk.avail = avail;
	bpf_loop(MOAT_DNS_NAME_LEN / 2, dns_label, NULL, 0);
	if (s->walk.err || !s->walk.end)
		return DNS_DROP;
	/* the root label ends the name, then its type and class */
	if (s->walk.pos >= MOAT_DNS_NAME_LEN - 1 || s->dns_off + DNS_HDR_LEN + s->walk.pos + 1 + 4 > p->l3_end)
		return DNS_DROP;

	/* each suffix, its last label first: a lookup per label added */
	__builtin_memset(s->key.name, 0, sizeof(s->key.name));
	bpf_loop(MOAT_DNS_MAX_LABELS, dns_suffix, NULL, 0);
	if (s->walk.err)
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

#endif
