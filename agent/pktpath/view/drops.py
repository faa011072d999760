"""Views of the drop watch: rows of an interval, as a top-like table or one JSON object.

A row names a place where packets die (namespace, interface, reason, where in the kernel)
with its count in the interval, its total since the watch started and its rate. Rows are
sorted by rate, then total.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

COLUMNS = ("NAMESPACE", "INTERFACE", "REASON", "LOCATION", "COUNT", "TOTAL", "RATE/s")


@dataclass(frozen=True)
class DropRow:
    """One place and cause of drops, named."""

    netns: int  # inode, 0 when the packet had no device
    netns_name: str
    ifname: str  # "" when the packet had no device
    reason: str
    location: str  # kernel symbol+offset
    count: int  # in the interval
    total: int  # since the watch started
    interval_s: float

    @property
    def rate(self) -> float:
        """Drops per second in the interval."""
        return self.count / self.interval_s if self.interval_s > 0 else 0.0

    def json(self) -> dict[str, Any]:
        """The row's JSON object: only the keys that apply (README, `pktpath drops --json`)."""
        out: dict[str, Any] = {}
        if self.netns:
            out["netns"] = self.netns
            out["netns_name"] = self.netns_name
        if self.ifname:
            out["ifname"] = self.ifname
        out.update(reason=self.reason, location=self.location, count=self.count,
                   total=self.total)
        return out


def ordered(rows: Iterable[DropRow]) -> list[DropRow]:
    """Highest rate first, then highest total, then by place (stable output)."""
    return sorted(rows, key=lambda r: (-r.count, -r.total, r.netns_name, r.ifname, r.reason,
                                       r.location))


def interval_json(when: float, interval_s: float, rows: Iterable[DropRow]) -> dict[str, Any]:
    """One interval: ``{"time", "interval_s", "drops": [...]}``."""
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="seconds")
    return {"time": stamp.replace("+00:00", "Z"), "interval_s": round(interval_s, 3),
            "drops": [row.json() for row in ordered(rows)]}


def cells(row: DropRow) -> tuple[str, ...]:
    """The table's cells for a row."""
    return (row.netns_name if row.netns else "-", row.ifname or "-", row.reason, row.location,
            str(row.count), str(row.total), f"{row.rate:.1f}")


def text_table(rows: Iterable[DropRow]) -> str:
    """A plain table (for pipes, and the summary at the end)."""
    lines = [COLUMNS, *(cells(r) for r in ordered(rows))]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
                     .rstrip() for line in lines)
