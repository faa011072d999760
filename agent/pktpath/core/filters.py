"""What to trace: the filter the kernel programs apply, built from user input and checked.

All fields combine with AND; ``hosts`` match when any of them is the source or destination.
"""

from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from pktpath.core.errors import UsageError
from pktpath.core.event import CONFIG_STRUCT, MAX_HOSTS, Proto
from pktpath.core.expression import Compiled

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTO_NAMES = {
    "icmp": Proto.ICMP,
    "icmp6": Proto.ICMP6,
    "icmpv6": Proto.ICMP6,
    "tcp": Proto.TCP,
    "udp": Proto.UDP,
    "arp": Proto.ARP,
}


def parse_proto(text: str) -> Proto:
    """A protocol name as the CLI takes it."""
    try:
        return PROTO_NAMES[text.lower()]
    except KeyError:
        raise UsageError(f"unknown protocol {text!r}: use icmp, icmp6, tcp, udp or arp") from None


def parse_host(text: str) -> IPAddress:
    """An IPv4 or IPv6 address."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"{text!r} is not an IPv4 or IPv6 address (host names are not "
                         "resolved)") from None


def parse_port(text: str) -> int:
    """A TCP or UDP port number."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{text!r} is not a port number (1-65535)")
    return int(text)


class TraceFilter(NamedTuple):
    """A packet filter; the empty filter traces everything. One made from user input is
    :meth:`checked` (a named tuple, which cannot check itself when made: see
    :mod:`pktpath.core.record` on dataclasses)."""

    hosts: tuple[IPAddress, ...] = ()
    proto: Proto = Proto.ANY
    port: int = 0
    netns: int = 0  # namespace inode
    ifname: str = ""
    netns_set: bool = False  # only the namespaces put in the probes' netns set
    expression: Compiled | None = None  # a tcpdump expression, compiled
    track: bool = True  # follow a matched packet through NAT, tunnels and clones
    trace_set: bool = False  # only packets of the agent's traces' addresses (map trace_addrs)

    def checked(self) -> TraceFilter:
        """This filter, when its parts agree; else UsageError says what contradicts what."""
        v4 = [h for h in self.hosts if h.version == 4]
        v6 = [h for h in self.hosts if h.version == 6]
        if len(v4) > MAX_HOSTS or len(v6) > MAX_HOSTS:
            raise UsageError(f"at most {MAX_HOSTS} IPv4 and {MAX_HOSTS} IPv6 hosts")
        if self.port and self.proto not in (Proto.ANY, Proto.TCP, Proto.UDP):
            raise UsageError(f"--port applies to tcp and udp, not {self.proto.name.lower()}")
        if self.hosts and self.proto == Proto.ICMP and not v4:
            raise UsageError("--proto icmp matches IPv4 only: use --proto icmp6 for IPv6 hosts")
        if self.hosts and self.proto == Proto.ICMP6 and not v6:
            raise UsageError("--proto icmp6 matches IPv6 only: use --proto icmp for IPv4 hosts")
        if self.hosts and self.proto == Proto.ARP and not v4:
            raise UsageError("ARP carries IPv4 addresses only: give an IPv4 --host")
        if len(self.ifname.encode()) > 15:
            raise UsageError(f"{self.ifname!r} is not a valid interface name (at most 15 bytes)")
        return self

    @property
    def empty(self) -> bool:
        """True when everything is traced."""
        return self == TraceFilter() or self == TraceFilter(track=False)

    def config(self) -> bytes:
        """The ``struct pktpath_config`` the BPF programs read (of a filter :meth:`checked`
        here too: one made without the check is refused before it is loaded)."""
        self.checked()
        v4 = [h.packed for h in self.hosts if h.version == 4]
        v6 = [h.packed for h in self.hosts if h.version == 6]
        return CONFIG_STRUCT.pack(
            b"".join(v6).ljust(16 * MAX_HOSTS, b"\0"),
            b"".join(v4).ljust(4 * MAX_HOSTS, b"\0"),
            self.ifname.encode(),
            self.netns,
            self.port,
            self.proto,
            len(v4),
            len(v6),
            self.netns_set,
            self.track,
            self.trace_set,
            len(self.expression.ethernet) if self.expression else 0,
            len(self.expression.raw) if self.expression else 0,
            0,  # track_slots: the loader's, when it sizes the tracking tables
        )

    def describe(self) -> str:
        """The filter in words, tcpdump-like: ``icmp and host 10.0.0.2 on eth0``."""
        parts = []
        if self.proto:
            parts.append(self.proto.name.lower())
        if self.hosts:
            parts.append("(" + " or ".join(f"host {h}" for h in self.hosts) + ")"
                         if len(self.hosts) > 1 else f"host {self.hosts[0]}")
        if self.port:
            parts.append(f"port {self.port}")
        if self.expression:
            parts.append(f"({self.expression.expression})" if parts
                         else self.expression.expression)
        text = " and ".join(parts) or "every packet"
        if self.ifname:
            text += f" on {self.ifname}"
        if self.netns:
            text += f" in netns {self.netns}"
        return text


def probe_filter(addresses: tuple[IPAddress, ...], protocol: str, port: int = 0,
                 **more: Any) -> TraceFilter:
    """The filter for probes between addresses: ``protocol`` is icmp, udp or tcp as a user
    names it, and icmp means ICMPv6 when the addresses are IPv6 (ping and the agent)."""
    v6 = addresses[0].version == 6
    proto = {"icmp": Proto.ICMP6 if v6 else Proto.ICMP, "udp": Proto.UDP,
             "tcp": Proto.TCP}[protocol]
    return TraceFilter(hosts=addresses, proto=proto, port=port, **more).checked()
