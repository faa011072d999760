"""Run an attached tracer until it is told to stop: write each hop, report losses, summarise.

Output rules (README.md): results go to ``out`` (stdout), messages to ``err`` (stderr), each
message one line starting with ``pktpath:``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple, TextIO

from pktpath.core.hooks import without

if TYPE_CHECKING:  # `pktpath trace` imports them while its programs load
    from pktpath.core.tracer import Hop, Tracer

LOSS_CHECK_SECONDS = 1.0


class SessionResult(NamedTuple):
    """What a session did."""

    shown: int
    lost: int


def message(err: TextIO, text: str) -> None:
    """One line for the user on stderr."""
    err.write(f"pktpath: {text}\n")
    err.flush()


def announce(tracer: Tracer, err: TextIO) -> None:
    """Say what is traced where, and what did not attach."""
    report = tracer.report
    if report.fallback_reason:
        message(err, f"tp_btf programs refused ({report.fallback_reason}); using raw_tp "
                "('--hook-type tp_btf' says why)")
    for status in report.hooks:
        if status.note and status.hook_type:
            message(err, f"hook {status.hook.tracepoint}: {status.note}")
        if status.error:
            missing = without(status.hook)
            message(err, "; ".join(filter(None, (
                f"hook {status.hook.tracepoint} not attached ({status.error})", missing,
                "the other hooks keep working"))))
    if tracer.filter.empty:
        # following every packet is a fifth of the kernel's cost then (bench/suite.py (c))
        lighter = (" (or add --no-track: the same hops, without the packet identity and "
                   "conntrack keys that following packets gives, at about four fifths of the "
                   "kernel's cost)" if tracer.filter.track else "")
        message(err, "no filter: tracing every packet on every interface is heavy; narrow it "
                     f"with --host, --proto, --port, --netns or -i{lighter}")
    hooks = ", ".join(f"{s.hook.tracepoint}" for s in report.attached)
    kind = report.attached[0].hook_type
    message(err, f"tracing {tracer.filter.describe()} at {hooks} ({kind}); Ctrl-C stops")


def formatter(as_json: bool, latency: bool = False,
              names: Callable[[int], str] | None = None,
              addresses: Mapping[str, str] | None = None) -> Callable[[Hop], str]:
    """The function that turns a hop into its output line (marking NAT rewrites, naming
    namespaces and, with addresses, some addresses)."""
    from pktpath.view.hops import Connections, LastKeys, Rewrites, json_line, text_line

    rewrites, connections, last = Rewrites(), Connections(), LastKeys()

    def name(hop: Hop) -> str | None:
        return names(hop.event.netns) if names is not None and hop.event.netns else None

    def line(hop: Hop) -> str:  # a flood's every event: the cheap tests inline
        e = hop.event
        return json_line(hop, rewrites(hop),
                         names(e.netns) if names is not None and e.netns else None,
                         connections(hop) if e.conn else None, addresses, last)

    if as_json:
        return line
    return lambda hop: text_line(hop, latency, rewrites(hop), name(hop), connections(hop),
                                 addresses)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set stop on SIGINT or SIGTERM while the block runs (main thread only)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _sig, _frame: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def gap(out: TextIO, err: TextIO, as_json: bool, lost: int, total: int) -> None:
    """Say that events were lost here: live on stderr, and in the JSON stream where it
    happened (``{"gap": {"lost": N, "lost_total": M}}``)."""
    message(err, f"{lost} events lost: the ring buffer was full (narrow the filter or enlarge "
                 "--buffer-size)")
    if as_json:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # numbers only: no json module
        out.write(f'{{"gap":{{"lost":{lost},"lost_total":{total},"time_ns":{now}}}}}\n')


def run(
    tracer: Tracer,
    stop: threading.Event,
    out: TextIO,
    err: TextIO,
    *,
    as_json: bool = False,
    latency: bool = False,
    count: int = 0,
    annotate: Callable[[Hop], Hop] | None = None,
    names: Callable[[int], str] | None = None,
    on_hop: Callable[[Hop], None] | None = None,
    addresses: Mapping[str, str] | None = None,
) -> SessionResult:
    """Write hops to out until stop is set or count hops were written; then the summary.

    names names namespaces; on_hop sees every hop written (the pcap-ng file, the diagram).
    """
    fmt = formatter(as_json, latency, names, addresses)
    shown = reported_lost = 0
    next_check = time.monotonic() + LOSS_CHECK_SECONDS
    # a read's lines, written at once after it: one write per read, not per line, however out
    # is buffered (PYTHONUNBUFFERED, set in many container images, makes each line a syscall)
    lines: list[str] = []

    def write(hop: Hop) -> bool:
        nonlocal shown
        if annotate is not None:
            hop = annotate(hop)
        lines.append(fmt(hop))
        if on_hop is not None:
            on_hop(hop)
        shown += 1
        if count and shown >= count:
            stop.set()
            return True
        return False

    def emit() -> None:
        if lines:
            lines.append("")
            out.write("\n".join(lines))
            lines.clear()

    def tick() -> int:
        nonlocal next_check, reported_lost
        emit()
        if time.monotonic() >= next_check or stop.is_set():
            next_check = time.monotonic() + LOSS_CHECK_SECONDS
            lost = tracer.lost()
            if lost > reported_lost:
                gap(out, err, as_json, lost - reported_lost, lost)
                reported_lost = lost
        out.flush()
        return 100

    tracer.follow(stop, write, tick)
    emit()
    out.flush()
    lost = tracer.lost()
    if as_json and lost > reported_lost:
        gap(out, err, as_json, lost - reported_lost, lost)
    message(err, f"{shown} events shown, {lost} lost")
    return SessionResult(shown, lost)
