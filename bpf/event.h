/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one layout shared by the BPF programs (pktpath.bpf.c) and their Python mirror
 * (agent/pktpath/core/event.py). tests/test_event_layout.py checks the mirror against the BTF of the
 * compiled object: change a field here and the test tells you what to change there.
 *
 * Fixed-width fields only, no implicit padding.
 */
#ifndef PKTPATH_EVENT_H
#define PKTPATH_EVENT_H

#include "vmlinux.h" /* __u8 ... __u64 */

#define PKTPATH_SNAPLEN 192   /* packet bytes copied per event, from the first header */
#define PKTPATH_IFNAMSIZ 16
#define PKTPATH_MAX_HOSTS 8   /* --host addresses compared inline, per family */
#define PKTPATH_STACK_DEPTH 12 /* kernel return addresses kept with a drop */
#define PKTPATH_EXPR_SNAP 256  /* bytes of a packet's view a tcpdump expression can read */
#define PKTPATH_EXPR_SLOTS 2048 /* eBPF instructions reserved for a translated expression */
#define PKTPATH_EXPR_MARK 0x7e7e7e7e /* imm of each reserved "r0 = imm" the loader replaces */

/* What a tcpdump expression, translated from classic BPF into eBPF at load time, reads: the
 * first bytes of the packet's view (an offloaded VLAN tag shown inside, as tcpdump shows it)
 * and classic BPF's scratch memory M[]. */
struct pktpath_expr_scratch {
	__u8 pkt[PKTPATH_EXPR_SNAP];
	__u32 mem[16];
};

/* Which tracepoint saw the packet. */
enum pktpath_hook {
	PKTPATH_HOOK_NET_DEV_QUEUE = 1,     /* net:net_dev_queue, transmit */
	PKTPATH_HOOK_NETIF_RECEIVE_SKB = 2, /* net:netif_receive_skb, receive */
	PKTPATH_HOOK_KFREE_SKB = 3,         /* skb:kfree_skb, the kernel dropped the packet */
	PKTPATH_HOOK_ICMP_SEND = 4,         /* icmp:icmp_send, the kernel answers it with an error */
	PKTPATH_HOOK_FIB_TABLE_LOOKUP = 5,  /* fib:fib_table_lookup, IPv4 routing decision */
	PKTPATH_HOOK_FIB6_TABLE_LOOKUP = 6, /* fib6:fib6_table_lookup, IPv6 routing decision */
	PKTPATH_HOOK_CONSUME_SKB = 7,       /* skb:consume_skb, freed after use: ends tracking */
	PKTPATH_HOOK_DROP_COUNT = 8,        /* skb:kfree_skb for the drop watch: counted, no event */
};

/* pktpath_event.flags */
enum pktpath_event_flag {
	PKTPATH_F_L2 = 1,   /* data[] starts with an Ethernet header, else with the L3 header */
	PKTPATH_F_VLAN = 2, /* the skb carries an offloaded VLAN tag in vlan_tci / vlan_proto */
	PKTPATH_F_FLOW = 4, /* data[] holds a struct pktpath_flow, not packet bytes */
	PKTPATH_F_FIRST = 8, /* the packet's first hop seen (its id may be a freed one's) */
};

/* pktpath_event.ct_nat */
enum pktpath_ct_nat {
	PKTPATH_CT_SNAT = 1,
	PKTPATH_CT_DNAT = 2,
};

/* What a routing lookup looked up (fib_table_lookup has a flow, not a packet); also the key
 * of a tracked connection's flows. */
struct pktpath_flow {
	__u8 saddr[16];                /* IPv4 in the first 4 bytes, network byte order */
	__u8 daddr[16];
	__u16 sport;                   /* network byte order */
	__u16 dport;
	__u8 proto;
	__u8 family;                   /* 4 or 6 */
	__u8 pad[2];
};

/* One packet seen at one hook on one interface (or freed by the kernel, for kfree_skb). */
struct pktpath_event {
	__u64 time_ns;                 /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u64 skb;                     /* address of the struct sk_buff */
	__u64 packet;                  /* the same on every hop of one packet (its first skb) */
	__u64 conn;                    /* the same on every packet of one tracked connection, 0 */
	__u64 traces;                  /* with trace_set: a bit per trace of the agent it is for */
	__u64 location;                /* kfree_skb: the address that freed it;
					  icmp_send: MTU of the route's device;
					  fib_table_lookup: the table id */
	__u64 stack[PKTPATH_STACK_DEPTH]; /* kfree_skb: kernel return addresses, 0-terminated */
	__u32 netns;                   /* inode of the device's network namespace, 0 without one */
	__u32 ifindex;
	__u32 len;                     /* bytes of the packet from data[0] on */
	__u32 cpu;
	__u32 reason;                  /* kfree_skb: enum skb_drop_reason of the running kernel;
					  icmp_send: ICMP type << 8 | code;
					  fib_table_lookup: the lookup's error (negative errno), 0;
					  fib6_table_lookup: the route type (RTN_*), 0 for no route */
	__u32 ct_mark;                 /* the packet's conntrack entry here: its mark */
	__u16 cap_len;                 /* bytes of data[] that are valid */
	__u16 protocol;                /* skb->protocol, an ethertype, network byte order */
	__u16 vlan_tci;
	__u16 vlan_proto;              /* network byte order */
	__u16 ct_zone;                 /* its zone */
	__u8 hook;                     /* enum pktpath_hook */
	__u8 flags;                    /* enum pktpath_event_flag */
	__u8 ct_state;                 /* its enum ip_conntrack_info + 1, 0: no entry */
	__u8 ct_nat;                   /* enum pktpath_ct_nat: what the entry translates */
	__u8 pad[2];
	__u8 nexthop[16];              /* kfree_skb NEIGH_FAILED: the neighbour that did not answer;
					  fib*_table_lookup: the gateway (IPv4 in the first 4 bytes);
					  zero otherwise */
	char ifname[PKTPATH_IFNAMSIZ];
	__u8 data[PKTPATH_SNAPLEN];
};

/* A tracked connection (map conn_flows, keyed by each of its flows both ways round, with
 * an ICMP echo's id as sport and dport 0). */
struct pktpath_conn {
	__u64 conn;                    /* its id: the address of the first translating entry */
	__u64 last_ns;                 /* when a packet of it was last seen */
	__u64 traces;                  /* with trace_set: the traces it is for */
};

/* The agent's traces' addresses, hashed (map trace_bloom): bit PKTPATH_ADDR_HASH(x) is set for
 * every address of trace_addrs, x the XOR of its four 32-bit words as the CPU loads them. */
#define PKTPATH_ADDR_BLOOM_WORDS 256
#define PKTPATH_ADDR_HASH(x) ((__u32)((x) * 0x9E3779B1U) >> 18) /* 14 bits */
struct pktpath_addr_bloom {
	__u64 bits[PKTPATH_ADDR_BLOOM_WORDS];
};

/* The filter, set in .rodata before the object is loaded. Zero means "any".
 * Ordered so that every array starts 8-byte aligned (the programs compare in 8-byte words). */
struct pktpath_config {
	__u8 host6[PKTPATH_MAX_HOSTS][16];
	__u32 host4[PKTPATH_MAX_HOSTS];        /* network byte order */
	char ifname[PKTPATH_IFNAMSIZ]; /* only this interface name (in any namespace) */
	__u32 netns;                   /* only this network namespace inode */
	__u16 port;                    /* TCP or UDP source or destination port, host order */
	__u8 proto;                    /* enum pktpath_proto */
	__u8 n_host4;                  /* entries of host4[] in use */
	__u8 n_host6;                  /* entries of host6[] in use */
	__u8 netns_set;                /* only namespaces whose inode is a key of map netns_set */
	__u8 track;                    /* follow a matched packet when it stops matching */
	__u8 trace_set;                /* only packets to or from an address of map trace_addrs
					  (the agent's traces, a bit each), tagged with theirs */
	__u16 cbpf_len_l2;             /* tcpdump expression: instructions of the Ethernet view */
	__u16 cbpf_len_l3;             /* and of the raw-IP view; 0: no expression */
	__u32 track_slots;             /* slots of each tracking table (a power of two, set by
					  the loader when it sizes them); 0: TRACK_SLOTS */
};

/* pktpath_config.proto */
enum pktpath_proto {
	PKTPATH_PROTO_ANY = 0,
	PKTPATH_PROTO_ICMP = 1,
	PKTPATH_PROTO_TCP = 6,
	PKTPATH_PROTO_UDP = 17,
	PKTPATH_PROTO_ICMP6 = 58,
	PKTPATH_PROTO_ARP = 254,       /* not an IP protocol: ethertype 0x0806 */
};

/* Indexes of the per-CPU counters map. */
enum pktpath_counter {
	PKTPATH_COUNTER_EMITTED = 0,   /* events written to the ring buffer */
	PKTPATH_COUNTER_LOST = 1,      /* wanted packets dropped because the ring buffer was full */
	PKTPATH_COUNTER_DROPS_OVERFLOW = 2, /* drops not counted: drop_counts had no room for a key */
	PKTPATH_COUNTER_MAX = 3,
};

/* The drop watch's per-CPU counts (map drop_counts): one per place and cause of drops. */
struct pktpath_drop_key {
	__u32 netns;    /* inode of the device's namespace, 0 when the skb had no device */
	__u32 ifindex;  /* the device the skb was on, 0 for none */
	__u32 reason;   /* enum skb_drop_reason, 0 on kernels without reasons (< 5.17) */
	__u32 pad;
	__u64 location; /* the kernel code address that freed it */
};

/* Per CPU, the place of this CPU's last drop and the drops there not yet added to drop_counts
 * (map drop_last): a storm of drops at one place costs no hash lookup per packet. */
struct pktpath_drop_slot {
	struct pktpath_drop_key key;
	__u64 count;
	__u64 dev; /* the device's address: a drop there again is known without its namespace */
};

#endif /* PKTPATH_EVENT_H */
