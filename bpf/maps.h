/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The maps, pinned by name under the pin root. Keys and values are the structs of moat.h; docs/datapath.md says
 * who writes and who reads each one.
 */
#ifndef __MOAT_MAPS_H
#define __MOAT_MAPS_H

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
	__uint(max_entries, MOAT_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct moat_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} local_endpoints SEC(".maps");

/* namespace name -> identity (__u32); the datapath never reads it, the plugin does at ADD */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOAT_MAX_IDENTITIES);
	__type(key, struct moat_namespace_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} identities SEC(".maps");

/* (family, remote prefix) -> struct moat_ipcache_value: class and identity of a remote address */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MOAT_IPCACHE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct moat_ipcache_key);
	__type(value, struct moat_ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* identity (__u32) -> that identity's policy trie (port classes, CIDR and peer entries; layouts in moat.h),
 * swapped whole on every change */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MOAT_MAX_IDENTITIES);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__uint(max_entries, MOAT_MAX_POLICY_ENTRIES);
		__uint(map_flags, BPF_F_NO_PREALLOC);
		__type(key, struct moat_policy_key);
		__type(value, struct moat_policy_value);
	});
} policy SEC(".maps");

/* struct moat_ct_key -> struct moat_ct_value; LRU, so a full table evicts rather than refuses */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MOAT_CONNTRACK_ENTRIES);
	__type(key, struct moat_ct_key);
	__type(value, struct moat_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* endpoint host veth ifindex -> struct moat_ct_count: its conntrack entries, against config.ct_max_per_endpoint */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOAT_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct moat_ct_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_counts SEC(".maps");

/* struct moat_hostport_key -> struct moat_hostport_value: the pod behind a hostPort on a node address */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOAT_HOSTPORT_ENTRIES);
	__type(key, struct moat_hostport_key);
	__type(value, struct moat_hostport_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hostports SEC(".maps");

/* identity (__u32) -> its set of names it may not resolve (__u32; 0 = none), in dns_names */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MOAT_MAX_IDENTITIES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_sets SEC(".maps");

/* struct moat_dns_key (set, reversed base name) -> struct moat_dns_value: the rules that deny its forms */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOAT_DNS_NAME_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct moat_dns_key);
	__type(value, struct moat_dns_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_names SEC(".maps");

/* identity (__u32) -> its set of fqdn patterns (__u32; 0 = none: its DNS answers are not read), in fqdn_names */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MOAT_MAX_IDENTITIES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdn_sets SEC(".maps");

/* struct moat_dns_key (set, reversed base name) -> struct moat_fqdn_value: per form, the slots it is the pattern of */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOAT_DNS_NAME_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct moat_dns_key);
	__type(value, struct moat_fqdn_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdn_names SEC(".maps");

/* struct moat_resolver_key -> __u8 (1): the resolvers whose answers are learned from and that pods of identities
 * with fqdn peers may ask */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MOAT_DNS_RESOLVERS);
	__type(key, struct moat_resolver_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_resolvers SEC(".maps");

/* struct moat_fqdn_key (identity, address) -> struct moat_fqdn_learned: what an identity learned from answers */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MOAT_FQDN_LEARNED_ENTRIES);
	__type(key, struct moat_fqdn_key);
	__type(value, struct moat_fqdn_learned);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdn_learned SEC(".maps");

/* identity (__u32) -> __u64: its entries in fqdn_learned as the datapath counted them (new keys; the agent
 * recounts), against dns_timing.max_per_identity */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MOAT_MAX_IDENTITIES);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fqdn_counts SEC(".maps");

/* key 0 -> struct moat_dns_timing: min TTL, grace, the per-identity bound */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct moat_dns_timing);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_timing SEC(".maps");

/* struct moat_dns_fallback records: answers the datapath hands to the agent */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MOAT_DNS_FALLBACK_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_fallback SEC(".maps");

/* struct moat_dns_query_key -> __u64 (bpf_ktime_get_ns): when a pod sent a DNS query, until its answer comes */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MOAT_DNS_QUERY_ENTRIES);
	__type(key, struct moat_dns_query_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_queries SEC(".maps");

/* struct moat_dns_stat_key -> __u64, per CPU: DNS counters per identity */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MOAT_DNS_STAT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct moat_dns_stat_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_stats SEC(".maps");

/* struct moat_dns_event records: the DNS answers pods get */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MOAT_DNS_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_events SEC(".maps");

/* per CPU, one element: the second the answer_events budget counts (ktime ns >> 30) and the events it spent */
struct dns_budget {
	__u64 second;
	__u64 spent;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_budget);
} dns_budget SEC(".maps");

/* struct moat_frag_key -> struct moat_frag_value: first fragment verdicts */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MOAT_FRAGMENT_ENTRIES);
	__type(key, struct moat_frag_key);
	__type(value, struct moat_frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

/* struct moat_event records for the enforcer's flow log */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MOAT_EVENTS_BYTES);
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
const struct moat_dns_fallback *const unused_dns_fallback __attribute__((unused)) = 0;
const struct moat_dns_event *const unused_dns_event __attribute__((unused)) = 0;
const struct {
	enum moat_direction direction;
	enum moat_class class;
	enum moat_action action;
	enum moat_verdict verdict;
	enum moat_reason reason;
	enum moat_endpoint_mode mode;
	enum moat_config_flags config_flags;
	enum moat_policy_kind kind;
	enum moat_policy_bits bits;
	enum moat_identity_flags identity_flags;
	enum moat_ct_flags ct_flags;
	enum moat_stat stat;
	enum moat_limits limits;
	enum moat_rule_order order;
	enum moat_remote_identity remote_identity;
	enum moat_marks marks;
	enum moat_dns_stat_kind dns_stat_kind;
	enum moat_dns_event_flags dns_event_flags;
	struct moat_policy_port port;
	struct moat_policy_cidr cidr;
	struct moat_policy_peer peer;
} *const unused_enums __attribute__((unused)) = 0;

#endif
