// SPDX-License-Identifier: GPL-2.0
/*
 * Routing decisions (--routes): the fib lookups' results as events of their own.
 */
#ifndef PKTPATH_ROUTES_H
#define PKTPATH_ROUTES_H

#include "common.h"
#include "filter.h"

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

#endif /* PKTPATH_ROUTES_H */
