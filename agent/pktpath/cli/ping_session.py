"""``pktpath ping``: send probes of our own, trace only them, count where each was seen.

A :class:`PingSession` sends a probe every interval and turns the hops of its probes (known by
their ICMP id/sequence or source port) into a :class:`~pktpath.core.hopstats.Table`; the live
view and the report both run the tracer's read loop with :meth:`PingSession.tick` between reads
and :meth:`PingSession.add` for each hop.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field

from pktpath.core.errors import UsageError
from pktpath.core.filters import TraceFilter, parse_host, probe_filter
from pktpath.core.hopstats import Place, Table
from pktpath.core.tracer import Hop, Tracer
from pktpath.host.names import NetnsNames
from pktpath.host.netns import Netns
from pktpath.host.probing import Prober


def resolve_target(target: str) -> str:
    """The IP address of TARGET (an address, or a name resolved here)."""
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(target, None, type=socket.SOCK_RAW)
    except socket.gaierror:
        raise UsageError(f"{target!r} is not an IP address or a name that resolves") from None
    return str(infos[0][4][0])


def ping_filter(target: str, protocol: str, port: int) -> TraceFilter:
    """The kernel filter for probes to target: its address, and the protocol (and port)."""
    return probe_filter((parse_host(target),), protocol, port)


@dataclass
class PingSession:
    """Probes from one namespace to one target, and the table of where they were seen."""

    tracer: Tracer
    source: Netns
    target: str
    protocol: str = "icmp"
    port: int = 0
    count: int = 0  # 0: until stopped
    interval: float = 1.0
    timeout: float = 1.0
    names: NetnsNames = field(default_factory=NetnsNames)
    table: Table = field(init=False)
    prober: Prober = field(init=False)
    paused: bool = False
    next_probe: int = 1
    _next_send: float = 0.0
    _last_sent: float = 0.0

    def __post_init__(self) -> None:
        self.table = Table(int(self.timeout * 1e9))
        self.prober = Prober(self.source.path, self.target, self.protocol, self.port,
                             ident=os.getpid() & 0xFFFF)

    @property
    def sending_done(self) -> bool:
        """All count probes are sent."""
        return bool(self.count) and self.next_probe > self.count

    @property
    def finished(self) -> bool:
        """All probes sent and the last one's time-out passed."""
        return self.sending_done and time.monotonic() - self._last_sent >= self.timeout

    def tick(self, timeout_ms: int = 50) -> int:
        """Send a probe when one is due; how long (ms, at most timeout_ms) the next read of the
        ring buffer may wait before the next probe is due."""
        now = time.monotonic()
        if not self.paused and not self.sending_done and now >= self._next_send:
            number = self.next_probe
            self.table.probe_sent(number, time.clock_gettime_ns(time.CLOCK_MONOTONIC))
            try:
                self.prober.send(number)
            except OSError as exc:
                raise UsageError(f"cannot send a probe to {self.target} from "
                                 f"{self.source.name or self.source.path}: {exc.strerror}"
                                 ) from None
            self.next_probe += 1
            self._last_sent = now
            self._next_send = now + self.interval
        if self.paused or self.sending_done:
            return timeout_ms
        return max(0, min(timeout_ms, int((self._next_send - time.monotonic()) * 1000)))

    def add(self, hop: Hop) -> None:
        """Count a hop when it belongs to one of our probes."""
        if hop.fate is not None and not hop.fate.drop:
            return  # delivered: the end of a path, not a place
        found = self.prober.identify(hop.packet)
        if found is None:
            return
        probe, direction = found
        e = hop.event
        place = Place(self.names(e.netns), e.ifname or "-", direction, e.netns)
        drop = hop.fate.reason if hop.fate is not None else None
        self.table.seen(probe, place, time_ns=e.time_ns, drop_reason=drop,
                        explain=(hop.fate.explain or "") if hop.fate is not None else "")

    def reset(self) -> None:
        """Start counting again (sent probes keep their numbers)."""
        self.table.reset()

    def close(self) -> None:
        """Close the probe sockets."""
        self.prober.close()
