// SPDX-License-Identifier: GPL-2.0
/*
 * Following one packet: its skb and data buffer addresses remembered with a fingerprint
 * of its IP header, so that its later hops (through NAT, tunnels, clones) are known.
 */
#ifndef PKTPATH_TRACK_H
#define PKTPATH_TRACK_H

#include "common.h"
#include "filter.h"

/* Tracking: packets that matched, by skb address and by data buffer (clones share it), so a
 * packet is followed through NAT, tunnels and clones. An entry older than TRACK_NS is stale
 * (the address may belong to another packet by now); frees remove theirs. */
#define TRACK_NS 1000000000ULL
/* A packet seen again with the same skb and buffer within this is not written again. */
#define REFRESH_NS (TRACK_NS / 8)

struct tracked_packet {
	__u64 packet;
	__u64 last_ns;
	__u64 fingerprint; /* of its IP header; NAT keeps it, another packet does not */
	__u64 conn;        /* its tracked connection (conns.h), 0 for none */
	__u64 traces;      /* the agent's traces it is for (traces.h) */
	__u64 head;        /* the data buffer it was last seen with */
};

/* Two direct-mapped tables, one by skb address and one by data buffer: an address has one
 * slot (a multiplicative hash), a new entry takes it whoever held it. A lookup is a load and a
 * compare, with no helper call, lock or hashing of the kernel's: cheap enough for every
 * packet, tracked or not, and for every packet of a trace without a filter to be tracked. A
 * packet whose slot was taken in both tables (two addresses colliding in each) is followed
 * no further. TRACK_SLOTS is a power of two; the loader may make the tables smaller
 * (cfg.track_slots). */
#define TRACK_SLOTS 8192

struct track_slot {
	__u64 key; /* the skb or buffer address the entry is for, 0: empty */
	struct tracked_packet t;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRACK_SLOTS);
	__type(key, __u32);
	__type(value, struct track_slot);
} track_skb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRACK_SLOTS);
	__type(key, __u32);
	__type(value, struct track_slot);
} track_head SEC(".maps");

/* Set once something matched: until then no packet pays for a tracking lookup. */
__u32 tracking_started = 0;

static __always_inline struct track_slot *track_slot_of(void *table, __u64 key)
{
	__u32 i = ((key * 0x9E3779B97F4A7C15ULL) >> 40) &
		  ((cfg.track_slots ? cfg.track_slots : TRACK_SLOTS) - 1);

	return bpf_map_lookup_elem(table, &i);
}

/* The entry for key, copied to *t; false when the table has none. An entry is written with
 * its key cleared first and set last, and read between two loads of its key, so a copy taken
 * while another CPU rewrote the slot for another address is not used. */
static __always_inline bool track_get(void *table, __u64 key, struct tracked_packet *t)
{
	struct track_slot *s = track_slot_of(table, key);

	if (!s || *(volatile __u64 *)&s->key != key)
		return false;
	*t = s->t;
	asm volatile("" ::: "memory");
	return *(volatile __u64 *)&s->key == key;
}

static __always_inline void track_put(void *table, __u64 key, struct tracked_packet *t)
{
	struct track_slot *s = track_slot_of(table, key);

	if (!s)
		return;
	*(volatile __u64 *)&s->key = 0;
	asm volatile("" ::: "memory");
	s->t = *t;
	asm volatile("" ::: "memory");
	*(volatile __u64 *)&s->key = key;
}

/* A free: the entry for key, if the slot still holds it, is removed. */
static __always_inline void track_drop(void *table, __u64 key)
{
	struct track_slot *s = track_slot_of(table, key);

	if (s && s->key == key)
		s->key = 0;
}

/* The skb's address and its data buffer's, as numbers (a pointer cannot be hashed). */
static __always_inline __u64 skb_key(struct sk_buff *skb, bool btf)
{
	return ADDRESS(btf, btf ? bpf_rdonly_cast(skb, 0) : (void *)skb);
}

static __always_inline __u64 head_of(struct sk_buff *skb, bool btf)
{
	return ADDRESS(btf, READ(btf, skb, head));
}

/* What identifies one IP packet along its way: IPv4 total length, ID, fragment bits and
 * protocol; IPv6 version, class, flow label, payload length and next header. NAT does not
 * change them (TTL and checksums are left out); a new packet at a reused address does.
 * With inner, of the packet inside the VXLAN one at l3 (0 when that is not VXLAN). */
static __always_inline __u64 fingerprint_of(unsigned char *l3, __u16 ethertype, __u32 inner,
					    bool btf)
{
	struct {
		__u64 word;
		__u8 ttl, proto;
	} ip = {};

	if (inner) {
		struct ipv4_header outer;

		if (ethertype != ETH_P_IP || PKT_COPY(btf, &outer, l3))
			return 0;
		l3 = vxlan_inner(&outer, l3, &ethertype, btf);
		if (!l3)
			return 0;
	}
	if (ethertype != ETH_P_IP && ethertype != ETH_P_IPV6)
		return 0;
	if (PKT_COPY(btf, &ip, l3))
		return 0;
	if (ethertype == ETH_P_IP) /* bytes 2..7, and the protocol (byte 9) */
		return (ip.word & 0xFFFFFFFFFFFF0000ULL) | ip.proto;
	return ip.word & 0x00FFFFFFFFFFFFFFULL; /* bytes 0..6: without the hop limit */
}
PACKET_FUNCTION(fingerprint_at, fingerprint_of)

static __always_inline void track_packet(__u64 skb, __u64 head, __u64 packet,
					 __u64 fingerprint, __u64 conn, __u64 traces, __u64 now)
{
	struct tracked_packet t = { .packet = packet, .last_ns = now,
				    .fingerprint = fingerprint, .conn = conn, .traces = traces,
				    .head = head };

	track_put(&track_skb, skb, &t);
	track_put(&track_head, head, &t);
	if (!tracking_started)
		tracking_started = 1;
}

/* The packet this skb (or its data buffer) belongs to, if it is being tracked; 0 if not (and
 * its connection in *conn, its traces in *traces). An entry counts only while it is fresh and
 * the packet's IP header (or the one inside its VXLAN encapsulation) still has the tracked
 * fingerprint (a packet that is not IP has none to check). A free ends its tracking. key and
 * head: skb_key() and head_of() of its skb. Asked only once tracking_started. */
static __always_inline __u64 packet_of(__u64 key, __u64 head, __u8 hook, struct headers *h,
				       __u64 *conn, __u64 *traces, __u64 *clock, bool btf)
{
	__u64 now, fingerprint;
	struct tracked_packet t;
	bool by_skb = true;

	if (!track_get(&track_skb, key, &t)) {
		if (!track_get(&track_head, head, &t))
			return 0;
		by_skb = false;
	}
	now = *clock = coarse_ns();
	if ((__s64)(now - t.last_ns) > (__s64)TRACK_NS)
		return 0;
	fingerprint = t.fingerprint;
	if (fingerprint && fingerprint_at(h->l3, h->ethertype, 0, btf) != fingerprint &&
	    fingerprint_at(h->l3, h->ethertype, 1, btf) != fingerprint)
		return 0;
	*conn = t.conn;
	*traces = t.traces;
	if (hook == PKTPATH_HOOK_KFREE_SKB) {
		track_drop(&track_skb, key);
		track_drop(&track_head, head);
	} else if (!by_skb || t.head != head || (__s64)(now - t.last_ns) > (__s64)REFRESH_NS) {
		/* a clone joined, its buffer moved, or its entries are ageing (a packet on its way
		 * for longer than TRACK_NS, waiting for a neighbour, keeps them): write them */
		track_packet(key, head, t.packet, fingerprint, t.conn, t.traces, now);
	}
	return t.packet;
}

/* consume_skb: a packet freed after use, whose skb and buffer addresses may now belong to
 * another packet, is tracked no more. */
static __always_inline int untrack(struct sk_buff *skb, bool btf)
{
	if (!cfg.track || !tracking_started)
		return 0;
	track_drop(&track_skb, skb_key(skb, btf));
	track_drop(&track_head, head_of(skb, btf));
	return 0;
}

#endif /* PKTPATH_TRACK_H */
