// SPDX-License-Identifier: GPL-2.0
/*
 * pktpath's kernel side: one small program per hook, all sharing handle().
 *
 * Each hook decides whether the packet is wanted with the cheapest checks first (skb fields,
 * then one read of the network header), and only then reserves ring-buffer space and copies
 * the headers. Every wanted packet that finds the ring buffer full is counted.
 *
 * Every hook exists twice: tp_btf (typed skb, direct loads) and raw_tp (bpf_probe_read_kernel),
 * the loader keeps one of the two after probing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "event.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before load; the verifier then drops the checks a run does not need. */
const volatile struct pktpath_config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* the loader may resize it */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PKTPATH_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Namespace inodes to trace when cfg.netns_set: the agent's node and its pods. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} netns_set SEC(".maps");

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

/* Tracking: packets that matched, by skb address and by data buffer (clones share it), so a
 * packet is followed through NAT, tunnels and clones. An entry older than TRACK_NS is stale
 * (the address may belong to another packet by now); frees remove theirs. */
#define TRACK_NS 1000000000ULL

struct tracked_packet {
	__u64 packet;
	__u64 last_ns;
	__u64 fingerprint; /* of its IP header; NAT keeps it, another packet does not */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tracked_packet);
} tracked SEC(".maps");

/* Set once something matched: until then no packet pays for a tracking lookup. */
__u32 tracking_started = 0;

/* Make the shared types visible in the object's BTF for the layout test. */
struct pktpath_event *unused_event __attribute__((unused));
struct pktpath_flow *unused_flow __attribute__((unused));
struct pktpath_cbpf_insn *unused_insn __attribute__((unused));
enum pktpath_hook unused_hook __attribute__((unused));
enum pktpath_event_flag unused_flag __attribute__((unused));
enum pktpath_proto unused_proto __attribute__((unused));
enum pktpath_counter unused_counter __attribute__((unused));

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ARPHRD_ETHER 1
#define ARPHRD_LOOPBACK 772
#define IP_OFFSET 0x1FFF /* fragment offset bits of frag_off */
#define AF_INET 2
#define AF_INET6 10

/* Packet memory. Under tp_btf, bpf_rdonly_cast(p, 0) (Linux 6.17+; the verifier inlines it)
 * makes it readable with plain loads that read zero on a fault, far cheaper than a helper call;
 * on an older kernel the tp_btf programs fail to load and the raw_tp ones, which use
 * bpf_probe_read_kernel(), take over. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#define PKT_COPY(btf, dst, src)                                                   \
	((btf) ? (*(dst) = *(typeof(dst))bpf_rdonly_cast((src), 0), 0)            \
	       : bpf_probe_read_kernel((dst), sizeof(*(dst)), (src)))

/* A field of a kernel struct: a direct load under tp_btf, a probe read under raw_tp.
 * `btf` is a constant at every call site, so only one arm is compiled. */
#define READ(btf, ptr, field) ((btf) ? (ptr)->field : BPF_CORE_READ(ptr, field))

/* Where the headers of a packet are. */
struct headers {
	unsigned char *l2; /* Ethernet header, NULL on devices without one */
	unsigned char *l3; /* network header (after any VLAN tags in the frame) */
	__u16 ethertype;   /* of l3, host order */
};

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		*value += 1;
}

static __always_inline bool host4_wanted(__u32 a, __u32 b)
{
#pragma unroll
	for (int i = 0; i < PKTPATH_MAX_HOSTS; i++) {
		if (i >= cfg.n_host4)
			break;
		if (cfg.host4[i] == a || cfg.host4[i] == b)
			return true;
	}
	return false;
}

static __always_inline bool same6(const volatile __u8 *want, const __u64 *addr)
{
	const volatile __u64 *w = (const volatile __u64 *)want;

	return w[0] == addr[0] && w[1] == addr[1];
}

static __always_inline bool host6_wanted(const __u64 *a, const __u64 *b)
{
#pragma unroll
	for (int i = 0; i < PKTPATH_MAX_HOSTS; i++) {
		if (i >= cfg.n_host6)
			break;
		if (same6(cfg.host6[i], a) || same6(cfg.host6[i], b))
			return true;
	}
	return false;
}

static __always_inline bool port_wanted(unsigned char *l4, bool btf)
{
	struct {
		__u16 source, dest;
	} ports;

	if (PKT_COPY(btf, &ports, l4))
		return false;
	return ports.source == bpf_htons(cfg.port) || ports.dest == bpf_htons(cfg.port);
}

static __always_inline bool l4_wanted(__u8 l4proto, unsigned char *l4, bool btf)
{
	if (cfg.proto && cfg.proto != l4proto)
		return false;
	if (cfg.port && (l4proto != PKTPATH_PROTO_TCP && l4proto != PKTPATH_PROTO_UDP))
		return false;
	return !cfg.port || port_wanted(l4, btf);
}

struct ipv4_header {
	__u8 ver_ihl, tos;
	__u16 tot_len, id, frag_off;
	__u8 ttl, protocol;
	__u16 check;
	__u32 saddr, daddr;
};

static __always_inline bool ipv4_match(struct ipv4_header *ip, unsigned char *l3, bool btf)
{
	if (cfg.n_host6 && !cfg.n_host4)
		return false;
	if (cfg.n_host4 && !host4_wanted(ip->saddr, ip->daddr))
		return false;
	if (!cfg.proto && !cfg.port)
		return true;
	/* a later fragment has no L4 header: only its protocol can match */
	if (cfg.port && (ip->frag_off & bpf_htons(IP_OFFSET)))
		return false;
	if ((ip->ver_ihl & 0xF) < 5)
		return false;
	return l4_wanted(ip->protocol, l3 + (ip->ver_ihl & 0xF) * 4, btf);
}

static __always_inline bool ipv6_wanted(unsigned char *l3, bool btf)
{
	struct {
		__u32 ver_tc_flow;
		__u16 payload_len;
		__u8 nexthdr, hop_limit;
		__u64 saddr[2], daddr[2];
	} ip;
	unsigned char *l4 = l3 + sizeof(ip);
	__u8 nexthdr;

	if (cfg.n_host4 && !cfg.n_host6)
		return false;
	if (PKT_COPY(btf, &ip, l3))
		return false;
	if (cfg.n_host6 && !host6_wanted(ip.saddr, ip.daddr))
		return false;
	if (!cfg.proto && !cfg.port)
		return true;
	nexthdr = ip.nexthdr;
	/* walk the extension headers to the upper-layer header */
#pragma unroll
	for (int i = 0; i < 8; i++) {
		struct {
			__u8 nexthdr, hdrlen;
			__u16 frag_off;
		} ext;

		if (nexthdr != 0 && nexthdr != 43 && nexthdr != 44 && nexthdr != 51 && nexthdr != 60)
			break;
		if (PKT_COPY(btf, &ext, l4))
			return false;
		if (nexthdr == 44) { /* fragment header: a later fragment has no L4 header */
			if (cfg.port && (ext.frag_off & bpf_htons(0xFFF8)))
				return false;
			l4 += 8;
		} else if (nexthdr == 51) { /* AH counts in 4-byte units */
			l4 += (ext.hdrlen + 2) * 4;
		} else {
			l4 += (ext.hdrlen + 1) * 8;
		}
		nexthdr = ext.nexthdr;
	}
	return l4_wanted(nexthdr, l4, btf);
}

#define VXLAN_PORT 4789
#define VXLAN_LINUX_PORT 8472

/* The inner IPv4 or IPv6 header of a VXLAN packet (UDP to a VXLAN port), or NULL. */
static __always_inline unsigned char *vxlan_inner(struct ipv4_header *ip, unsigned char *l3,
						  __u16 *ethertype, bool btf)
{
	struct {
		__u16 sport, dport;
	} udp;
	struct {
		__u8 pad[12];
		__u16 ethertype;
	} eth;
	unsigned char *l4;

	if (ip->protocol != 17 || (ip->ver_ihl & 0xF) < 5)
		return NULL;
	l4 = l3 + (ip->ver_ihl & 0xF) * 4;
	if (PKT_COPY(btf, &udp, l4) ||
	    (udp.dport != bpf_htons(VXLAN_PORT) && udp.dport != bpf_htons(VXLAN_LINUX_PORT)))
		return NULL;
	if (PKT_COPY(btf, &eth, l4 + 16)) /* after the UDP and VXLAN headers */
		return NULL;
	*ethertype = bpf_ntohs(eth.ethertype);
	return l4 + 16 + ETH_HLEN;
}

/* An IPv4 packet is wanted for itself, or for the packet inside it when it is VXLAN. */
static __always_inline bool ipv4_wanted(unsigned char *l3, bool btf)
{
	struct ipv4_header ip, inner_ip;
	unsigned char *inner;
	__u16 ethertype;

	if (PKT_COPY(btf, &ip, l3))
		return false;
	if (ipv4_match(&ip, l3, btf))
		return true;
	inner = vxlan_inner(&ip, l3, &ethertype, btf);
	if (!inner)
		return false;
	if (ethertype == ETH_P_IP)
		return !PKT_COPY(btf, &inner_ip, inner) && ipv4_match(&inner_ip, inner, btf);
	if (ethertype == ETH_P_IPV6)
		return ipv6_wanted(inner, btf);
	return false;
}

static __always_inline bool arp_wanted(unsigned char *l3, bool btf)
{
	struct {
		__u16 hrd, pro;
		__u8 hln, pln;
		__u16 op;
		__u8 sha[6];
		__u32 spa;
		__u8 tha[6];
		__u32 tpa;
	} __attribute__((packed)) arp;

	if (cfg.port || (cfg.proto && cfg.proto != PKTPATH_PROTO_ARP))
		return false;
	if (!cfg.n_host4)
		return true;
	if (PKT_COPY(btf, &arp, l3))
		return false;
	return host4_wanted(arp.spa, arp.tpa);
}

/* The packet filter of the config, on the headers already located. */
static __always_inline bool packet_wanted(struct headers *h, bool btf)
{
	switch (h->ethertype) {
	case ETH_P_IP:
		return !(cfg.proto == PKTPATH_PROTO_ARP || cfg.proto == PKTPATH_PROTO_ICMP6) &&
		       ipv4_wanted(h->l3, btf);
	case ETH_P_IPV6:
		return !(cfg.proto == PKTPATH_PROTO_ARP || cfg.proto == PKTPATH_PROTO_ICMP) &&
		       ipv6_wanted(h->l3, btf);
	case ETH_P_ARP:
		return arp_wanted(h->l3, btf);
	default:
		return !cfg.proto && !cfg.port && !cfg.n_host4 && !cfg.n_host6;
	}
}

/* Skip up to two VLAN tags carried in the frame itself (802.1Q, 802.1ad). */
static __always_inline void skip_vlan_tags(struct headers *h, bool btf)
{
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct {
			__u16 tci, ethertype;
		} tag;

		if (h->ethertype != ETH_P_8021Q && h->ethertype != ETH_P_8021AD)
			return;
		if (PKT_COPY(btf, &tag, h->l3))
			return;
		h->ethertype = bpf_ntohs(tag.ethertype);
		h->l3 += 4;
	}
}


/* -- a classic BPF interpreter for tcpdump expressions ------------------------------------
 * One bpf_loop() step per instruction: the verifier checks the step once, whatever the
 * expression. Packet loads outside the linear data, a jump out of the program or an unknown
 * instruction reject the packet, as the kernel's own classic BPF does. */

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

static __always_inline bool ifname_wanted(struct net_device *dev, bool btf)
{
	struct {
		__u64 word[2];
	} name;
	const volatile __u64 *want = (const volatile __u64 *)cfg.ifname;

	if (PKT_COPY(btf, &name, dev->name))
		return false;
	return name.word[0] == want[0] && name.word[1] == want[1];
}

static __always_inline __u32 netns_of(struct net_device *dev, bool btf)
{
	return btf ? dev->nd_net.net->ns.inum : BPF_CORE_READ(dev, nd_net.net, ns.inum);
}

/* The neighbour a packet waited for: its route's gateway (rtable, rt6_info), else zero (the
 * destination itself, on-link). Only read for NEIGH_FAILED drops. */
static __always_inline void neighbour_of(struct sk_buff *skb, struct headers *h, __u8 *out,
					 bool btf)
{
	unsigned long refdst = READ(btf, skb, _skb_refdst);
	void *dst = (void *)(refdst & ~1UL);

	if (!dst)
		return;
	if (h->ethertype == ETH_P_IP) {
		struct rtable *rt = dst;

		if (BPF_CORE_READ(rt, rt_gw_family) == AF_INET)
			BPF_CORE_READ_INTO((__u32 *)out, rt, rt_gw4);
	} else if (h->ethertype == ETH_P_IPV6) {
		struct rt6_info *rt = dst;

		BPF_CORE_READ_INTO((struct in6_addr *)out, rt, rt6i_gateway);
	}
}

static __always_inline void emit(void *ctx, struct sk_buff *skb, struct net_device *dev,
				 struct headers *h, __u8 hook, bool btf, __u64 location,
				 __u32 reason, __u64 packet)
{
	unsigned char *first = h->l2 ? h->l2 : h->l3;
	unsigned char *head = READ(btf, skb, head);
	unsigned char *data = READ(btf, skb, data);
	__u32 tail = READ(btf, skb, tail);
	struct pktpath_event *e;
	__u64 cap;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(PKTPATH_COUNTER_LOST);
		return;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->skb = (__u64)skb;
	e->packet = packet;
	e->location = location;
	e->reason = reason;
	e->stack[0] = 0;
	if (hook == PKTPATH_HOOK_ICMP_SEND) {
		/* the MTU a fragmentation-needed error announces: the route's device's */
		unsigned long refdst = READ(btf, skb, _skb_refdst);
		struct dst_entry *dst = (struct dst_entry *)(refdst & ~1UL);

		e->location = dst ? BPF_CORE_READ(dst, dev, mtu) : 0;
	}
	__builtin_memset(e->nexthop, 0, sizeof(e->nexthop));
	if (hook == PKTPATH_HOOK_KFREE_SKB &&
	    bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NEIGH_FAILED) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NEIGH_FAILED))
		neighbour_of(skb, h, e->nexthop, btf);
	/* the stack only says which netfilter hook dropped: not worth its cost otherwise */
	if (hook == PKTPATH_HOOK_KFREE_SKB &&
	    bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NETFILTER_DROP)) {
		long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
		__u64 end = n > 0 ? (__u64)n / 8 : 0;

		if (end < PKTPATH_STACK_DEPTH)
			e->stack[end] = 0;
	}
	e->netns = dev ? netns_of(dev, btf) : 0;
	e->ifindex = dev ? READ(btf, dev, ifindex) : 0;
	e->len = READ(btf, skb, len) + (data - first);
	e->cpu = bpf_get_smp_processor_id();
	e->protocol = READ(btf, skb, protocol);
	e->vlan_tci = READ(btf, skb, vlan_tci);
	e->vlan_proto = READ(btf, skb, vlan_proto);
	e->hook = hook;
	e->flags = (h->l2 ? PKTPATH_F_L2 : 0) | (READ(btf, skb, vlan_all) ? PKTPATH_F_VLAN : 0);
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	if (dev)
		bpf_probe_read_kernel(e->ifname, sizeof(e->ifname), dev->name);
	else
		__builtin_memset(e->ifname, 0, sizeof(e->ifname));
	/* copy the linear part only: paged data is not behind head */
	cap = (__u64)(head + tail) - (__u64)first;
	if (cap > PKTPATH_SNAPLEN)
		cap = PKTPATH_SNAPLEN;
	e->cap_len = cap;
	if (bpf_probe_read_kernel(e->data, cap, first))
		e->cap_len = 0;
	bpf_ringbuf_submit(e, 0);
	count(PKTPATH_COUNTER_EMITTED);
}

static __always_inline __u64 head_of(struct sk_buff *skb, bool btf)
{
	return (__u64)READ(btf, skb, head);
}

/* What identifies one IP packet along its way: IPv4 total length, ID, fragment bits and
 * protocol; IPv6 version, class, flow label, payload length and next header. NAT does not
 * change them (TTL and checksums are left out); a new packet at a reused address does. */
static __always_inline __u64 fingerprint_at(unsigned char *l3, __u16 ethertype, bool btf)
{
	struct {
		__u64 word;
		__u8 ttl, proto;
	} ip = {};

	if (ethertype != ETH_P_IP && ethertype != ETH_P_IPV6)
		return 0;
	if (PKT_COPY(btf, &ip, l3))
		return 0;
	if (ethertype == ETH_P_IP) /* bytes 2..7, and the protocol (byte 9) */
		return (ip.word & 0xFFFFFFFFFFFF0000ULL) | ip.proto;
	return ip.word & 0x00FFFFFFFFFFFFFFULL; /* bytes 0..6: without the hop limit */
}

/* The fingerprint of the packet inside a VXLAN one, or 0. */
static __always_inline __u64 inner_fingerprint(struct headers *h, bool btf)
{
	unsigned char *inner;
	__u16 ethertype;

	struct ipv4_header ip;

	if (h->ethertype != ETH_P_IP || PKT_COPY(btf, &ip, h->l3))
		return 0;
	inner = vxlan_inner(&ip, h->l3, &ethertype, btf);
	return inner ? fingerprint_at(inner, ethertype, btf) : 0;
}

static __always_inline void track_packet(struct sk_buff *skb, __u64 head, __u64 packet,
					 __u64 fingerprint)
{
	struct tracked_packet t = { .packet = packet, .last_ns = bpf_ktime_get_ns(),
				    .fingerprint = fingerprint };
	__u64 key = (__u64)skb;

	bpf_map_update_elem(&tracked, &key, &t, BPF_ANY);
	bpf_map_update_elem(&tracked, &head, &t, BPF_ANY);
	if (!tracking_started)
		tracking_started = 1;
}

/* The packet this skb (or its data buffer) belongs to, if it is being tracked; 0 if not. An
 * entry counts only while it is fresh and the packet's IP header (or the one inside its VXLAN
 * encapsulation) still has the tracked fingerprint. A free ends the tracking of its skb. */
static __always_inline __u64 packet_of(struct sk_buff *skb, __u64 head, __u8 hook,
				       struct headers *h, bool btf)
{
	__u64 key = (__u64)skb, now, packet, fingerprint;
	struct tracked_packet *t;

	if (!tracking_started)
		return 0;
	t = bpf_map_lookup_elem(&tracked, &key);
	if (!t)
		t = bpf_map_lookup_elem(&tracked, &head);
	if (!t)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - t->last_ns > TRACK_NS)
		return 0;
	fingerprint = t->fingerprint;
	if (fingerprint && fingerprint_at(h->l3, h->ethertype, btf) != fingerprint &&
	    inner_fingerprint(h, btf) != fingerprint)
		return 0;
	packet = t->packet;
	if (hook == PKTPATH_HOOK_KFREE_SKB) {
		bpf_map_delete_elem(&tracked, &key);
		bpf_map_delete_elem(&tracked, &head);
	} else {
		track_packet(skb, head, packet, fingerprint); /* a clone may join; refresh */
	}
	return packet;
}

static __always_inline int handle(void *ctx, struct sk_buff *skb, __u8 hook, bool btf,
				  __u64 location, __u32 reason)
{
	struct net_device *dev = READ(btf, skb, dev);
	struct headers h = {};
	unsigned char *data;
	__u16 type = 0;
	__u64 packet;

	if (!dev) {
		/* a free or an error can come without a device (e.g. from a socket) */
		if (hook < PKTPATH_HOOK_KFREE_SKB || cfg.netns || cfg.netns_set || cfg.ifname[0])
			return 0;
	} else {
		type = READ(btf, dev, type);
	}
	/* loopback receives what it just sent: its transmit is the hop */
	if (hook == PKTPATH_HOOK_NETIF_RECEIVE_SKB && type == ARPHRD_LOOPBACK)
		return 0;
	h.ethertype = bpf_ntohs(READ(btf, skb, protocol));
	if (cfg.proto == PKTPATH_PROTO_ARP && h.ethertype != ETH_P_ARP)
		return 0;
	if (cfg.netns && dev && netns_of(dev, btf) != cfg.netns)
		return 0;
	if (cfg.netns_set && dev) {
		__u32 inode = netns_of(dev, btf);

		if (!bpf_map_lookup_elem(&netns_set, &inode))
			return 0;
	}

	data = READ(btf, skb, data);
	if (hook == PKTPATH_HOOK_KFREE_SKB || hook == PKTPATH_HOOK_ICMP_SEND) {
		/* anywhere on its way: the headers are where the stack last put them */
		unsigned char *head = READ(btf, skb, head);
		__u16 net = READ(btf, skb, network_header);
		__u16 mac = READ(btf, skb, mac_header);

		if (net)
			data = head + net;
		if (mac != (__u16)~0U && net && mac + ETH_HLEN == net &&
		    (type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK))
			h.l2 = head + mac;
	} else if (type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK) {
		if (hook == PKTPATH_HOOK_NET_DEV_QUEUE) {
			h.l2 = data;
		} else {
			/* receive: eth_type_trans() already pulled the Ethernet header */
			__u16 mac = READ(btf, skb, mac_header);
			unsigned char *head = READ(btf, skb, head);

			if (mac != (__u16)~0U && head + mac + ETH_HLEN == data)
				h.l2 = head + mac;
		}
	}
	h.l3 = h.l2 ? h.l2 + ETH_HLEN : data;
	skip_vlan_tags(&h, btf);

	packet = cfg.track ? packet_of(skb, head_of(skb, btf), hook, &h, btf) : 0;
	if (!packet) {
		if ((cfg.proto || cfg.port || cfg.n_host4 || cfg.n_host6) &&
		    !packet_wanted(&h, btf))
			return 0;
		if ((cfg.cbpf_len_l2 || cfg.cbpf_len_l3) && !expression_wanted(skb, &h, btf))
			return 0;
		packet = (__u64)skb;
		if (cfg.track && hook != PKTPATH_HOOK_KFREE_SKB)
			track_packet(skb, head_of(skb, btf), packet,
				     fingerprint_at(h.l3, h.ethertype, btf));
	}
	if (cfg.ifname[0] && dev && !ifname_wanted(dev, btf))
		return 0;
	emit(ctx, skb, dev, &h, hook, btf, location, reason, packet);
	return 0;
}

#define EAGAIN 11

/* The event of a routing lookup, reserved with its header filled; NULL when the ring is full. */
static __always_inline struct pktpath_event *route_event(__u8 hook, __u16 ethertype, __u64 table,
							 __u32 result, struct net_device *dev,
							 __u32 netns, bool btf)
{
	struct pktpath_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(PKTPATH_COUNTER_LOST);
		return NULL;
	}
	__builtin_memset(e, 0, __builtin_offsetof(struct pktpath_event, data));
	e->time_ns = bpf_ktime_get_ns();
	e->location = table;
	e->reason = result;
	e->cpu = bpf_get_smp_processor_id();
	e->hook = hook;
	e->flags = PKTPATH_F_FLOW;
	e->protocol = bpf_htons(ethertype);
	e->netns = netns;
	if (dev) {
		e->ifindex = READ(btf, dev, ifindex);
		bpf_probe_read_kernel(e->ifname, sizeof(e->ifname), dev->name);
	}
	return e;
}

static __always_inline void route_submit(struct pktpath_event *e, struct pktpath_flow *flow)
{
	__builtin_memcpy(e->data, flow, sizeof(*flow));
	e->cap_len = sizeof(*flow);
	e->len = sizeof(*flow);
	bpf_ringbuf_submit(e, 0);
	count(PKTPATH_COUNTER_EMITTED);
}

/* A routing lookup for a wanted flow: which table answered, with which next hop, or the error.
 * "Not in this table" (-EAGAIN) is skipped: the lookup goes on in the next table. */
static __always_inline int route_lookup(__u32 table, struct flowi4 *flp,
					struct fib_nh_common *nhc, int err, bool btf)
{
	struct net_device *dev = nhc ? READ(btf, nhc, nhc_dev) : NULL;
	struct pktpath_flow flow = {};
	struct pktpath_event *e;
	__u32 saddr, daddr;
	__u8 proto;

	if (err == -EAGAIN || (cfg.n_host6 && !cfg.n_host4) || cfg.proto == PKTPATH_PROTO_ARP ||
	    cfg.proto == PKTPATH_PROTO_ICMP6)
		return 0;
	/* a tcpdump expression needs a packet: lookups only for --host matches */
	if ((cfg.cbpf_len_l2 || cfg.cbpf_len_l3) && !cfg.n_host4)
		return 0;
	saddr = READ(btf, flp, saddr);
	daddr = READ(btf, flp, daddr);
	if (cfg.n_host4 && !host4_wanted(saddr, daddr))
		return 0;
	proto = READ(btf, flp, __fl_common.flowic_proto);
	if (cfg.proto || cfg.port) {
		/* input lookups leave the protocol and ports at 0: keep those only when the
		 * addresses already matched a --host, or every lookup would be an event */
		if (!proto && !cfg.n_host4)
			return 0;
		if (proto && cfg.proto && cfg.proto != proto)
			return 0;
		if (proto && cfg.port) {
			__u16 want = bpf_htons(cfg.port);

			if (proto != PKTPATH_PROTO_TCP && proto != PKTPATH_PROTO_UDP)
				return 0;
			if (READ(btf, flp, uli.ports.sport) != want &&
			    READ(btf, flp, uli.ports.dport) != want)
				return 0;
		}
	}
	if (dev && cfg.netns && netns_of(dev, btf) != cfg.netns)
		return 0;
	e = route_event(PKTPATH_HOOK_FIB_TABLE_LOOKUP, ETH_P_IP, table, err, dev,
			dev ? netns_of(dev, btf) : 0, btf);
	if (!e)
		return 0;
	if (dev && READ(btf, nhc, nhc_gw_family) == AF_INET)
		*(__u32 *)e->nexthop = READ(btf, nhc, nhc_gw.ipv4);
	*(__u32 *)flow.saddr = saddr;
	*(__u32 *)flow.daddr = daddr;
	flow.sport = READ(btf, flp, uli.ports.sport);
	flow.dport = READ(btf, flp, uli.ports.dport);
	flow.proto = proto;
	flow.family = 4;
	route_submit(e, &flow);
	return 0;
}

/* An IPv6 routing lookup for a wanted flow: the table, the next hop, the route type. */
static __always_inline int route6_lookup(struct net *net, struct fib6_result *res,
					 struct fib6_table *table, struct flowi6 *flp, bool btf)
{
	struct fib6_nh *nh = READ(btf, res, nh);
	struct net_device *dev = nh ? READ(btf, nh, nh_common.nhc_dev) : NULL;
	struct fib6_info *f6i = READ(btf, res, f6i);
	struct pktpath_flow flow = {};
	struct pktpath_event *e;
	struct {
		__u64 word[2];
	} saddr, daddr;
	__u8 proto;

	if ((cfg.n_host4 && !cfg.n_host6) || cfg.proto == PKTPATH_PROTO_ARP ||
	    cfg.proto == PKTPATH_PROTO_ICMP || ((cfg.cbpf_len_l2 || cfg.cbpf_len_l3) && !cfg.n_host6))
		return 0;
	BPF_CORE_READ_INTO(&saddr, flp, saddr);
	BPF_CORE_READ_INTO(&daddr, flp, daddr);
	if (cfg.n_host6 && !host6_wanted(saddr.word, daddr.word))
		return 0;
	proto = READ(btf, flp, __fl_common.flowic_proto);
	if ((cfg.proto || cfg.port) && !proto && !cfg.n_host6)
		return 0;
	if (proto && cfg.proto && cfg.proto != proto)
		return 0;
	if (cfg.netns && BPF_CORE_READ(net, ns.inum) != cfg.netns)
		return 0;
	/* no route: the null entry; else the route's type (unreachable, prohibit, ...) */
	e = route_event(PKTPATH_HOOK_FIB6_TABLE_LOOKUP, ETH_P_IPV6,
			table ? READ(btf, table, tb6_id) : 0,
			(!f6i || f6i == BPF_CORE_READ(net, ipv6.fib6_null_entry)) ? 0 :
			READ(btf, res, fib6_type), dev, BPF_CORE_READ(net, ns.inum), btf);
	if (!e)
		return 0;
	if (dev && READ(btf, nh, nh_common.nhc_gw_family) == AF_INET6)
		BPF_CORE_READ_INTO((struct in6_addr *)e->nexthop, nh, nh_common.nhc_gw.ipv6);
	__builtin_memcpy(flow.saddr, &saddr, 16);
	__builtin_memcpy(flow.daddr, &daddr, 16);
	flow.sport = READ(btf, flp, uli.ports.sport);
	flow.dport = READ(btf, flp, uli.ports.dport);
	flow.proto = proto;
	flow.family = 6;
	route_submit(e, &flow);
	return 0;
}

/* A packet freed after use: its skb and buffer addresses may now belong to another packet. */
static __always_inline int untrack(struct sk_buff *skb, bool btf)
{
	__u64 key = (__u64)skb, head;

	if (!cfg.track || !tracking_started)
		return 0;
	head = head_of(skb, btf);
	bpf_map_delete_elem(&tracked, &key);
	bpf_map_delete_elem(&tracked, &head);
	return 0;
}

/* Every hook twice: tp_btf (typed skb, direct loads) and raw_tp (probe reads), from one body in
 * which `btf` is a constant; the loader keeps one of the two. */
#define TWIN(tp, body, ...)                                                              \
	SEC("tp_btf/" #tp)                                                               \
	int BPF_PROG(tp_btf_##tp, __VA_ARGS__)                                           \
	{                                                                                \
		const bool btf = true;                                                   \
		return body;                                                             \
	}                                                                                \
	SEC("raw_tp/" #tp)                                                               \
	int BPF_PROG(raw_tp_##tp, __VA_ARGS__)                                           \
	{                                                                                \
		const bool btf = false;                                                  \
		return body;                                                             \
	}

TWIN(net_dev_queue, handle(ctx, skb, PKTPATH_HOOK_NET_DEV_QUEUE, btf, 0, 0),
     struct sk_buff *skb)
TWIN(netif_receive_skb, handle(ctx, skb, PKTPATH_HOOK_NETIF_RECEIVE_SKB, btf, 0, 0),
     struct sk_buff *skb)
TWIN(kfree_skb, handle(ctx, skb, PKTPATH_HOOK_KFREE_SKB, btf, (__u64)location, reason),
     struct sk_buff *skb, void *location, int reason)
TWIN(icmp_send, handle(ctx, skb, PKTPATH_HOOK_ICMP_SEND, btf, 0,
		       (type & 0xFF) << 8 | (code & 0xFF)),
     struct sk_buff *skb, int type, int code)
TWIN(consume_skb, untrack(skb, btf), struct sk_buff *skb)
TWIN(fib_table_lookup, route_lookup(table, flp, nhc, err, btf),
     __u32 table, struct flowi4 *flp, struct fib_nh_common *nhc, int err)
TWIN(fib6_table_lookup, route6_lookup(net, res, table, flp, btf),
     struct net *net, struct fib6_result *res, struct fib6_table *table, struct flowi6 *flp)
