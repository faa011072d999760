"""The live per-hop table of ``pktpath ping`` on a terminal (rich), with mtr's keys.

``q`` quits, ``p`` pauses (and resumes) the probes, ``r`` resets the statistics. The row where
probes vanish is highlighted, with the drop reason when the kernel gave one.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.table import Table as RichTable

from pktpath.core.hopstats import COLUMNS, Table
from pktpath.view.mtr import vanish_index

REFRESH_SECONDS = 0.25


@contextmanager
def keys(stream: TextIO) -> Iterator[Callable[[], str]]:
    """A function returning the keys typed since its last call ('' when none; not a tty)."""
    if not stream.isatty():
        yield lambda: ""
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> str:
        typed = ""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            typed += chunk.decode(errors="replace")
        return typed

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def render(table: Table, title: str, status: str) -> RichTable:
    """The table as rich renders it."""
    hubs = table.hubs(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    vanish = vanish_index(hubs)
    view = RichTable(title=title, caption=status, caption_justify="left", box=None,
                     header_style="bold")
    view.add_column("Hop", justify="right")
    for name in ("Namespace", "Interface", "Dir"):
        view.add_column(name)
    for name in COLUMNS:
        view.add_column(name, justify="right")
    view.add_column("Fate")
    for i, hub in enumerate(hubs):
        label = f"{hub['node']}/{hub['netns_name']}" if hub.get("node") else hub["netns_name"]
        fate = ""
        if "drop_reason" in hub:
            fate = f"DROPPED {hub['drop_reason']}"
        elif i == vanish:
            fate = "probes vanish after here"
        view.add_row(str(hub["count"]), label, hub["ifname"], hub["dir"],
                     f"{hub['Loss%']:.1f}%", str(hub["Snt"]),
                     *(f"{hub[c]:.3f}" for c in COLUMNS[2:]), fate,
                     style="bold red" if i == vanish else None)
    return view


@contextmanager
def live_table(table: Table, title: str, status: Callable[[], str], *,
               on_key: Callable[[str], None], out: TextIO,
               stdin: TextIO | None = None) -> Iterator[Callable[[], None]]:
    """The table live on the terminal while the block runs; the block calls the function it
    gets often: it hands typed keys to on_key and redraws the table when a refresh is due."""
    from rich.live import Live

    console = Console(file=out)
    with keys(stdin or sys.stdin) as typed, Live(console=console, auto_refresh=False) as live:
        shown = 0.0

        def refresh() -> None:
            nonlocal shown
            for key in typed():
                on_key(key)
            if time.monotonic() - shown >= REFRESH_SECONDS:
                live.update(render(table, title, status()), refresh=True)
                shown = time.monotonic()

        yield refresh
        live.update(render(table, title, status()), refresh=True)
