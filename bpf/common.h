// SPDX-License-Identifier: GPL-2.0
/* What every part of pktpath's kernel side shares: the includes, the filter config, the ring
 * buffer and its counters, the namespace set, header constants, the two ways to read kernel
 * memory (tp_btf and raw_tp), where a packet's headers are, and its namespace.
 */
#ifndef PKTPATH_COMMON_H
#define PKTPATH_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "event.h"


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
 * bpf_probe_read_kernel(), take over. Weak: the kfunc came with 6.2, and an unresolved strong
 * extern would refuse the whole object (the raw_tp programs too) on older kernels. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

#define PKT_COPY(btf, dst, src)                                                   \
	((btf) ? (*(dst) = *(typeof(dst))bpf_rdonly_cast((src), 0), 0)            \
	       : bpf_probe_read_kernel((dst), sizeof(*(dst)), (src)))

/* Under tp_btf, a hook's argument as an untrusted pointer: read the same way (direct loads
 * that read zero on a fault), but the verifier no longer asks, for every pointer loaded from
 * it (skb->dev, dev->nd_net.net...), whether the kernel declares that field trusted: each
 * asking is a linear search of the kernel's BTF for a "<type>__safe_trusted..." name (6.5+),
 * ~12 % of verifying pktpath's programs. Nothing here passes them to a helper that needs
 * them trusted. */
#define UNTRUSTED(btf, p, type) \
	((btf) ? (type *)bpf_rdonly_cast((p), bpf_core_type_id_kernel(type)) : (p))

/* A packet address as a number, as a global function's argument must be: under tp_btf a
 * packet pointer is memory the verifier tracks, and it minus a null one of its kind is a
 * number (pointer subtraction, which privileged programs may do). */
#define ADDRESS(btf, p)                                                                   \
	((btf) ? (__u64)((unsigned char *)(p) - (unsigned char *)bpf_rdonly_cast((void *)0, 0)) \
	       : (__u64)(p))

/* fn(l3, ethertype, arg, btf), a function of the packet whose network header is at l3, as a
 * pair of global functions (one per way of reading packet memory) and name(), which calls
 * the one for btf. The verifier checks a global function once per program, not once for
 * every way a packet can reach it: that was most of a start's verifying. */
#define PACKET_FUNCTION(name, fn)                                                        \
	__noinline __u64 name##_btf(__u64 l3, __u32 ethertype, __u32 arg)                \
	{                                                                                \
		return fn((unsigned char *)l3, ethertype, arg, true);                    \
	}                                                                                \
	__noinline __u64 name##_raw(__u64 l3, __u32 ethertype, __u32 arg)                \
	{                                                                                \
		return fn((unsigned char *)l3, ethertype, arg, false);                   \
	}                                                                                \
	static __always_inline __u64 name(unsigned char *l3, __u16 ethertype, __u32 arg, \
					  bool btf)                                      \
	{                                                                                \
		__u64 at = ADDRESS(btf, l3);                                             \
                                                                                         \
		return btf ? name##_btf(at, ethertype, arg) : name##_raw(at, ethertype, arg); \
	}

/* A field of a kernel struct: a direct load under tp_btf, a probe read under raw_tp.
 * `btf` is a constant at every call site, so only one arm is compiled. */
#define READ(btf, ptr, field) ((btf) ? (ptr)->field : BPF_CORE_READ(ptr, field))

/* v = min(v, max) written so that the verifier sees the bound: clang may turn a plain compare
 * into code that loses it ("R2 min value is negative"). max is a literal. */
#define AT_MOST(v, max)                                                                  \
	asm volatile("if %[x] <= " #max " goto +1\n\t%[x] = " #max : [x] "+r"(v))

/* Before 6.2 a bit said whether vlan_tci held an offloaded tag; 6.2 made vlan_all (the tag
 * and its protocol, 0 for none) the test and removed the bit. */
struct sk_buff___pre62 {
	__u8 vlan_present : 1;
} __attribute__((preserve_access_index));

/* The skb's offloaded VLAN tag as proto << 16 | tci, 0 when it carries none. */
static __always_inline __u32 skb_vlan_tag(struct sk_buff *skb, bool btf)
{
	if (bpf_core_field_exists(skb->vlan_all)) {
		if (!READ(btf, skb, vlan_all))
			return 0;
	} else if (!BPF_CORE_READ_BITFIELD_PROBED((struct sk_buff___pre62 *)skb, vlan_present)) {
		return 0;
	}
	return (__u32)bpf_ntohs(READ(btf, skb, vlan_proto)) << 16 | READ(btf, skb, vlan_tci);
}

/* Where the headers of a packet are. */
struct headers {
	unsigned char *l2; /* Ethernet header, NULL on devices without one */
	unsigned char *l3; /* network header (after any VLAN tags in the frame) */
	__u16 ethertype;   /* of l3, host order */
};

/* The time to a tick, for how old an entry is: bpf_ktime_get_ns() reads the clock source,
 * ~20 ns a call in a VM, which a flood's every hop paid; the clock is read again only when
 * jiffies moved on (bpf_jiffies64() is a load). Tracing programs may not use the kernel's own
 * coarse clock. Shared by the CPUs, unlocked: a reader racing a tick's update may get the
 * time of the tick before, so an age is compared signed (below zero: fresh). An event's own
 * time stays bpf_ktime_get_ns(). */
__u64 tick_jiffies = 0, tick_ns = 0;

static __always_inline __u64 coarse_ns(void)
{
	__u64 jiffies = bpf_jiffies64();

	if (jiffies != tick_jiffies) {
		tick_ns = bpf_ktime_get_ns();
		asm volatile("" ::: "memory"); /* the time first, then the tick it is of */
		tick_jiffies = jiffies;
	}
	return tick_ns;
}

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		*value += 1;
}

static __always_inline __u32 netns_of(struct net_device *dev, bool btf)
{
	return btf ? dev->nd_net.net->ns.inum : BPF_CORE_READ(dev, nd_net.net, ns.inum);
}

#endif /* PKTPATH_COMMON_H */
