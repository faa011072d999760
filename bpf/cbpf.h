// SPDX-License-Identifier: GPL-2.0
/*
 * -- a classic BPF interpreter for tcpdump expressions ------------------------------------
 * One bpf_loop() step per instruction: the verifier checks the step once, whatever the
 * expression. Packet loads outside the linear data, a jump out of the program or an unknown
 * instruction reject the packet, as the kernel's own classic BPF does. */
#ifndef PKTPATH_CBPF_H
#define PKTPATH_CBPF_H

#include "common.h"

/* The tcpdump expression, as classic BPF for both views (see event.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * PKTPATH_CBPF_MAX);
	__type(key, __u32);
	__type(value, struct pktpath_cbpf_insn);
} cbpf_prog SEC(".maps");

/* The last expression verdict on this CPU: a packet usually reaches its next hook (veth
 * receive after transmit, its free after its receive) with the same skb and headers. */
struct cbpf_verdict {
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
	__type(value, struct cbpf_verdict);
} cbpf_cache SEC(".maps");

struct cbpf_run {
	unsigned char *pkt; /* first byte of the view */
	__u32 len;          /* bytes readable in the view */
	__u32 tag;          /* an offloaded VLAN tag shown at offset 12 (proto << 16 | tci) */
	bool tagged;
	__u32 base;         /* index of the view's first instruction in cbpf_prog */
	__u32 n;            /* its instruction count */
	__u32 pc;
	__u32 a, x;
	__u32 mem[16];
	__u32 result;
};

/* Byte i of the view when an offloaded VLAN tag is shown inside the frame, as tcpdump does. */
static __always_inline int cbpf_tagged_byte(struct cbpf_run *r, __u32 i, __u8 *out, bool btf)
{
	if (i >= 12 && i < 16) {
		*out = r->tag >> (8 * (15 - i));
		return 0;
	}
	if (i >= 16)
		i -= 4;
	if (btf) {
		*out = *(unsigned char *)bpf_rdonly_cast(r->pkt + i, 0);
		return 0;
	}
	return bpf_probe_read_kernel(out, 1, r->pkt + i);
}

static __always_inline int cbpf_load(struct cbpf_run *r, __u32 off, __u32 size, __u32 *out,
				     bool btf)
{
	__u8 b[4] = {};

	if (off > r->len || size > r->len - off)
		return -1;
	if (btf && !r->tagged) {
		unsigned char *p = bpf_rdonly_cast(r->pkt + off, 0);

		*out = size == 1 ? *p : size == 2 ? bpf_ntohs(*(__u16 *)p) : bpf_ntohl(*(__u32 *)p);
		return 0;
	}
	if (r->tagged) {
		for (int i = 0; i < 4; i++)
			if (i < size && cbpf_tagged_byte(r, off + i, &b[i], btf))
				return -1;
	} else if (btf) {
		unsigned char *p = bpf_rdonly_cast(r->pkt + off, 0);

		b[0] = p[0];
		if (size > 1)
			b[1] = p[1];
		if (size > 2) {
			b[2] = p[2];
			b[3] = p[3];
		}
	} else if (bpf_probe_read_kernel(b, size & 7, r->pkt + off)) {
		return -1;
	}
	*out = size == 1 ? b[0] : size == 2 ? (__u32)b[0] << 8 | b[1] :
	       (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
	return 0;
}

/* Returns 1 to stop (r->result holds the verdict), 0 to go on. */
static __always_inline long cbpf_step(struct cbpf_run *r, bool btf)
{
	__u32 idx = r->base + r->pc, size, v;
	struct pktpath_cbpf_insn *in;
	__u32 k, src;
	__u16 code;

	r->result = 0;
	if (r->pc >= r->n)
		return 1;
	in = bpf_map_lookup_elem(&cbpf_prog, &idx);
	if (!in)
		return 1;
	code = in->code;
	k = in->k;
	r->pc++;
	/* fast path: what libpcap emits most (loads at fixed offsets, jeq, ret) */
	switch (code) {
	case 0x28: /* ldh [k] */
		if (cbpf_load(r, k, 2, &r->a, btf))
			return 1;
		return 0;
	case 0x30: /* ldb [k] */
		if (cbpf_load(r, k, 1, &r->a, btf))
			return 1;
		return 0;
	case 0x20: /* ld [k] */
		if (cbpf_load(r, k, 4, &r->a, btf))
			return 1;
		return 0;
	case 0x15: /* jeq #k */
		r->pc += r->a == k ? in->jt : in->jf;
		return 0;
	case 0x06: /* ret #k */
		r->result = k;
		return 1;
	}
	switch (code & 0x07) {
	case 0x00: /* LD */
	case 0x01: /* LDX */
		size = (code & 0x18) == 0x00 ? 4 : (code & 0x18) == 0x08 ? 2 : 1;
		switch (code & 0xe0) {
		case 0x00: v = k; break;                           /* IMM */
		case 0x20:                                         /* ABS */
			if (cbpf_load(r, k, size, &v, btf))
				return 1;
			break;
		case 0x40:                                         /* IND */
			if (cbpf_load(r, r->x + k, size, &v, btf))
				return 1;
			break;
		case 0x60: v = r->mem[k & 15]; break;              /* MEM */
		case 0x80: v = r->len; break;                      /* LEN */
		case 0xa0:                                         /* MSH: 4 * (P[k] & 0xf) */
			if (cbpf_load(r, k, 1, &v, btf))
				return 1;
			v = (v & 0xf) << 2;
			break;
		default:
			return 1;
		}
		if ((code & 0x07) == 0x00)
			r->a = v;
		else
			r->x = v;
		return 0;
	case 0x02: r->mem[k & 15] = r->a; return 0;                /* ST */
	case 0x03: r->mem[k & 15] = r->x; return 0;                /* STX */
	case 0x04:                                                 /* ALU */
		src = code & 0x08 ? r->x : k;
		switch (code & 0xf0) {
		case 0x00: r->a += src; break;
		case 0x10: r->a -= src; break;
		case 0x20: r->a *= src; break;
		case 0x30: if (!src) return 1; r->a /= src; break;
		case 0x40: r->a |= src; break;
		case 0x50: r->a &= src; break;
		case 0x60: r->a = src < 32 ? r->a << src : 0; break;
		case 0x70: r->a = src < 32 ? r->a >> src : 0; break;
		case 0x80: r->a = -r->a; break;
		case 0x90: if (!src) return 1; r->a %= src; break;
		case 0xa0: r->a ^= src; break;
		default: return 1;
		}
		return 0;
	case 0x05: {                                               /* JMP */
		bool taken;

		src = code & 0x08 ? r->x : k;
		switch (code & 0xf0) {
		case 0x00: r->pc += k; return 0;                   /* JA */
		case 0x10: taken = r->a == src; break;
		case 0x20: taken = r->a > src; break;
		case 0x30: taken = r->a >= src; break;
		case 0x40: taken = r->a & src; break;
		default: return 1;
		}
		r->pc += taken ? in->jt : in->jf;
		return 0;
	}
	case 0x06:                                                 /* RET */
		r->result = (code & 0x18) == 0x10 ? r->a : k;
		return 1;
	case 0x07:                                                 /* MISC */
		if ((code & 0xf8) == 0x00)
			r->x = r->a;                               /* TAX */
		else
			r->a = r->x;                               /* TXA */
		return 0;
	}
	return 1;
}

static long cbpf_step_btf(__u32 i, void *r)
{
	return cbpf_step(r, true);
}

static long cbpf_step_raw(__u32 i, void *r)
{
	return cbpf_step(r, false);
}

/* Does the tcpdump expression accept the packet whose headers h located? */
static __always_inline bool expression_wanted(struct sk_buff *skb, struct headers *h, bool btf)
{
	struct cbpf_run r = {};
	unsigned char *head = READ(btf, skb, head);
	__u32 tail = READ(btf, skb, tail);
	struct {
		__u64 word[3];
	} key = {};
	struct cbpf_verdict *last;
	__u64 shape = (h->l2 ? (__u64)(h->l3 - h->l2) : 0) << 32 | READ(btf, skb, vlan_all);
	__u32 zero = 0;

	last = bpf_map_lookup_elem(&cbpf_cache, &zero);
	if (last && !PKT_COPY(btf, &key, h->l3 + 8) && last->skb == (__u64)skb &&
	    last->view == !h->l2 && last->shape == shape && last->key[0] == key.word[0] &&
	    last->key[1] == key.word[1] && last->key[2] == key.word[2])
		return last->verdict;

	if (h->l2) {
		r.pkt = h->l2;
		r.n = cfg.cbpf_len_l2;
		if (READ(btf, skb, vlan_all)) {
			r.tagged = true;
			r.tag = (__u32)bpf_ntohs(READ(btf, skb, vlan_proto)) << 16 |
				READ(btf, skb, vlan_tci);
		}
	} else {
		r.pkt = h->l3;
		r.base = PKTPATH_CBPF_MAX;
		r.n = cfg.cbpf_len_l3;
	}
	r.len = head + tail > r.pkt ? head + tail - r.pkt : 0;
	if (r.tagged)
		r.len += 4;
	if (btf)
		bpf_loop(PKTPATH_CBPF_MAX, cbpf_step_btf, &r, 0);
	else
		bpf_loop(PKTPATH_CBPF_MAX, cbpf_step_raw, &r, 0);
	if (last) {
		last->skb = (__u64)skb;
		last->view = !h->l2;
		last->shape = shape;
		last->key[0] = key.word[0];
		last->key[1] = key.word[1];
		last->key[2] = key.word[2];
		last->verdict = r.result != 0;
	}
	return r.result != 0;
}

#endif /* PKTPATH_CBPF_H */
