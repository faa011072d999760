"""``pktpath drops``: every drop on the host, counted in the kernel, shown like ``top``.

Each interval the drop watch's totals are read, the interval's counts computed, named
(namespace, interface, drop reason, kernel function) and narrowed by the flags; a terminal
gets a live table, a pipe a plain table per interval, ``--json`` one object per interval.
Ctrl-C (or ``-c N`` intervals) ends it with a summary of everything counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from pktpath.cli.stream import message, stop_on_signals
from pktpath.core.dropwatch import DropCounts, DropPlace, DropWatch
from pktpath.core.errors import UsageError
from pktpath.core.libbpf import Libbpf
from pktpath.core.symbols import Symbols, drop_reasons
from pktpath.host import netns
from pktpath.host.names import InterfaceNames, NetnsNames
from pktpath.host.privileges import require_btf, require_tracing
from pktpath.view.drops import DropRow, interval_json, ordered, text_table


@dataclass
class Namer:
    """Names for the parts of a drop place."""

    reasons: dict[int, str]
    symbols: Symbols
    netns_names: Callable[[int], str] = field(default_factory=NetnsNames)
    interfaces: InterfaceNames = field(default_factory=InterfaceNames)

    def reason(self, code: int) -> str:
        return self.reasons.get(code, "UNKNOWN" if code == 0 else str(code))

    def row_key(self, place: DropPlace) -> tuple[int, str, str, str]:
        """(netns, interface, reason, function): places of one function are one row."""
        ifname = self.interfaces(place.netns, place.ifindex) if place.ifindex else ""
        where = self.symbols.function(place.location) or f"0x{place.location:x}"
        return place.netns, ifname, self.reason(place.reason), where


@dataclass(frozen=True)
class Narrow:
    """What the flags keep: a namespace inode, an interface, a reason (None: any)."""

    netns: int | None = None
    ifname: str | None = None
    reason: str | None = None

    def keeps(self, netns_inode: int, ifname: str, reason: str) -> bool:
        return ((self.netns is None or netns_inode == self.netns)
                and (self.ifname is None or ifname == self.ifname)
                and (self.reason is None or reason == self.reason))


def rows_of(now: DropCounts, before: DropCounts, start: DropCounts, seconds: float,
            namer: Namer, narrow: Narrow) -> list[DropRow]:
    """The rows of an interval: per named place, its count since before and total since start."""
    counts: dict[tuple[int, str, str, str], list[int]] = {}
    for place, total in now.totals.items():
        key = namer.row_key(place)
        if not narrow.keeps(key[0], key[1], key[2]):
            continue
        entry = counts.setdefault(key, [0, 0])
        entry[0] += total - before.totals.get(place, 0)
        entry[1] += total - start.totals.get(place, 0)
    return [DropRow(inode, namer.netns_names(inode) if inode else "", ifname, reason, where,
                    count, total, seconds)
            for (inode, ifname, reason, where), (count, total) in counts.items() if total > 0]


def narrow_from(args: argparse.Namespace, reasons: dict[int, str]) -> Narrow:
    """The flags' narrowing, checked: a namespace that exists, a reason the kernel has."""
    inode = netns.resolve(args.netns).inode if args.netns else None
    if args.reason is not None:
        known = {*reasons.values(), "UNKNOWN"}
        if args.reason not in known:
            close = sorted(n for n in known if args.reason.upper().replace("-", "_") in n)
            hint = f" (did you mean {', '.join(close[:5])}?)" if close else ""
            raise UsageError(f"this kernel has no drop reason {args.reason}{hint}")
    return Narrow(inode, args.interface, args.reason)


def run_drops(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``pktpath drops``."""
    require_tracing()
    require_btf()
    libbpf = Libbpf()
    reasons = drop_reasons(libbpf)
    narrow = narrow_from(args, reasons)
    namer = Namer(reasons, Symbols())
    live = not args.json and out.isatty()
    stop = threading.Event()
    with DropWatch(map_entries=args.map_size) as watch, stop_on_signals(stop):
        start = before = watch.read()  # before saying so: what comes after it is counted
        began = last = time.monotonic()
        message(err, f"counting drops at kfree_skb ({watch.hook_type}) every "
                     f"{args.interval:g} s; Ctrl-C stops")
        for note in watch.notes:
            message(err, note)
        shown = 0
        while not stop.wait(args.interval):
            now, at = watch.read(), time.monotonic()
            rows = rows_of(now, before, start, at - last, namer, narrow)
            if args.json:
                body = interval_json(time.time(), at - last,
                                     [r for r in rows if r.count > 0])
                if now.overflow > before.overflow:
                    body["not_counted"] = now.overflow - before.overflow
                out.write(json.dumps(body, separators=(",", ":")) + "\n")
            else:
                if live:
                    out.write("\x1b[H\x1b[2J")
                overflow = now.overflow - start.overflow
                out.write(f"pktpath drops: {sum(r.count for r in rows)} in the last "
                          f"{at - last:.1f} s, {sum(r.total for r in rows)} in {at - began:.0f} s"
                          + (f", {overflow} not counted (map full: --map-size)"
                             if overflow else "") + "\n" + text_table(rows) + "\n\n")
            out.flush()
            before, last = now, at
            shown += 1
            if args.count and shown >= args.count:
                break
        final = watch.read()
    rows = rows_of(final, start, start, time.monotonic() - began, namer, narrow)
    overflow = final.overflow - start.overflow
    summary = (f"{sum(r.total for r in rows)} drops in {time.monotonic() - began:.1f} s"
               + (f"; {overflow} more not counted: the map was full (--map-size)"
                  if overflow else ""))
    message(err, summary)
    if rows:
        err.write(text_table(ordered(rows)) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: pktpath drops")
