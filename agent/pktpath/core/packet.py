"""Decode the packet bytes of an event: Ethernet, 802.1Q, ARP, IPv4, IPv6, ICMP(v6), TCP, UDP.

The bytes come from the kernel and may be anything: the decoder never raises, it decodes as
far as the bytes go and sets ``truncated`` when a header was cut short.
"""

from __future__ import annotations

import functools
import socket
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
VLAN_ETHERTYPES = (0x8100, 0x88A8)

IPPROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 47: "gre", 4: "ipip", 41: "ipv6",
                 132: "sctp", 50: "esp"}
# IPv6 extension headers walked to reach the upper-layer protocol
_IPV6_EXT = {0, 43, 44, 51, 60, 135}
_MAX_IPV6_EXT = 16

# tcpdump's order and letters for TCP flags (FIN SYN RST PSH ACK URG ECE CWR)
_TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "."), (0x20, "U"),
              (0x40, "E"), (0x80, "W"))


def tcp_flags_text(flags: int) -> str:
    """TCP flags in tcpdump's notation: ``S``, ``S.``, ``P.``, ``F.``, ``R``; ``none`` for 0."""
    return "".join(letter for bit, letter in _TCP_FLAGS if flags & bit) or "none"


# Addresses as text, remembered: a flood repeats a few, and each event has two to four
@functools.lru_cache(maxsize=4096)
def _mac(b: bytes) -> str:
    return b.hex(":")


@functools.lru_cache(maxsize=4096)
def _ip4(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, b)


@functools.lru_cache(maxsize=4096)
def _ip6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


# ICMP echo type numbers by IP protocol (1: ICMP, 58: ICMPv6): their one definition
ECHO_REQUEST = {1: 8, 58: 128}
ECHO_REPLY = {1: 0, 58: 129}

VXLAN_PORTS = (4789, 8472)  # IANA's, and Linux's (and flannel's) default


@dataclass(frozen=True, slots=True)
class Tunnel:
    """The outer packet of an encapsulated one."""

    type: str  # "vxlan"
    src: str | None
    dst: str | None
    vni: int | None = None


@dataclass(slots=True)  # not frozen: see RawEvent
class Packet:
    """What the headers of one packet say; a field is None when it does not apply."""

    eth_src: str | None = None
    eth_dst: str | None = None
    vlans: tuple[int, ...] = ()  # VLAN ids of tags inside the frame, outermost first
    ethertype: int | None = None
    family: str | None = None  # "ipv4", "ipv6", "arp", or None for other ethertypes
    src: str | None = None
    dst: str | None = None
    ttl: int | None = None  # TTL or hop limit
    ip_proto: int | None = None
    proto: str | None = None  # "icmp", "icmpv6", "tcp", "udp", or "ip-proto-N"
    fragment: bool = False  # a later IP fragment: no upper-layer header
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    payload_len: int | None = None  # UDP payload bytes (from the UDP header)
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    arp_op: int | None = None
    arp_sha: str | None = None
    truncated: bool = False
    tunnel: Tunnel | None = None  # set when the fields above describe an encapsulated packet

    @property
    def echo(self) -> str | None:
        """``request`` or ``reply`` for an ICMP(v6) echo, else None."""
        return echo_kind(self.ip_proto, self.icmp_type)


def echo_kind(ip_proto: int | None, icmp_type: int | None) -> str | None:
    """``request`` or ``reply`` when (ip_proto, icmp_type) is an ICMP(v6) echo, else None."""
    if ip_proto is None or icmp_type is None:
        return None
    if ECHO_REQUEST.get(ip_proto) == icmp_type:
        return "request"
    if ECHO_REPLY.get(ip_proto) == icmp_type:
        return "reply"
    return None


def decode(data: bytes, l2: bool, ethertype: int) -> Packet:
    """Decode ``data``: Ethernet first when ``l2``, else the header ``ethertype`` names."""
    p = Packet()
    try:
        inner = _decode(data, l2, ethertype, p)
    except (_Truncated, struct.error):  # a header cut short (unpack_from past the end)
        p.truncated = True
        return p
    if inner is not None:
        vni = int.from_bytes(data[inner + 4:inner + 7], "big")
        decoded = decode(data[inner + 8:], True, 0)
        if decoded.family is not None:
            decoded.tunnel = Tunnel("vxlan", p.src, p.dst, vni)
            return decoded
    return p


class Recent:
    """decode() remembering the packets it decoded last: one packet is seen at several hooks
    in a row (transmit, receive, free) with the same bytes, and decoded once. The packets it
    returns are shared between hops: nothing changes a Packet once decoded."""

    def __init__(self, memory: int = 256) -> None:
        self._seen: dict[tuple[bytes, bool, int], Packet] = {}
        self._memory = memory

    def __call__(self, data: bytes, l2: bool, ethertype: int) -> Packet:
        """What decode(data, l2, ethertype) returns."""
        key = (data, l2, ethertype)
        packet = self._seen.get(key)
        if packet is None:
            packet = decode(data, l2, ethertype)
            if len(self._seen) >= self._memory:
                self._seen.clear()  # cheaper than keeping an order; a flood refills it at once
            self._seen[key] = packet
        return packet


class _Truncated(Exception):
    pass


def _take(data: bytes, offset: int, size: int) -> bytes:
    if offset < 0 or offset + size > len(data):
        raise _Truncated
    return data[offset:offset + size]


# Headers read with one unpack each (network order); unpack_from raises struct.error on a
# header cut short, which decode() turns into truncated (the header's fields left unset)
_ETHER = struct.Struct("!6s6sH")  # destination, source, ethertype
_TAG = struct.Struct("!HH")  # 802.1Q: TCI, ethertype
_IPV4 = struct.Struct("!B5xHBB2x4s4s")  # version+IHL, fragment, TTL, protocol, src, dst
_IPV6 = struct.Struct("!6xBB16s16s")  # next header, hop limit, src, dst
_TCP = struct.Struct("!HHII1xB")  # ports, sequence, acknowledgement, flags
_UDP = struct.Struct("!HHH")  # ports, length
_ICMP = struct.Struct("!BB2x")  # type, code (and the checksum, as the header)
_ECHO = struct.Struct("!BB2xHH")  # type, code, id, sequence

# The decoders below fill in p as far as the bytes go; each returns where a VXLAN header
# starts when the packet carries one (None when not)


def _decode(data: bytes, l2: bool, ethertype: int, p: Packet) -> int | None:
    offset = 0
    if l2:
        dst, src, ethertype = _ETHER.unpack_from(data)
        p.eth_dst, p.eth_src = _mac(dst), _mac(src)
        offset = 14
    if ethertype in VLAN_ETHERTYPES:
        vlans: list[int] = []
        while ethertype in VLAN_ETHERTYPES and len(vlans) < 8:
            p.ethertype = ethertype
            tci, next_type = _TAG.unpack_from(data, offset)
            vlans.append(tci & 0x0FFF)
            p.vlans = tuple(vlans)
            ethertype = next_type
            offset += 4
    p.ethertype = ethertype
    if ethertype == ETH_P_IP:
        return _ipv4(data, offset, p)
    if ethertype == ETH_P_IPV6:
        return _ipv6(data, offset, p)
    if ethertype == ETH_P_ARP:
        _arp(data, offset, p)
    return None


def _ipv4(data: bytes, offset: int, p: Packet) -> int | None:
    p.family = "ipv4"
    version_ihl, frag, p.ttl, proto, src, dst = _IPV4.unpack_from(data, offset)
    ihl = (version_ihl & 0x0F) * 4
    p.ip_proto = proto
    p.proto = IPPROTO_NAMES.get(proto) or f"ip-proto-{proto}"
    p.src = _ip4(src)
    p.dst = _ip4(dst)
    if version_ihl >> 4 != 4 or ihl < 20:
        p.truncated = True  # not a well-formed header: addresses only
        return None
    if frag & 0x1FFF:
        p.fragment = True
        return None
    return _upper(data, offset + ihl, proto, p)


def _ipv6(data: bytes, offset: int, p: Packet) -> int | None:
    p.family = "ipv6"
    nexthdr, p.ttl, src, dst = _IPV6.unpack_from(data, offset)
    p.src = _ip6(src)
    p.dst = _ip6(dst)
    offset += 40
    for _ in range(_MAX_IPV6_EXT):
        if nexthdr not in _IPV6_EXT:
            break
        ext = _take(data, offset, 8)
        if nexthdr == 44:  # fragment header
            if int.from_bytes(ext[2:4], "big") & 0xFFF8:
                p.fragment = True
            size = 8
        elif nexthdr == 51:  # AH: length in 4-byte units, minus 2
            size = (ext[1] + 2) * 4
        else:
            size = (ext[1] + 1) * 8
        nexthdr, offset = ext[0], offset + size
    p.ip_proto = nexthdr
    p.proto = IPPROTO_NAMES.get(nexthdr) or f"ip-proto-{nexthdr}"
    if nexthdr in _IPV6_EXT:
        p.truncated = True  # more extension headers than pktpath walks
        return None
    return None if p.fragment else _upper(data, offset, nexthdr, p)


def _upper(data: bytes, offset: int, proto: int, p: Packet) -> int | None:
    if proto == 17:
        p.sport, dport, udp_len = _UDP.unpack_from(data, offset)
        p.dport = dport
        p.payload_len = max(udp_len - 8, 0)
        if dport in VXLAN_PORTS:
            vxlan = data[offset + 8:offset + 16]
            if len(vxlan) == 8 and vxlan[0] & 0x08:
                return offset + 8
    elif proto == 6:
        p.sport, p.dport, p.tcp_seq, p.tcp_ack, p.tcp_flags = _TCP.unpack_from(data, offset)
    elif proto in (1, 58):
        p.icmp_type, p.icmp_code = _ICMP.unpack_from(data, offset)
        if echo_kind(proto, p.icmp_type):
            _type, _code, p.icmp_id, p.icmp_seq = _ECHO.unpack_from(data, offset)
    return None


def _arp(data: bytes, offset: int, p: Packet) -> None:
    p.family = "arp"
    hdr = _take(data, offset, 8)
    p.arp_op = int.from_bytes(hdr[6:8], "big")
    hln, pln = hdr[4], hdr[5]
    body = _take(data, offset + 8, 2 * hln + 2 * pln)
    p.arp_sha = _mac(body[0:hln])
    if pln == 4:
        p.src = _ip4(body[hln:hln + 4])
        p.dst = _ip4(body[2 * hln + 4:2 * hln + 8])


def from_flow(data: bytes) -> Packet:
    """The packet a routing lookup was for (struct pktpath_flow): addresses, protocol, ports."""
    if len(data) < 38:
        return Packet(truncated=True)
    proto, family = data[36], data[37]
    ports = struct.unpack(">HH", data[32:36]) if proto in (6, 17) else (None, None)
    if family == 6:
        src, dst = _ip6(data[0:16]), _ip6(data[16:32])
    else:
        src, dst = _ip4(data[0:4]), _ip4(data[16:20])
    return Packet(ethertype=ETH_P_IPV6 if family == 6 else ETH_P_IP,
                  family="ipv6" if family == 6 else "ipv4", src=src, dst=dst,
                  ip_proto=proto, proto=IPPROTO_NAMES.get(proto, f"ip-proto-{proto}"),
                  sport=ports[0], dport=ports[1])
