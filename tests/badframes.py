"""Malformed frames for the bad-input test and the decoder corpus: each has its own source MAC
02:00:00:00:00:NN so its hops can be found."""

from __future__ import annotations

import struct

BROADCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def ipv4(proto: int, payload: bytes, *, ihl: int = 5, total: int | None = None) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total if total is not None else
                         20 + len(payload), 1, 0, 64, proto, 0, bytes([10, 200, 99, 1]),
                         bytes([10, 200, 99, 2]))
    return header + payload


ECHO = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"x" * 8


def ipv6_ext_chain(count: int) -> bytes:
    """An IPv6 packet with count extension headers (hop-by-hop, then destination options)
    before a UDP header."""
    exts = b""
    for i in range(count):
        nxt = 60 if i + 1 < count else 17
        exts += bytes([nxt, 0]) + b"\x01\x04\0\0\0\0"  # 8 bytes: a PadN option
    udp = struct.pack("!HHHH", 5353, 53, 8, 0)
    src = bytes.fromhex("fd000200000000000000000000000001")
    dst = bytes.fromhex("fd000200000000000000000000000002")
    return struct.pack("!IHBB", 0x60000000, len(exts) + len(udp), 0, 64) + src + dst + exts + udp


def frames() -> dict[str, bytes]:
    """name -> Ethernet frame; the name says what is wrong with it."""
    def eth(n: int, ethertype: int, body: bytes) -> bytes:
        return BROADCAST + mac(n) + struct.pack("!H", ethertype) + body

    return {
        "truncated-ipv4": eth(1, 0x0800, ipv4(1, ECHO)[:10]),
        "ihl-below-5": eth(2, 0x0800, ipv4(1, ECHO, ihl=3)),
        "ihl-beyond-length": eth(3, 0x0800, ipv4(1, ECHO, ihl=15)),
        "bogus-total-length": eth(4, 0x0800, ipv4(1, ECHO, total=60000)),
        "twelve-ipv6-extension-headers": eth(5, 0x86DD, ipv6_ext_chain(12)),
        "vlan-in-vlan": eth(6, 0x8100, struct.pack("!HH", 5, 0x8100) + struct.pack("!HH", 6, 0x0800)
                            + ipv4(1, ECHO)),
        "truncated-arp": eth(7, 0x0806, bytes.fromhex("0001080006040001") + mac(7)[:2]),
        "zero-length-udp": eth(8, 0x0800, ipv4(17, struct.pack("!HHHH", 1000, 2000, 0, 0))),
        "header-only-ipv4": eth(9, 0x0800, b""),
        "header-only-ipv6": eth(10, 0x86DD, b""),
    }
