"""Probes sent from inside a network namespace, each recognisable by its own identity.

ICMP echo requests carry an identifier and a sequence number; UDP datagrams and TCP SYNs come
from their own source port. The tracer matches hops to probes by that identity, so other
traffic never counts.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from pktpath.core.packet import Packet
from pktpath.host.netns import socket_in
from pktpath.host.pinger import echo_request


def probe_identity(packet: Packet, protocol: str, icmp_ident: int,
                   sports: Mapping[int, int]) -> tuple[int, str] | None:
    """(probe number, "request" or "reply") of a packet that is one of our probes or its
    answer, else None: the one rule that ties a hop to a probe (ping and the agent).

    ICMP probes are echo requests with our identifier, numbered by their sequence; UDP and
    TCP probes are numbered by their source port (sports: source port -> probe number).
    """
    if protocol == "icmp":
        if packet.icmp_id == icmp_ident and packet.icmp_seq is not None and packet.echo:
            return packet.icmp_seq, packet.echo
        return None
    if packet.sport is not None and packet.sport in sports:
        return sports[packet.sport], "request"
    if packet.dport is not None and packet.dport in sports:
        return sports[packet.dport], "reply"
    return None


@dataclass
class Prober:
    """Sends probe number 1, 2, ... from the namespace at netns_path to dst."""

    netns_path: str
    dst: str
    protocol: str  # icmp, udp, tcp
    port: int = 0
    ident: int = 0  # ICMP identifier
    sports: dict[int, int] = field(default_factory=dict)  # source port -> probe number
    _icmp: socket.socket | None = None
    _open: list[socket.socket] = field(default_factory=list)

    @property
    def v6(self) -> bool:
        """True when probing over IPv6."""
        return ipaddress.ip_address(self.dst).version == 6

    def send(self, number: int) -> None:
        """Send probe number (1-based)."""
        family = socket.AF_INET6 if self.v6 else socket.AF_INET
        if self.protocol == "icmp":
            if self._icmp is None:
                proto = socket.IPPROTO_ICMPV6 if self.v6 else socket.IPPROTO_ICMP
                self._icmp = socket_in(self.netns_path, family, socket.SOCK_RAW, proto)
            self._icmp.sendto(echo_request(self.ident, number & 0xFFFF, self.v6), (self.dst, 0))
            return
        kind = socket.SOCK_DGRAM if self.protocol == "udp" else socket.SOCK_STREAM
        sock = socket_in(self.netns_path, family, kind)
        sock.setblocking(False)
        sock.bind(("::" if self.v6 else "0.0.0.0", 0))
        self.sports[sock.getsockname()[1]] = number
        if self.protocol == "udp":
            sock.sendto(b"pktpath probe", (self.dst, self.port))
        else:
            err = sock.connect_ex((self.dst, self.port))  # the SYN leaves now
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                return
        # kept open until close(): a reply finds its socket, so the source does not answer it
        # with a port unreachable (UDP) or a RST (TCP) that would show up as a drop in the path
        self._open.append(sock)

    def identify(self, packet: Packet) -> tuple[int, str] | None:
        """(probe number, "request" or "reply") of a packet of these probes, else None."""
        return probe_identity(packet, self.protocol, self.ident, self.sports)

    def close(self) -> None:
        """Close every socket (reading what replies wait, so none is purged as a drop)."""
        for sock in [*self._open, *([self._icmp] if self._icmp else [])]:
            if sock.type == socket.SOCK_DGRAM:
                _drain(sock)
            sock.close()
        self._open.clear()
        self._icmp = None


def _drain(sock: socket.socket) -> None:
    """Read every datagram waiting on a non-blocking socket."""
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return
        except OSError:  # a queued ICMP error (port unreachable): reported once, read on
            continue
