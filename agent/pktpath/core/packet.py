"""Decode the packet bytes of an event: Ethernet, 802.1Q, ARP, IPv4, IPv6, ICMP(v6), TCP, UDP.

The bytes come from the kernel and may be anything: the decoder never raises, it decodes as
far as the bytes go and sets ``truncated`` when a header was cut short.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, replace

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


def _mac(b: bytes) -> str:
    return b.hex(":")


def _ip4(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, b)


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


@dataclass(frozen=True, slots=True)
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
    fields: dict[str, object] = {}
    try:
        _decode(data, l2, ethertype, fields)
    except _Truncated:
        fields["truncated"] = True
    inner = fields.pop("_inner", None)
    outer = Packet(**fields)  # type: ignore[arg-type]
    if isinstance(inner, int) and not outer.truncated:
        vni = int.from_bytes(data[inner + 4:inner + 7], "big")
        decoded = decode(data[inner + 8:], True, 0)
        if decoded.family is not None:
            return replace(decoded, tunnel=Tunnel("vxlan", outer.src, outer.dst, vni))
    return outer


class _Truncated(Exception):
    pass


def _take(data: bytes, offset: int, size: int) -> bytes:
    if offset < 0 or offset + size > len(data):
        raise _Truncated
    return data[offset:offset + size]


def _decode(data: bytes, l2: bool, ethertype: int, out: dict[str, object]) -> None:
    offset = 0
    if l2:
        eth = _take(data, 0, 14)
        out["eth_dst"], out["eth_src"] = _mac(eth[0:6]), _mac(eth[6:12])
        ethertype = int.from_bytes(eth[12:14], "big")
        offset = 14
    vlans: list[int] = []
    while ethertype in VLAN_ETHERTYPES and len(vlans) < 8:
        out["ethertype"] = ethertype
        tag = _take(data, offset, 4)
        vlans.append(int.from_bytes(tag[0:2], "big") & 0x0FFF)
        out["vlans"] = tuple(vlans)
        ethertype = int.from_bytes(tag[2:4], "big")
        offset += 4
    out["ethertype"] = ethertype
    if ethertype == ETH_P_IP:
        _ipv4(data, offset, out)
    elif ethertype == ETH_P_IPV6:
        _ipv6(data, offset, out)
    elif ethertype == ETH_P_ARP:
        _arp(data, offset, out)


def _ipv4(data: bytes, offset: int, out: dict[str, object]) -> None:
    out["family"] = "ipv4"
    hdr = _take(data, offset, 20)
    ihl = (hdr[0] & 0x0F) * 4
    out["ttl"] = hdr[8]
    proto = hdr[9]
    out["ip_proto"] = proto
    out["proto"] = IPPROTO_NAMES.get(proto, f"ip-proto-{proto}")
    out["src"] = _ip4(hdr[12:16])
    out["dst"] = _ip4(hdr[16:20])
    if hdr[0] >> 4 != 4 or ihl < 20:
        out["truncated"] = True  # not a well-formed header: addresses only
        return
    if int.from_bytes(hdr[6:8], "big") & 0x1FFF:
        out["fragment"] = True
        return
    _upper(data, offset + ihl, proto, out)


def _ipv6(data: bytes, offset: int, out: dict[str, object]) -> None:
    out["family"] = "ipv6"
    hdr = _take(data, offset, 40)
    out["ttl"] = hdr[7]
    out["src"] = _ip6(hdr[8:24])
    out["dst"] = _ip6(hdr[24:40])
    nexthdr, offset = hdr[6], offset + 40
    for _ in range(_MAX_IPV6_EXT):
        if nexthdr not in _IPV6_EXT:
            break
        ext = _take(data, offset, 8)
        if nexthdr == 44:  # fragment header
            if int.from_bytes(ext[2:4], "big") & 0xFFF8:
                out["fragment"] = True
            size = 8
        elif nexthdr == 51:  # AH: length in 4-byte units, minus 2
            size = (ext[1] + 2) * 4
        else:
            size = (ext[1] + 1) * 8
        nexthdr, offset = ext[0], offset + size
    out["ip_proto"] = nexthdr
    out["proto"] = IPPROTO_NAMES.get(nexthdr, f"ip-proto-{nexthdr}")
    if nexthdr in _IPV6_EXT:
        out["truncated"] = True  # more extension headers than pktpath walks
    elif not out.get("fragment"):
        _upper(data, offset, nexthdr, out)


def _upper(data: bytes, offset: int, proto: int, out: dict[str, object]) -> None:
    if proto in (1, 58):
        icmp = _take(data, offset, 4)
        out["icmp_type"], out["icmp_code"] = icmp[0], icmp[1]
        if echo_kind(proto, icmp[0]):
            echo = _take(data, offset + 4, 4)
            out["icmp_id"], out["icmp_seq"] = struct.unpack(">HH", echo)
    elif proto == 6:
        ports = _take(data, offset, 4)
        out["sport"], out["dport"] = struct.unpack(">HH", ports)
        tcp = _take(data, offset, 14)
        out["tcp_seq"], out["tcp_ack"] = struct.unpack(">II", tcp[4:12])
        out["tcp_flags"] = tcp[13]
    elif proto == 17:
        ports = _take(data, offset, 4)
        out["sport"], out["dport"] = struct.unpack(">HH", ports)
        udp_len = int.from_bytes(_take(data, offset + 4, 2), "big")
        out["payload_len"] = max(udp_len - 8, 0)
        vxlan = data[offset + 8:offset + 16]
        if out["dport"] in VXLAN_PORTS and len(vxlan) == 8 and vxlan[0] & 0x08:
            out["_inner"] = offset + 8


def _arp(data: bytes, offset: int, out: dict[str, object]) -> None:
    out["family"] = "arp"
    hdr = _take(data, offset, 8)
    out["arp_op"] = int.from_bytes(hdr[6:8], "big")
    hln, pln = hdr[4], hdr[5]
    body = _take(data, offset + 8, 2 * hln + 2 * pln)
    out["arp_sha"] = _mac(body[0:hln])
    if pln == 4:
        out["src"] = _ip4(body[hln:hln + 4])
        out["dst"] = _ip4(body[2 * hln + 4:2 * hln + 8])


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
