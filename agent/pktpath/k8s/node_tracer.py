"""One program set for every PacketTrace on a node.

Each trace is a bit (at most 64 at once): its two addresses are keys of the BPF map
``trace_addrs`` carrying its bit, and the kernel tags each wanted packet with the bits of the
traces whose addresses it carries (bpf/traces.h). A new trace is a map update, not a program
load; a packet costs the same with 50 traces as with one. One thread reads the ring buffer and
hands each hop to the subscriptions its bits name; a session reads its subscription as it
would its own Tracer. The programs are attached while at least one trace runs.

A trace with a tcpdump expression still loads its own object (the expression is code).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from pktpath.core.event import Counter
from pktpath.core.filters import TraceFilter
from pktpath.core.loader import LoadReport
from pktpath.core.symbols import Symbols
from pktpath.core.tracer import DRAIN_SECONDS, Hop, Tracer
from pktpath.k8s.podmap import NodeNamespaces

log = logging.getLogger("pktpath.agent")

MAX_TRACES = 64  # bits of pktpath_event.traces
RING_BYTES = 4 << 20  # every trace's events share it
REFRESH_EVERY = 2.0  # seconds between updates of the namespace set
TICK_EVERY = 0.1  # seconds between a session's ticks while hops keep coming


class Counters(Protocol):
    """What the node tracer reports to the agent's metrics."""

    def add(self, name: str, value: int = 1) -> None: ...


class Subscription:
    """One trace's share of the node's programs, read like a Tracer (follow, counters, lost,
    report); close() ends it."""

    shared = True

    def __init__(self, node: NodeTracer, bit: int, report: LoadReport, lost: int) -> None:
        self.bit = bit
        self.report = report
        self._node = node
        self._hops: queue.SimpleQueue[Hop] = queue.SimpleQueue()
        self._seen = 0
        self._lost_at = lost

    def deliver(self, hop: Hop) -> None:
        """A hop for this trace (from the node's reading thread)."""
        self._hops.put(hop)

    def follow(self, stop: threading.Event, on_hop: Callable[[Hop], bool | None],
               tick: Callable[[], int] | None = None, wait_ms: int = 100) -> None:
        """Tracer.follow's contract: hops to on_hop until stop is set (then what is left, for
        at most DRAIN_SECONDS); on_hop returning True ends at once; tick after each wait."""
        next_tick = time.monotonic()
        while not stop.is_set():
            try:
                hop: Hop | None = self._hops.get(timeout=wait_ms / 1000)
            except queue.Empty:
                hop = None
            if hop is not None:
                self._seen += 1
                if on_hop(hop):
                    return
            if tick is not None and (hop is None or time.monotonic() >= next_tick):
                wait_ms = max(tick(), 1)
                next_tick = time.monotonic() + TICK_EVERY
        end = time.monotonic() + DRAIN_SECONDS
        while (left := end - time.monotonic()) > 0:
            try:
                hop = self._hops.get(timeout=left)
            except queue.Empty:
                return
            self._seen += 1
            if on_hop(hop):
                return

    def counters(self) -> dict[Counter, int]:
        """Events handed to this trace, and the node's losses since it started."""
        return {Counter.EMITTED: self._seen, Counter.LOST: self.lost()}

    def lost(self) -> int:
        """Events the node's ring buffer lost since this trace started (any trace's)."""
        return max(self._node.lost() - self._lost_at, 0)

    def set_netns(self, inodes: Iterable[int]) -> None:
        """The node tracer follows the node's namespaces itself."""

    def close(self) -> None:
        """End this trace's share (the programs detach with the last one)."""
        self._node.unsubscribe(self)


class NodeTracer:
    """The node's one program set, shared by its traces. Thread-safe."""

    def __init__(self, namespaces: NodeNamespaces, metrics: Counters, hook_type: str = "auto",
                 symbols: Symbols | None = None, reasons: dict[int, str] | None = None,
                 load_lock: threading.Lock | None = None) -> None:
        self._namespaces = namespaces
        self._metrics = metrics
        self._hook_type = hook_type
        self._symbols, self._reasons = symbols, reasons
        self._load_lock = load_lock or threading.Lock()
        self._lock = threading.Lock()
        self._tracer: Tracer | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._subs: dict[int, Subscription] = {}  # read by the reader without the lock
        self._addresses: dict[int, tuple[str, ...]] = {}

    def subscribe(self, addresses: Iterable[str]) -> Subscription | None:
        """A share for a trace between these addresses; None when MAX_TRACES already run."""
        with self._lock:
            free = next((bit for bit in range(MAX_TRACES) if bit not in self._subs), None)
            if free is None:
                return None
            tracer = self._tracer or self._open()
            sub = Subscription(self, free, tracer.report, tracer.lost())
            self._addresses[free] = tuple(addresses)
            self._subs = {**self._subs, free: sub}
            self._update(tracer)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """End a share; the last one detaches the programs."""
        with self._lock:
            if self._subs.get(sub.bit) is not sub:
                return
            self._subs = {bit: s for bit, s in self._subs.items() if bit != sub.bit}
            del self._addresses[sub.bit]
            if self._tracer is None:
                return
            if self._subs:
                self._update(self._tracer)
            else:
                self._close()

    def lost(self) -> int:
        """Events the ring buffer lost since the programs were attached."""
        tracer = self._tracer
        return tracer.lost() if tracer is not None else 0

    def close(self) -> None:
        """Detach now (the agent is stopping)."""
        with self._lock:
            self._subs, self._addresses = {}, {}
            if self._tracer is not None:
                self._close()

    def _open(self) -> Tracer:
        tracer = Tracer(TraceFilter(netns_set=True, trace_set=True), hook_type=self._hook_type,
                        ring_bytes=RING_BYTES, symbols=self._symbols, reasons=self._reasons)
        with self._load_lock:
            tracer.open()
        tracer.set_netns(self._namespaces.inodes())
        self._tracer = tracer
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(tracer, self._stop),
                                        name="node-tracer", daemon=True)
        self._reader.start()
        self._metrics.add("programs_attached", len(tracer.report.attached))
        log.info("node tracer attached (%s)", tracer.report.attached[0].hook_type)
        return tracer

    def _close(self) -> None:
        tracer, self._tracer = self._tracer, None
        assert tracer is not None
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)
        self._metrics.add("programs_attached", -len(tracer.report.attached))
        self._metrics.add("events_lost", tracer.lost())
        tracer.close()
        log.info("node tracer detached: no trace runs")

    def _update(self, tracer: Tracer) -> None:
        bits: dict[str, int] = {}
        for bit, addresses in self._addresses.items():
            for address in addresses:
                bits[address] = bits.get(address, 0) | 1 << bit
        tracer.set_traces(bits)

    def _read(self, tracer: Tracer, stop: threading.Event) -> None:
        refreshed = time.monotonic()

        def route(hop: Hop) -> None:
            subs: Mapping[int, Subscription] = self._subs
            bits = hop.event.traces
            while bits:
                low = bits & -bits
                sub = subs.get(low.bit_length() - 1)
                if sub is not None:
                    sub.deliver(hop)
                bits ^= low

        def tick() -> int:
            nonlocal refreshed
            if time.monotonic() - refreshed >= REFRESH_EVERY:
                refreshed = time.monotonic()
                tracer.set_netns(self._namespaces.inodes())
            return 100

        try:
            tracer.follow(stop, route, tick)
        except Exception:
            log.exception("the node tracer stopped reading")
