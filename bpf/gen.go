// Package bpf is Moat's datapath: the TC programs for pod veths, their maps, and typed access to both.
// Policy logic lives in internal/policy; this package only loads, pins, attaches and reads or writes maps.
package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-strip -type moat_endpoint -type moat_config -type moat_ipcache_key -type moat_ipcache_value -type moat_policy_key -type moat_policy_value -type moat_rule_ref -type moat_ct_key -type moat_ct_value -type moat_ct_count -type moat_frag_key -type moat_frag_value -type moat_counter -type moat_event -type moat_namespace_key -type moat_hostport_key -type moat_hostport_value -type moat_reason -type moat_class -type moat_direction -type moat_action -type moat_verdict -type moat_policy_kind -type moat_identity_flags -type moat_config_flags -type moat_ct_flags -type moat_stat -type moat_endpoint_mode moat moat.c -- -I./include
