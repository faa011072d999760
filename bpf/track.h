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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tracked_packet);
} tracked SEC(".maps");

/* Set once something matched: until then no packet pays for a tracking lookup. */
__u32 tracking_started = 0;

/* A bit per tracked packet, so that a packet that is not tracked pays no lookup in tracked,
 * however often its skb and buffer addresses were a tracked packet's (the kernel reuses them
 * at once: a flood's packets share a few). Its key is bytes 2..6 of the header at l3, which do
 * not change along the way (IPv4 total length, ID and first fragment byte; IPv6 flow label's
 * low bits, payload length and next header; ARP's protocol, sizes and operation), read
 * without knowing which it is: a branch on the ethertype would make one more state for the
 * verifier to walk the rest of a program with. Two tables, one per generation of 2^30 ns
 * (> TRACK_NS: an entry's bit is in the current generation's table or the one before); each
 * word's top byte is the generation its bits are from, so a word from an older one counts as
 * empty and is started again, and no table is ever cleared. Written without atomics (5.10
 * has no atomic or): two CPUs tracking at the same instant may lose one's bit, and that
 * packet is then followed no further. */
#define TRACK_BLOOM_WORDS 2048
#define TRACK_BLOOM_BITS 56 /* per word, below its generation byte */
#define TRACK_GEN_SHIFT 30
__u64 track_bloom[2][TRACK_BLOOM_WORDS];
__u64 track_gen = 0; /* the newest generation a bit was set in */

struct bloom_slot {
	__u32 word;
	__u64 bit;
};

/* header: the first 8 bytes of one */
static __always_inline struct bloom_slot bloom_slot(__u64 header)
{
	__u64 h = ((header >> 16) & 0xFFFFFFFFFFULL) * 0x9E3779B97F4A7C15ULL;
	struct bloom_slot s = { .word = (h >> 40) & (TRACK_BLOOM_WORDS - 1),
				.bit = 1ULL << ((h >> 20) % TRACK_BLOOM_BITS) };

	return s;
}

static __always_inline bool bloom_has(__u64 *table, __u64 gen, struct bloom_slot s)
{
	__u64 word = table[s.word & (TRACK_BLOOM_WORDS - 1)];

	return (word >> TRACK_BLOOM_BITS) == (gen & 0xFF) && (word & s.bit);
}

static __always_inline bool bloom_any(__u64 header, __u64 gen)
{
	struct bloom_slot s = bloom_slot(header);

	return bloom_has(track_bloom[gen & 1], gen, s) ||
	       bloom_has(track_bloom[(gen - 1) & 1], gen - 1, s);
}

/* False when the packet at l3 is certainly not tracked: neither its header's bit is set nor
 * that of the header where a VXLAN packet's inner one would be (not knowing if it is one). */
static __always_inline bool maybe_tracked(unsigned char *l3, bool btf)
{
	__u64 header = 0, inner = 0, gen = track_gen;

	(void)PKT_COPY(btf, &header, l3);
	(void)PKT_COPY(btf, &inner, l3 + (header & 0xF) * 4 + VXLAN_INNER);
	return bloom_any(header, gen) || bloom_any(inner, gen);
}

/* Set the bit of the packet at l3. */
static __always_inline void bloom_set(unsigned char *l3, __u64 gen, bool btf)
{
	__u64 header = 0, *word, tag = (gen & 0xFF) << TRACK_BLOOM_BITS, old;
	struct bloom_slot s;

	(void)PKT_COPY(btf, &header, l3);
	s = bloom_slot(header);
	word = &track_bloom[gen & 1][s.word & (TRACK_BLOOM_WORDS - 1)];
	old = *word;
	*word = ((old >> TRACK_BLOOM_BITS) << TRACK_BLOOM_BITS == tag ? old : tag) | s.bit;
	if (gen > track_gen)
		track_gen = gen;
}

static __always_inline __u64 head_of(struct sk_buff *skb, bool btf)
{
	return (__u64)READ(btf, skb, head);
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

static __always_inline void track_packet(struct sk_buff *skb, __u64 head, __u64 packet,
					 __u64 fingerprint, __u64 conn, __u64 traces,
					 unsigned char *l3, bool btf)
{
	struct tracked_packet t = { .packet = packet, .last_ns = bpf_ktime_get_ns(),
				    .fingerprint = fingerprint, .conn = conn, .traces = traces,
				    .head = head };
	__u64 key = (__u64)skb;

	bpf_map_update_elem(&tracked, &key, &t, BPF_ANY);
	bpf_map_update_elem(&tracked, &head, &t, BPF_ANY);
	bloom_set(l3, t.last_ns >> TRACK_GEN_SHIFT, btf);
	if (!tracking_started)
		tracking_started = 1;
}

/* The packet this skb (or its data buffer) belongs to, if it is being tracked; 0 if not (and
 * its connection in *conn, its traces in *traces). An entry counts only while it is fresh and
 * the packet's IP header (or the one inside its VXLAN encapsulation) still has the tracked
 * fingerprint (a fingerprint whose bit is clear, none). A free ends the tracking of its skb. */
static __always_inline __u64 packet_of(struct sk_buff *skb, __u64 head, __u8 hook,
				       struct headers *h, __u64 *conn, __u64 *traces, bool btf)
{
	__u64 key = (__u64)skb, now, packet, fingerprint;
	struct tracked_packet *t;
	bool by_skb = true;

	if (!tracking_started)
		return 0;
	if (!maybe_tracked(h->l3, btf))
		return 0;
	t = bpf_map_lookup_elem(&tracked, &key);
	if (!t) {
		t = bpf_map_lookup_elem(&tracked, &head);
		by_skb = false;
	}
	if (!t)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - t->last_ns > TRACK_NS)
		return 0;
	fingerprint = t->fingerprint;
	if (fingerprint && fingerprint_at(h->l3, h->ethertype, 0, btf) != fingerprint &&
	    fingerprint_at(h->l3, h->ethertype, 1, btf) != fingerprint)
		return 0;
	packet = t->packet;
	*conn = t->conn;
	*traces = t->traces;
	if (hook == PKTPATH_HOOK_KFREE_SKB) {
		bpf_map_delete_elem(&tracked, &key);
		bpf_map_delete_elem(&tracked, &head);
	} else if (!by_skb || t->head != head || now - t->last_ns > REFRESH_NS) {
		/* a clone joined, its buffer moved, or its entries are ageing: write them */
		track_packet(skb, head, packet, fingerprint, *conn, *traces, h->l3, btf);
	}
	return packet;
}

#endif /* PKTPATH_TRACK_H */
