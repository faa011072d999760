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
 *
 * The parts live in headers, each standing alone on common.h (includes, config, ring buffer,
 * counters, memory access): filter.h (which packets are wanted), expression.h (tcpdump
 * expressions), track.h (one packet across its hops), conns.h (a connection through NAT),
 * traces.h (the agent's traces in one program set), routes.h (--routes), dropwatch.h (drops counted, not traced). event.h is the
 * layout shared with the Python side.
 */
#include "common.h"
#include "filter.h"
#include "expression.h"
#include "track.h"
#include "conns.h"
#include "traces.h"
#include "routes.h"
#include "dropwatch.h"

char LICENSE[] SEC("license") = "GPL";

/* Make the shared types visible in the object's BTF for the layout test. */
struct pktpath_event *unused_event __attribute__((unused));
struct pktpath_flow *unused_flow __attribute__((unused));
struct pktpath_drop_key *unused_drop_key __attribute__((unused));
struct pktpath_drop_slot *unused_drop_slot __attribute__((unused));
struct pktpath_conn *unused_conn __attribute__((unused));
struct pktpath_addr_bloom *unused_addr_bloom __attribute__((unused));
enum pktpath_ct_nat unused_ct_nat __attribute__((unused));
struct pktpath_expr_scratch *unused_scratch __attribute__((unused));
enum pktpath_hook unused_hook __attribute__((unused));
enum pktpath_event_flag unused_flag __attribute__((unused));
enum pktpath_proto unused_proto __attribute__((unused));
enum pktpath_counter unused_counter __attribute__((unused));

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

/* The most data the ring can hold with room left for one event: its size, asked once. */
__u64 ring_room = 0;

static __always_inline void emit(void *ctx, struct sk_buff *skb, struct net_device *dev,
				 struct headers *h, __u8 hook, bool btf, __u64 location,
				 __u32 reason, __u64 packet, bool fresh, struct ct_note *ct,
				 __u64 traces)
{
	unsigned char *first = h->l2 ? h->l2 : h->l3;
	unsigned char *head = READ(btf, skb, head);
	unsigned char *data = READ(btf, skb, data);
	__u32 tail = READ(btf, skb, tail);
	struct pktpath_event *e;
	__u64 cap;

	/* a full ring (a flood the reader cannot keep up with) is seen without taking its lock */
	if (!ring_room)
		ring_room = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) - sizeof(*e) - 8;
	e = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > ring_room
		    ? NULL
		    : bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(PKTPATH_COUNTER_LOST);
		return;
	}
	e->time_ns = bpf_ktime_get_ns();
	e->skb = (__u64)skb;
	e->packet = packet;
	e->conn = ct->conn;
	e->traces = traces;
	e->ct_mark = ct->mark;
	e->ct_zone = ct->zone;
	e->ct_state = ct->state;
	e->ct_nat = ct->nat;
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
	e->flags = (h->l2 ? PKTPATH_F_L2 : 0) | (skb_vlan_tag(skb, btf) ? PKTPATH_F_VLAN : 0) |
		   (fresh ? PKTPATH_F_FIRST : 0);
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


/* Where the hook finds the packet's network header: a transmit on an Ethernet device has the
 * frame, a receive has it pulled already (eth_type_trans()); a free or an error comes from
 * anywhere on the way, where the stack last put the header. */
static __always_inline unsigned char *network_header(struct sk_buff *skb, __u8 hook, __u16 type,
						     bool btf)
{
	unsigned char *data = READ(btf, skb, data);

	if (hook == PKTPATH_HOOK_KFREE_SKB || hook == PKTPATH_HOOK_ICMP_SEND) {
		__u16 net = READ(btf, skb, network_header);

		return net ? READ(btf, skb, head) + net : data;
	}
	if (hook == PKTPATH_HOOK_NET_DEV_QUEUE && (type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK))
		return data + ETH_HLEN;
	return data;
}

/* The packet's Ethernet header, where its device has one and it is still there; else NULL. */
static __always_inline unsigned char *frame_of(struct sk_buff *skb, __u8 hook, __u16 type,
					       bool btf)
{
	unsigned char *head, *data = READ(btf, skb, data);
	__u16 mac = READ(btf, skb, mac_header);

	if (type != ARPHRD_ETHER && type != ARPHRD_LOOPBACK)
		return NULL;
	if (hook == PKTPATH_HOOK_NET_DEV_QUEUE)
		return data;
	if (mac == (__u16)~0U)
		return NULL;
	head = READ(btf, skb, head);
	if (hook == PKTPATH_HOOK_KFREE_SKB || hook == PKTPATH_HOOK_ICMP_SEND) {
		__u16 net = READ(btf, skb, network_header);

		return net && mac + ETH_HLEN == net ? head + mac : NULL;
	}
	return head + mac + ETH_HLEN == data ? head + mac : NULL;
}

static __always_inline int handle(void *ctx, struct sk_buff *hook_skb, __u8 hook, bool btf,
				  __u64 location, __u32 reason)
{
	struct sk_buff *skb = UNTRUSTED(btf, hook_skb, struct sk_buff);
	struct net_device *dev = READ(btf, skb, dev);
	struct headers h = {};
	struct ct_note ct = {};
	__u16 type = 0;
	/* the skb's address as a number: kept as a pointer, it would make every state after
	 * the filter differ from a tracked packet's and the verifier walk both */
	__u64 key = skb_key(skb, btf), head = 0, packet = 0, traces = 0, now = 0;
	bool fresh = false;

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

	h.l3 = network_header(skb, hook, type, btf);
	skip_vlan_tags(&h, btf);

	/* until a packet or connection is followed, the filter alone decides */
	if (cfg.track && (tracking_started || conns_started)) {
		if (tracking_started) {
			head = head_of(skb, btf);
			packet = packet_of(key, head, hook, &h, &ct.conn, &traces, &now, btf);
		}
		if (!packet) /* a packet of a tracked connection */
			ct.conn = conn_of(&h, &traces, btf);
	}
	if (!packet && !ct.conn) {
		if (cfg.trace_set) {
			traces = packet_traces(&h, btf);
			if (!traces)
				return 0;
		}
		if ((cfg.proto || cfg.port || cfg.n_host4 || cfg.n_host6) && !packet_wanted(&h, btf))
			return 0;
	}
	/* the agent's namespaces are nearly all of its node's: a lookup that seldom refuses, so
	 * asked only of a packet that may be wanted (a trace's address, a followed packet) */
	if (cfg.netns_set && dev) {
		__u32 inode = netns_of(dev, btf);

		if (!bpf_map_lookup_elem(&netns_set, &inode))
			return 0;
	}
	/* only a packet that may be wanted pays for finding its Ethernet header */
	h.l2 = frame_of(skb, hook, type, btf);
	if (!packet) {
		if (!ct.conn && (cfg.cbpf_len_l2 || cfg.cbpf_len_l3) &&
		    !expression_wanted(skb, &h, btf))
			return 0;
		packet = key;
		fresh = true;
	}
	if (cfg.track) {
		__u64 conn = ct.conn;

		ct_note(skb, &ct, traces, btf);
		/* a new packet, or one that joined a connection here: its next hops know */
		if (hook != PKTPATH_HOOK_KFREE_SKB && (fresh || ct.conn != conn))
			track_packet(key, head ? head : head_of(skb, btf), packet,
				     fingerprint_at(h.l3, h.ethertype, 0, btf), ct.conn, traces,
				     now ? now : coarse_ns());
	}
	if (cfg.ifname[0] && dev && !ifname_wanted(dev, btf))
		return 0;
	if (btf) {
		emit(ctx, skb, dev, &h, hook, btf, location, reason, packet, fresh, &ct, traces);
	} else {
		/* raw_tp: the values copied by a probe read, which the verifier then knows only
		 * as numbers: it checks emit() once for them all, not once for each way a packet
		 * came here (under tp_btf what it knows of them saves it more than this would) */
		struct {
			struct headers h;
			struct ct_note ct;
			__u64 packet, traces;
			bool fresh;
		} known = { h, ct, packet, traces, fresh }, as_numbers;

		bpf_probe_read_kernel(&as_numbers, sizeof(as_numbers), &known);
		emit(ctx, skb, dev, &as_numbers.h, hook, btf, location, reason, as_numbers.packet,
		     as_numbers.fresh, &as_numbers.ct, as_numbers.traces);
	}
	return 0;
}


/* Every hook twice: tp_btf (typed skb, direct loads) and raw_tp (probe reads), from one body in
 * which `btf` is a constant; the loader keeps one of the two. */
#define TWIN_AS(name, tp, body, ...)                                                     \
	SEC("tp_btf/" #tp)                                                               \
	int BPF_PROG(tp_btf_##name, __VA_ARGS__)                                         \
	{                                                                                \
		const bool btf = true;                                                   \
		return body;                                                             \
	}                                                                                \
	SEC("raw_tp/" #tp)                                                               \
	int BPF_PROG(raw_tp_##name, __VA_ARGS__)                                         \
	{                                                                                \
		const bool btf = false;                                                  \
		return body;                                                             \
	}
#define TWIN(tp, body, ...) TWIN_AS(tp, tp, body, __VA_ARGS__)

TWIN(net_dev_queue, handle(ctx, skb, PKTPATH_HOOK_NET_DEV_QUEUE, btf, 0, 0),
     struct sk_buff *skb)
TWIN(netif_receive_skb, handle(ctx, skb, PKTPATH_HOOK_NETIF_RECEIVE_SKB, btf, 0, 0),
     struct sk_buff *skb)
TWIN(kfree_skb, handle(ctx, skb, PKTPATH_HOOK_KFREE_SKB, btf, (__u64)location, reason),
     struct sk_buff *skb, void *location, int reason)
/* before 5.17 kfree_skb had no reason: the loader picks this one when the kernel says so */
TWIN_AS(kfree_skb_noreason, kfree_skb,
	handle(ctx, skb, PKTPATH_HOOK_KFREE_SKB, btf, (__u64)location, 0),
	struct sk_buff *skb, void *location)
TWIN(icmp_send, handle(ctx, skb, PKTPATH_HOOK_ICMP_SEND, btf, 0,
		       (type & 0xFF) << 8 | (code & 0xFF)),
     struct sk_buff *skb, int type, int code)
TWIN(consume_skb, untrack(skb, btf), struct sk_buff *skb)
/* the drop watch: kfree_skb counted in drop_counts, with or without reasons */
TWIN_AS(drop_count, kfree_skb, count_drop(skb, btf, (__u64)location, reason),
	struct sk_buff *skb, void *location, int reason)
TWIN_AS(drop_count_noreason, kfree_skb, count_drop(skb, btf, (__u64)location, 0),
	struct sk_buff *skb, void *location)
TWIN(fib_table_lookup, route_lookup(table, flp, nhc, err, btf),
     __u32 table, struct flowi4 *flp, struct fib_nh_common *nhc, int err)
TWIN(fib6_table_lookup, route6_lookup(net, res, table, flp, btf),
     struct net *net, struct fib6_result *res, struct fib6_table *table, struct flowi6 *flp)
