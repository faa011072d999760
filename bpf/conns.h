// SPDX-License-Identifier: GPL-2.0
/*
 * Following a connection through NAT: when a traced packet carries a conntrack entry that
 * translates (DNAT, SNAT, MASQUERADE), the entry's original and reply tuples, both ways
 * round, become keys of conn_flows. A later packet whose own addresses and ports are one of
 * them belongs to the connection (its replies, its next packets, before and after the
 * translation, in any namespace, inside VXLAN too) and is traced with the connection's id.
 * A packet of no tracked connection pays two bit tests of its addresses (conn_addrs), seldom
 * a hash of its flow and a third (conn_bloom), and nothing until a connection is tracked.
 */
#ifndef PKTPATH_CONNS_H
#define PKTPATH_CONNS_H

#include "common.h"
#include "filter.h"

/* A connection not seen for this long is over (its tuples may be reused). */
#define CONN_IDLE_NS 10000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pktpath_flow);
	__type(value, struct pktpath_conn);
} conn_flows SEC(".maps");

/* Set once a connection is tracked: until then no packet pays for a lookup. */
__u32 conns_started = 0;

/* A bit per hash of every tracked flow (never cleared: a stale bit costs a lookup, no more).
 * A packet whose bit is clear belongs to no tracked connection: no map lookup. Bits are set
 * without atomics (5.10 has no atomic or): two connections tracked at the same instant on two
 * CPUs may lose one's bit, which then is not followed. */
#define CONN_BLOOM_WORDS 1024
__u64 conn_bloom[CONN_BLOOM_WORDS];

/* A bit per tracked flow's addresses as its packets carry them at bytes 12..19 of their IP
 * header (IPv4 source and destination; IPv6 bytes 4..11 of the source), tested inline before
 * the call that reads and hashes a packet's flow (conn_at): once a connection is tracked,
 * that call was most of what every other packet paid. Read without knowing the ethertype, as
 * track.h's bits are. Never cleared, like conn_bloom. */
#define CONN_ADDR_WORDS 256
__u64 conn_addrs[CONN_ADDR_WORDS];

/* The word of conn_addrs that holds addrs' bit, and the bit in *bit. */
static __always_inline __u64 *addrs_word(__u64 addrs, __u64 *bit)
{
	__u32 n = (addrs * 0x9E3779B97F4A7C15ULL) >> 50; /* 14 bits: CONN_ADDR_WORDS * 64 */

	*bit = 1ULL << (n % 64);
	return &conn_addrs[(n / 64) & (CONN_ADDR_WORDS - 1)];
}

static __always_inline bool addrs_set(__u64 addrs)
{
	__u64 bit;

	return *addrs_word(addrs, &bit) & bit;
}

/* False when the packet at l3 certainly belongs to no tracked connection: neither its
 * addresses' bit is set, nor those where a VXLAN packet's inner header would be. Its first
 * 20 bytes in one read (one helper call under raw_tp, not two). */
static __always_inline bool maybe_conn(unsigned char *l3, bool btf)
{
	struct {
		__u32 word[5];
	} ip = {};
	__u64 inner = 0;

	(void)PKT_COPY(btf, &ip, l3);
	(void)PKT_COPY(btf, &inner, l3 + (ip.word[0] & 0xF) * 4 + VXLAN_INNER + 12);
	return addrs_set(ip.word[3] | (__u64)ip.word[4] << 32) || addrs_set(inner);
}

static __always_inline __u32 flow_hash(struct pktpath_flow *f)
{
	__u64 *w = (__u64 *)f;
	__u64 x = w[0] ^ (w[1] << 1) ^ (w[2] << 2) ^ (w[3] << 3) ^ (w[4] << 4);

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 29;
	return (__u32)x & (CONN_BLOOM_WORDS * 64 - 1);
}

/* What the kernel's conntrack says of the packet at this hop (event fields). */
struct ct_note {
	__u64 conn;  /* the connection's id, 0 for none */
	__u32 mark;
	__u16 zone;
	__u8 state;  /* IP_CT_* + 1, 0 without an entry */
	__u8 nat;    /* PKTPATH_CT_SNAT | PKTPATH_CT_DNAT */
};

/* An echo's identifier stands for the ports (conntrack's ICMP tuple: the id, no ports). */
static __always_inline bool flow_l4(struct pktpath_flow *f, unsigned char *l4, bool btf)
{
	struct {
		__u8 type, code;
		__u16 check, id;
	} icmp;
	struct {
		__u16 sport, dport;
	} ports;

	if (f->proto == 6 || f->proto == 17) {
		if (PKT_COPY(btf, &ports, l4))
			return false;
		f->sport = ports.sport;
		f->dport = ports.dport;
		return true;
	}
	if (f->proto != 1 && f->proto != 58)
		return false;
	if (PKT_COPY(btf, &icmp, l4))
		return false;
	if (!(icmp.type == 8 || icmp.type == 0 || icmp.type == 128 || icmp.type == 129))
		return false;
	f->sport = icmp.id;
	return true;
}

/* The flow of the IP packet at l3 (IPv6 without extension headers), false for another. */
static __always_inline bool flow_at(struct pktpath_flow *f, unsigned char *l3, __u16 ethertype,
				    bool btf)
{
	if (ethertype == ETH_P_IP) {
		struct ipv4_header ip;

		if (PKT_COPY(btf, &ip, l3) || (ip.frag_off & bpf_htons(IP_OFFSET)) ||
		    (ip.ver_ihl & 0xF) < 5)
			return false;
		f->family = 4;
		f->proto = ip.protocol;
		*(__u32 *)f->saddr = ip.saddr;
		*(__u32 *)f->daddr = ip.daddr;
		return flow_l4(f, l3 + (ip.ver_ihl & 0xF) * 4, btf);
	}
	if (ethertype == ETH_P_IPV6) {
		struct ipv6_header ip6;

		if (PKT_COPY(btf, &ip6, l3))
			return false;
		f->family = 6;
		f->proto = ip6.nexthdr;
		__builtin_memcpy(f->saddr, ip6.saddr, 16);
		__builtin_memcpy(f->daddr, ip6.daddr, 16);
		return flow_l4(f, l3 + sizeof(ip6), btf);
	}
	return false;
}

/* The packet's flow, or that of the packet inside it when it is VXLAN. */
static __always_inline bool packet_flow(struct pktpath_flow *f, struct headers *h, bool btf)
{
	struct ipv4_header ip;
	unsigned char *inner;
	__u16 ethertype;

	if (h->ethertype == ETH_P_IP && !PKT_COPY(btf, &ip, h->l3)) {
		inner = vxlan_inner(&ip, h->l3, &ethertype, btf);
		if (inner) {
			__builtin_memset(f, 0, sizeof(*f));
			return flow_at(f, inner, ethertype, btf);
		}
	}
	return flow_at(f, h->l3, h->ethertype, btf);
}

/* The connection of the packet at l3, 0 if none; with want_traces, its traces instead. */
static __always_inline __u64 conn_lookup(unsigned char *l3, __u16 ethertype, __u32 want_traces,
					 bool btf)
{
	struct headers h = { .l3 = l3, .ethertype = ethertype };
	struct pktpath_flow f = {};
	struct pktpath_conn *c;
	__u64 now;
	__u32 bit;

	if (!packet_flow(&f, &h, btf))
		return 0;
	bit = flow_hash(&f);
	if (!(conn_bloom[bit / 64] & (1ULL << (bit % 64))))
		return 0;
	c = bpf_map_lookup_elem(&conn_flows, &f);
	if (!c)
		return 0;
	now = coarse_ns();
	if ((__s64)(now - c->last_ns) > (__s64)CONN_IDLE_NS) { /* signed: see coarse_ns() */
		bpf_map_delete_elem(&conn_flows, &f);
		return 0;
	}
	c->last_ns = now;
	return want_traces ? c->traces : c->conn;
}
PACKET_FUNCTION(conn_at, conn_lookup)

/* The connection this packet belongs to, 0 if none, and its traces in *traces when the agent
 * traces (a second lookup, for packets of tracked connections only). */
static __always_inline __u64 conn_of(struct headers *h, __u64 *traces, bool btf)
{
	__u64 conn;

	if (!conns_started || !maybe_conn(h->l3, btf))
		return 0;
	conn = conn_at(h->l3, h->ethertype, 0, btf);
	if (conn && cfg.trace_set)
		*traces = conn_at(h->l3, h->ethertype, 1, btf);
	return conn;
}

static __always_inline void bloom_add(struct pktpath_flow *f)
{
	__u32 n = flow_hash(f);
	__u64 addrs, bit;

	conn_bloom[n / 64] |= 1ULL << (n % 64);
	if (f->family == 4)
		addrs = *(__u32 *)f->saddr | (__u64)*(__u32 *)f->daddr << 32;
	else /* bytes 12..19 of its header */
		__builtin_memcpy(&addrs, f->saddr + 4, sizeof(addrs));
	*addrs_word(addrs, &bit) |= bit;
}

/* A conntrack tuple as a flow, and the flow the other way round. */
static __always_inline void tuple_flows(struct nf_conntrack_tuple *t, struct pktpath_flow *f,
					struct pktpath_flow *back)
{
	bool echo = t->dst.protonum == 1 || t->dst.protonum == 58;

	__builtin_memset(f, 0, sizeof(*f));
	f->family = t->src.l3num == AF_INET ? 4 : 6;
	f->proto = t->dst.protonum;
	if (f->family == 4) {
		*(__u32 *)f->saddr = t->src.u3.all[0];
		*(__u32 *)f->daddr = t->dst.u3.all[0];
	} else {
		__builtin_memcpy(f->saddr, t->src.u3.all, 16);
		__builtin_memcpy(f->daddr, t->dst.u3.all, 16);
	}
	f->sport = t->src.u.all;
	f->dport = echo ? 0 : t->dst.u.all;
	*back = *f;
	__builtin_memcpy(back->saddr, f->daddr, 16);
	__builtin_memcpy(back->daddr, f->saddr, 16);
	if (!echo) {
		back->sport = f->dport;
		back->dport = f->sport;
	}
}

/* The entry's tuples (dir 0 original, 1 reply), both ways round, as keys of the connection;
 * false when its original tuple already was one (nothing else written then). */
static __always_inline bool conn_add_dir(struct nf_conn *ct, int dir, __u64 conn,
					 __u64 traces, __u64 now)
{
	struct pktpath_conn value = { .conn = conn, .last_ns = now, .traces = traces };
	struct nf_conntrack_tuple t;
	struct pktpath_flow f, back;
	struct pktpath_conn *known;

	if (bpf_core_read(&t, sizeof(t), &ct->tuplehash[dir].tuple))
		return false;
	tuple_flows(&t, &f, &back);
	if (dir == 0) {
		known = bpf_map_lookup_elem(&conn_flows, &f);
		if (known && known->conn == conn && (known->traces & traces) == traces) {
			known->last_ns = now;
			return false;
		}
		if (known && known->conn == conn)
			value.traces |= known->traces;
	}
	bpf_map_update_elem(&conn_flows, &f, &value, BPF_ANY);
	bpf_map_update_elem(&conn_flows, &back, &value, BPF_ANY);
	bloom_add(&f);
	bloom_add(&back);
	return true;
}

/* conn_add_dir as a global function: checked once, not once for each direction. Called from
 * the hook's program itself: a chain of calls shares 512 bytes of stack (5.10 to 6.1 count
 * every frame of it). */
__noinline int conn_add(__u64 entry, __u32 dir, __u64 conn, __u64 traces, __u64 now)
{
	return conn_add_dir((struct nf_conn *)entry, dir, conn, traces, now);
}

/* Track the connection of a conntrack entry that translates. */
static __always_inline void conn_track(__u64 entry, __u64 conn, __u64 traces)
{
	__u64 now = coarse_ns();

	if (conn_add(entry, 0, conn, traces, now))
		conn_add(entry, 1, conn, traces, now);
	if (!conns_started)
		conns_started = 1;
}

/* What conntrack says of the entry nfct (skb->_nfct, not without one) points to, in one
 * number: its mark (bits 32-63), zone (16-31), state (IP_CT_* + 1, 8-15) and NAT (0-7). A
 * global function. */
__noinline __u64 ct_read(__u64 nfct)
{
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~7UL);
	__u64 mark = 0, zone = 0, nat;
	unsigned long status;

	status = BPF_CORE_READ(ct, status);
	nat = (status & IPS_SRC_NAT ? PKTPATH_CT_SNAT : 0) |
	      (status & IPS_DST_NAT ? PKTPATH_CT_DNAT : 0);
	if (bpf_core_field_exists(ct->mark))
		mark = BPF_CORE_READ(ct, mark);
	if (bpf_core_field_exists(ct->zone))
		zone = BPF_CORE_READ(ct, zone.id);
	return mark << 32 | (zone & 0xFFFF) << 16 | ((nfct & 7) + 1) << 8 | nat;
}

/* What conntrack says of this hop; an entry that translates makes its connection tracked,
 * under the packet's connection id if it has one, else a new one (the entry's address). */
static __always_inline void ct_note(struct sk_buff *skb, struct ct_note *note, __u64 traces,
				    bool btf)
{
	unsigned long nfct;
	__u64 entry, read;

	if (!bpf_core_field_exists(skb->_nfct))
		return;
	nfct = READ(btf, skb, _nfct);
	entry = nfct & ~7UL;
	if (!entry)
		return;
	read = ct_read(nfct);
	note->mark = read >> 32;
	note->zone = read >> 16;
	note->state = read >> 8;
	note->nat = read;
	if (!note->nat)
		return;
	if (!note->conn)
		note->conn = entry;
	conn_track(entry, note->conn, traces);
}

#endif /* PKTPATH_CONNS_H */
