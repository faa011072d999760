// SPDX-License-Identifier: GPL-2.0
/*
 * Which packets are wanted: the filter's hosts, protocol and port, tested on the
 * headers where the stack put them (VXLAN looked inside); VLAN tags in the frame skipped.
 */
#ifndef PKTPATH_FILTER_H
#define PKTPATH_FILTER_H

#include "common.h"

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

/* The fixed IPv6 header (extension headers follow it). */
struct ipv6_header {
	__u32 ver_tc_flow;
	__u16 payload_len;
	__u8 nexthdr, hop_limit;
	__u32 saddr[4], daddr[4];
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
#define VXLAN_INNER 30 /* from the end of an IPv4 header: UDP, VXLAN and Ethernet headers */

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
	return l4 + 16 + ETH_HLEN; /* VXLAN_INNER after the IPv4 header */
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

#endif /* PKTPATH_FILTER_H */
