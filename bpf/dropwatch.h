// SPDX-License-Identifier: GPL-2.0
/* The drop watch: every real drop counted in a per-CPU map by (namespace, device, reason,
 * location), with no ring-buffer record and no work in user space per packet.
 *
 * Frees that are part of delivery are not counted (pktpath/core/fate.py has the same rules):
 * QUEUE_PURGE (a socket's queue emptied) and NO_SOCKET of an ICMP echo reply (a ping's raw
 * socket got its copy). Kernels before 5.17 give no reason: every kfree_skb counts there.
 */
#ifndef PKTPATH_DROPWATCH_H
#define PKTPATH_DROPWATCH_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); /* the loader may resize it */
	__type(key, struct pktpath_drop_key);
	__type(value, __u64);
} drop_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pktpath_drop_slot);
} drop_last SEC(".maps");

#define ICMP_ECHOREPLY 0
#define ICMPV6_ECHO_REPLY 129

/* Whether the skb holds an ICMP (v4 or v6) echo reply, from its network header. */
static __always_inline bool echo_reply(struct sk_buff *skb, bool btf)
{
	unsigned char *l3 = READ(btf, skb, head) + READ(btf, skb, network_header);
	__u16 proto = bpf_ntohs(READ(btf, skb, protocol));
	__u8 b[2] = {};

	if (proto == ETH_P_IP) {
		PKT_COPY(btf, &b[0], l3);      /* version and header length */
		PKT_COPY(btf, &b[1], l3 + 9);  /* protocol */
		if (b[1] != 1)
			return false;
		PKT_COPY(btf, &b[1], l3 + (b[0] & 0xF) * 4);
		return b[1] == ICMP_ECHOREPLY;
	}
	if (proto == ETH_P_IPV6) {
		PKT_COPY(btf, &b[0], l3 + 6);  /* next header */
		PKT_COPY(btf, &b[1], l3 + 40);
		return b[0] == 58 && b[1] == ICMPV6_ECHO_REPLY;
	}
	return false;
}

/* The place's count in drop_counts (this CPU's), made when missing; NULL when the map is full. */
static __always_inline __u64 *place_count(struct pktpath_drop_key *key)
{
	__u64 *count = bpf_map_lookup_elem(&drop_counts, key), none = 0;
	long err;

	if (count)
		return count;
	err = bpf_map_update_elem(&drop_counts, key, &none, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: another CPU made the key first */)
		return NULL;
	return bpf_map_lookup_elem(&drop_counts, key);
}

static __always_inline int count_drop(struct sk_buff *skb, bool btf, __u64 location,
				      __u32 reason)
{
	struct pktpath_drop_key key = {.reason = reason, .location = location};
	struct pktpath_drop_slot *slot;
	struct net_device *dev;
	__u64 *n;
	__u32 zero = 0;

	/* each reason guarded by its existence: an older kernel's enum may lack it */
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE))
		return 0;
	if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET) &&
	    echo_reply(skb, btf))
		return 0;
	dev = READ(btf, skb, dev);
	slot = bpf_map_lookup_elem(&drop_last, &zero);
	if (!slot)
		return 0;
	if (dev)
		key.ifindex = READ(btf, dev, ifindex);
	if (slot->count && slot->dev == (__u64)dev && slot->key.ifindex == key.ifindex &&
	    slot->key.reason == reason && slot->key.location == location) {
		slot->count += 1; /* the same place as this CPU's last drop */
		return 0;
	}
	if (dev)
		key.netns = netns_of(dev, btf);
	/* another place: move the last one's drops into the map, where its key already is */
	if (slot->count) {
		n = place_count(&slot->key);
		if (n)
			*n += slot->count;
	}
	/* only a place the map has room for is cached: user space sees every place in the map */
	if (!place_count(&key)) {
		slot->count = 0;
		count(PKTPATH_COUNTER_DROPS_OVERFLOW);
		return 0;
	}
	slot->key = key;
	slot->dev = (__u64)dev;
	slot->count = 1;
	return 0;
}

#endif /* PKTPATH_DROPWATCH_H */
