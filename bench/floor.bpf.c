// SPDX-License-Identifier: GPL-2.0
/*
 * The floor of bench/suite.py: a tp_btf program that returns at once on each tracepoint
 * pktpath's (a) attaches to. What the flood loses with these is what any program there
 * costs it (the kernel calling it); what pktpath loses beyond is its own work.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/net_dev_queue")
int BPF_PROG(floor_net_dev_queue, struct sk_buff *skb) { return 0; }

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(floor_netif_receive_skb, struct sk_buff *skb) { return 0; }

SEC("tp_btf/kfree_skb")
int BPF_PROG(floor_kfree_skb, struct sk_buff *skb) { return 0; }

SEC("tp_btf/consume_skb")
int BPF_PROG(floor_consume_skb, struct sk_buff *skb) { return 0; }
