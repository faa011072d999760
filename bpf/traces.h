// SPDX-License-Identifier: GPL-2.0
/*
 * The agent's traces in one program set: each trace is a bit, its two addresses keys of
 * trace_addrs with its bit set; a packet to or from one of them is wanted, tagged with the
 * traces whose addresses it carries (inside VXLAN too). A new trace is a map update, not a
 * program load; a packet pays two bit tests (and a lookup per address whose bit is set),
 * whatever the number of traces.
 */
#ifndef PKTPATH_TRACES_H
#define PKTPATH_TRACES_H

#include "common.h"
#include "filter.h"

/* Key: the address as IPv6, an IPv4 one mapped (::ffff:a.b.c.d); value: the traces' bits. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u8[16]);
	__type(value, __u64);
} trace_addrs SEC(".maps");

/* A bit per hash of each address of trace_addrs (PKTPATH_ADDR_HASH): an address whose bit is
 * clear is no trace's, known without a hash lookup (an array lookup is inlined). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pktpath_addr_bloom);
} trace_bloom SEC(".maps");

static __always_inline __u64 addr_traces(__u32 *key, struct pktpath_addr_bloom *bloom)
{
	__u32 bit = PKTPATH_ADDR_HASH(key[0] ^ key[1] ^ key[2] ^ key[3]);
	__u64 *traces;

	if (!(bloom->bits[(bit / 64) & (PKTPATH_ADDR_BLOOM_WORDS - 1)] & (1ULL << (bit % 64))))
		return 0;
	traces = bpf_map_lookup_elem(&trace_addrs, key);
	return traces ? *traces : 0;
}

/* The traces of an IPv4 header, by its source and destination. */
static __always_inline __u64 ipv4_traces(struct ipv4_header *ip,
					 struct pktpath_addr_bloom *bloom)
{
	__u32 key[4] = { 0, 0, bpf_htonl(0xFFFF), ip->saddr };
	__u64 traces = addr_traces(key, bloom);

	key[3] = ip->daddr;
	return traces | addr_traces(key, bloom);
}

/* The traces of the IP packet at l3, by its source and destination. */
static __always_inline __u64 ip_traces(unsigned char *l3, __u16 ethertype,
				       struct pktpath_addr_bloom *bloom, bool btf)
{
	if (ethertype == ETH_P_IP) {
		struct ipv4_header ip;

		return PKT_COPY(btf, &ip, l3) ? 0 : ipv4_traces(&ip, bloom);
	}
	if (ethertype == ETH_P_IPV6) {
		struct ipv6_header ip6;

		if (PKT_COPY(btf, &ip6, l3))
			return 0;
		return addr_traces(ip6.saddr, bloom) | addr_traces(ip6.daddr, bloom);
	}
	return 0;
}

/* The traces a packet is for: its own addresses', else those of the packet inside it (an
 * IPv4 header read once for both). */
static __always_inline __u64 packet_traces(struct headers *h, bool btf)
{
	struct pktpath_addr_bloom *bloom;
	struct ipv4_header ip;
	unsigned char *inner;
	__u16 ethertype;
	__u32 zero = 0;
	__u64 traces;

	bloom = bpf_map_lookup_elem(&trace_bloom, &zero);
	if (!bloom)
		return 0;
	if (h->ethertype != ETH_P_IP)
		return ip_traces(h->l3, h->ethertype, bloom, btf);
	if (PKT_COPY(btf, &ip, h->l3))
		return 0;
	traces = ipv4_traces(&ip, bloom);
	if (traces)
		return traces;
	inner = vxlan_inner(&ip, h->l3, &ethertype, btf);
	return inner ? ip_traces(inner, ethertype, bloom, btf) : 0;
}

#endif /* PKTPATH_TRACES_H */
