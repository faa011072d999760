"""ICMP echo from inside a network namespace: the probes of `pktpath demo` (and later `ping`)."""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time

from pktpath.core.packet import ECHO_REPLY, ECHO_REQUEST
from pktpath.host.netns import socket_in


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, v6: bool, payload: bytes = b"pktpath" * 8) -> bytes:
    """An ICMP (or ICMPv6) echo request; the kernel fills in the ICMPv6 checksum."""
    kind = ECHO_REQUEST[58 if v6 else 1]
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return header + payload
    return struct.pack("!BBHHH", kind, 0, checksum(header + payload), ident, seq) + payload


def ping(netns_path: str, dst: str, count: int, *, interval: float = 0.2, timeout: float = 1.0,
         ident: int | None = None, stop: threading.Event | None = None) -> list[float | None]:
    """Send count echo requests to dst from the namespace at netns_path.

    Returns the round-trip time in seconds of each, None where no reply came in time.
    """
    v6 = ipaddress.ip_address(dst).version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    ident = (os.getpid() if ident is None else ident) & 0xFFFF
    rtts: list[float | None] = []
    with socket_in(netns_path, family, socket.SOCK_RAW, proto) as sock:
        for seq in range(1, count + 1):
            if stop is not None and stop.is_set():
                break
            sent = time.monotonic()
            sock.sendto(echo_request(ident, seq, v6), (dst, 0))
            rtts.append(_wait_reply(sock, ident, seq, v6, sent, timeout))
            if seq < count:
                time.sleep(max(0.0, interval - (time.monotonic() - sent)))
    return rtts


def _wait_reply(sock: socket.socket, ident: int, seq: int, v6: bool, sent: float,
                timeout: float) -> float | None:
    deadline = sent + timeout
    reply = ECHO_REPLY[58 if v6 else 1]
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        packet = sock.recv(65535)
        # raw IPv4 sockets hand over the IP header, raw IPv6 sockets do not
        icmp = packet if v6 else packet[(packet[0] & 0x0F) * 4:]
        if len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            return time.monotonic() - sent
    return None
