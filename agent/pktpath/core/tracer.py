"""The tracing core: attach the probes for a filter and turn ring-buffer records into hops.

Knows nothing of terminals or Kubernetes; the CLI and the agent call :meth:`Tracer.poll`.
"""

from __future__ import annotations

import errno
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pktpath.core.errors import PktpathError
from pktpath.core.event import Counter, Hook
from pktpath.core.fate import Fate, FateJudge, Route
from pktpath.core.filters import TraceFilter
from pktpath.core.hooks import DEFAULT_HOOKS
from pktpath.core.latency import SinceFirst
from pktpath.core.loader import DEFAULT_RING_BYTES, LoadReport, Probes
from pktpath.core.packet import Packet, Recent, decode, from_flow
from pktpath.core.record import RawEvent, decode_event
from pktpath.core.symbols import DropReasons, Symbols

MAX_BATCH = 8192  # records taken from the ring buffer per poll
DRAIN_SECONDS = 0.2  # at most this long reading what is left after a stop


@dataclass(slots=True)  # not frozen: see RawEvent
class Hop:
    """One packet seen on one interface at one hook (or freed, with its fate)."""

    event: RawEvent
    packet: Packet
    fate: Fate | None = None
    since_first_ns: int | None = None  # time since this packet's first hop
    route: Route | None = None  # the routing decision that sent it out of this interface

    @property
    def hook(self) -> Hook | None:
        """The hook, or None for a value this version does not know."""
        try:
            return Hook(self.event.hook)
        except ValueError:
            return None


def hop_from_record(record: bytes, judge: FateJudge | None = None,
                    since_first: SinceFirst | None = None,
                    packets: Recent | None = None) -> Hop | None:
    """Decode one ring-buffer record into a hop; with a judge, frees get their fate; with
    packets, a packet seen at the previous hooks is not decoded again.

    An ICMP error the kernel sends and a routing lookup are not hops: the judge ties them to the
    packet's next transmit or free.
    """
    event = decode_event(record)
    packet = (from_flow(event.data) if event.flow
              else (packets or decode)(event.data, event.l2, event.protocol))
    since = since_first(event, packet) if since_first is not None else None
    if judge is None:
        return Hop(event, packet, None, since)
    hook = event.hook
    if hook in _ROUTE_LOOKUPS:
        judge.route_lookup(event.cpu, event.time_ns, packet, event.location, event.reason,
                           event.ifname, event.nexthop)
        return None
    if hook == _ICMP_SEND:
        judge.icmp_sent(event.skb, packet, event.reason, event.location)
        return None
    route = judge.route_of(event.cpu, event.time_ns, packet)
    if hook == _KFREE_SKB:
        fate = judge.judge(packet, event.reason, event.location, event.stack, event.skb,
                           event.nexthop, route)
        if fate.consumed:
            return None  # as newer kernels, which report it at consume_skb (not shown)
        return Hop(event, packet, fate, since, route)
    judge.observe(packet)
    return Hop(event, packet, None, since, route if hook == _NET_DEV_QUEUE else None)


# the hooks as plain ints: comparing an int with an IntEnum member costs more, per event
_ROUTE_LOOKUPS = frozenset({int(Hook.FIB_TABLE_LOOKUP), int(Hook.FIB6_TABLE_LOOKUP)})
_ICMP_SEND, _KFREE_SKB, _NET_DEV_QUEUE = (int(Hook.ICMP_SEND), int(Hook.KFREE_SKB),
                                          int(Hook.NET_DEV_QUEUE))


class Tracer:
    """Probes attached for one filter. Use as a context manager; read with :meth:`poll`."""

    def __init__(
        self,
        trace_filter: TraceFilter,
        *,
        hooks: Iterable[Hook] = DEFAULT_HOOKS,
        hook_type: str = "auto",
        ring_bytes: int = DEFAULT_RING_BYTES,
        symbols: Symbols | None = None,
        reasons: Mapping[int, str] | None = None,
        map_entries: Mapping[str, int] | None = None,
        probes: Probes | None = None,
    ) -> None:
        """probes: already made for trace_filter (and perhaps started), else made here."""
        self.filter = trace_filter
        # what the kernel calls its code addresses and drop reasons: shared between tracers
        # (the agent's), else read by this one
        self._symbols = symbols
        self._reasons = reasons
        self._probes = probes or Probes.for_filter(
            trace_filter, hooks=hooks, hook_type=hook_type, ring_bytes=ring_bytes,
            map_entries=map_entries)
        self._pending: list[bytes] = []
        self._taken = 0  # records the last read took
        self._rb = 0
        self._judge: FateJudge | None = None
        self._since_first = SinceFirst()
        self._packets = Recent()

    def __enter__(self) -> Tracer:
        return self.open()

    def open(self) -> Tracer:
        """Load and attach (what entering the context does); close() undoes it."""
        try:
            self._probes.open()
            self._rb = self._probes.ring_buffer(self._on_record)
            reasons = self._reasons
            if reasons is None:
                reasons = DropReasons(self._probes.libbpf)
            self._judge = FateJudge(reasons, self._symbols)
        except BaseException:
            self._probes.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def report(self) -> LoadReport:
        """Which hooks attached, with which program type."""
        return self._probes.report

    def _on_record(self, _ctx: object, data: Any, size: int) -> int:
        self._pending.append(data[:size])  # a copy: the ring's space is reused after
        # a flood refills the ring as fast as it is read: stop at a batch, so memory stays
        # bounded and the caller gets control back (this record is kept; libbpf stops there
        # and returns this)
        return -errno.E2BIG if len(self._pending) >= MAX_BATCH else 0

    def poll(self, timeout_ms: int = 100) -> list[Hop]:
        """The hops that arrive within timeout_ms (an empty list on a signal or time-out);
        at most MAX_BATCH at a time."""
        ret = self._probes.poll(self._rb, timeout_ms)
        if ret < 0 and ret not in (-errno.EINTR, -errno.E2BIG):
            raise PktpathError(f"reading the ring buffer failed: {errno.errorcode.get(-ret)}")
        return self._take_pending()

    def drain(self) -> list[Hop]:
        """What is in the ring buffer (at most MAX_BATCH records), without waiting."""
        self._probes.consume(self._rb)
        return self._take_pending()

    def _take_pending(self) -> list[Hop]:
        batch, self._pending = self._pending, []
        self._taken = len(batch)
        hops = (hop_from_record(record, self._judge, self._since_first, self._packets)
                for record in batch)
        return [hop for hop in hops if hop is not None]

    def follow(self, stop: threading.Event, on_hop: Callable[[Hop], bool | None],
               tick: Callable[[], int] | None = None, wait_ms: int = 100) -> None:
        """The one ring-buffer read loop (trace, ping and the agent run it): hand every hop to
        on_hop until stop is set, then what is left in the ring buffer, for at most
        DRAIN_SECONDS (a flood does not hold a stop up).

        on_hop returning True ends the loop at once (a count was reached). tick runs after
        each read: it may set stop, and returns how long the next read may wait (ms).
        """
        stop_by = 0.0
        while True:
            stopping = stop.is_set()
            if stopping and not stop_by:
                stop_by = time.monotonic() + DRAIN_SECONDS
            hops = self.drain() if stopping else self.poll(wait_ms)
            for hop in hops:
                if on_hop(hop):
                    return
            if stopping and (self._taken < MAX_BATCH or time.monotonic() >= stop_by):
                return  # drained (or a flood goes on: stop anyway)
            if tick is not None:
                wait_ms = tick()

    def set_netns(self, inodes: Iterable[int]) -> None:
        """Trace only these namespaces (the filter must have netns_set)."""
        self._probes.set_netns(inodes)

    def set_traces(self, traces: Mapping[str, int]) -> None:
        """The agent's traces (the filter must have trace_set): each address -> the bits of
        the traces it is an end of."""
        self._probes.set_trace_addresses(
            {ipaddress.ip_address(addr).packed.rjust(16, b"\0") if ":" in addr
             else b"\0" * 10 + b"\xff\xff" + ipaddress.ip_address(addr).packed: bits
             for addr, bits in traces.items()})

    def lost(self) -> int:
        """Wanted packets the kernel could not deliver because the ring buffer was full."""
        return self._probes.counters()[Counter.LOST]

    def counters(self) -> dict[Counter, int]:
        """The kernel-side counters."""
        return self._probes.counters()

    def close(self) -> None:
        """Detach everything."""
        self._probes.close()
