// SPDX-License-Identifier: GPL-2.0
/*
 * tcpdump expressions: libpcap compiles them into classic BPF (one program per view: Ethernet
 * frames and bare IP packets), the loader translates both into eBPF and writes them into the
 * region reserved here, in every program, before the object is loaded. The verifier then
 * checks straight-line code once: no loop helper (which 5.10 lacks), no interpreter to
 * explore (which hit 6.12's complexity limit).
 *
 * The region's contract (the loader's translator keeps it, agent/pktpath/core/expression.py):
 * on entry r1 points to a struct pktpath_expr_scratch holding the view's first bytes, r2 is
 * the view's length and r3 the view (0 Ethernet, 1 raw IP); on exit r0 is the verdict
 * (non-zero: wanted); r0-r5 may change. Loads past the length reject the packet, as the
 * kernel's own classic BPF does; so do loads past PKTPATH_EXPR_SNAP bytes.
 */
#ifndef PKTPATH_EXPRESSION_H
#define PKTPATH_EXPRESSION_H

#include "common.h"

#define EXPR_STR2(x) #x
#define EXPR_STR(x) EXPR_STR2(x)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pktpath_expr_scratch);
} expr_scratch SEC(".maps");

/* The last expression verdict on this CPU: a packet usually reaches its next hook (veth
 * receive after transmit, its free after its receive) with the same skb and headers. */
struct expr_verdict {
	__u64 skb;
	__u64 key[3]; /* 24 header bytes from L3 + 8: addresses, and IPv4 ports */
	__u64 shape;  /* L2-to-L3 offset (VLAN tags in the frame) and the offloaded tag */
	__u32 view;
	__u32 verdict;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct expr_verdict);
} expr_cache SEC(".maps");

/* The reserved region: PKTPATH_EXPR_SLOTS marker instructions, replaced by the loader. The
 * inputs go through r6-r9 (r0-r5 are clobbered), so moving them into r1-r3 is safe. */
static __always_inline __u32 expression_run(struct pktpath_expr_scratch *s, __u64 len,
					    __u64 view)
{
	__u64 verdict;

	asm volatile("r1 = %[s]\n\t"
		     "r2 = %[len]\n\t"
		     "r3 = %[view]\n\t"
		     ".rept " EXPR_STR(PKTPATH_EXPR_SLOTS) "\n\t"
		     "r0 = " EXPR_STR(PKTPATH_EXPR_MARK) "\n\t"
		     ".endr\n\t"
		     "%[verdict] = r0\n\t"
		     : [verdict] "=r"(verdict)
		     : [s] "r"(s), [len] "r"(len), [view] "r"(view)
		     : "r0", "r1", "r2", "r3", "r4", "r5", "memory");
	return verdict;
}

/* Copy the view's first bytes into the scratch, an offloaded VLAN tag (proto << 16 | tci)
 * inserted at offset 12 when tagged; false when the packet cannot be read. */
static __always_inline bool expression_view(struct pktpath_expr_scratch *s, unsigned char *pkt,
					    __u32 len, bool tagged, __u32 tag)
{
	__u64 n;

	if (!tagged) {
		n = len;
		AT_MOST(n, 256); /* PKTPATH_EXPR_SNAP */
		return !bpf_probe_read_kernel(s->pkt, n, pkt);
	}
	if (len < 16)
		return false;
	if (bpf_probe_read_kernel(s->pkt, 12, pkt))
		return false;
	*(__u32 *)&s->pkt[12] = bpf_htonl(tag);
	n = len - 16;
	AT_MOST(n, 240); /* PKTPATH_EXPR_SNAP - 16 */
	return !bpf_probe_read_kernel(s->pkt + 16, n, pkt + 12);
}

/* Does the tcpdump expression accept the packet whose headers h located? */
static __always_inline bool expression_wanted(struct sk_buff *skb, struct headers *h, bool btf)
{
	unsigned char *head = READ(btf, skb, head);
	__u32 tail = READ(btf, skb, tail);
	__u32 vlan = skb_vlan_tag(skb, btf);
	unsigned char *pkt = h->l2 ? h->l2 : h->l3;
	bool tagged = h->l2 && vlan;
	struct {
		__u64 word[3];
	} key = {};
	struct pktpath_expr_scratch *s;
	struct expr_verdict *last;
	__u64 shape = (h->l2 ? (__u64)(h->l3 - h->l2) : 0) << 32 | vlan;
	__u32 zero = 0, len, verdict;

	last = bpf_map_lookup_elem(&expr_cache, &zero);
	if (last && !PKT_COPY(btf, &key, h->l3 + 8) && last->skb == (__u64)skb &&
	    last->view == !h->l2 && last->shape == shape && last->key[0] == key.word[0] &&
	    last->key[1] == key.word[1] && last->key[2] == key.word[2])
		return last->verdict;

	s = bpf_map_lookup_elem(&expr_scratch, &zero);
	if (!s)
		return false;
	len = head + tail > pkt ? head + tail - pkt : 0;
	if (tagged)
		len += 4;
	verdict = 0;
	if (expression_view(s, pkt, len, tagged, vlan))
		verdict = expression_run(s, len, !h->l2) != 0;
	if (last) {
		last->skb = (__u64)skb;
		last->view = !h->l2;
		last->shape = shape;
		last->key[0] = key.word[0];
		last->key[1] = key.word[1];
		last->key[2] = key.word[2];
		last->verdict = verdict;
	}
	return verdict;
}

#endif /* PKTPATH_EXPRESSION_H */
