"""Per-hop statistics of probes: where each probe was seen and how long after it was sent.

The one statistics table behind ``pktpath ping``, the PacketTrace status summary and
``kubectl pktpath`` (so all three count loss the same way).

A row is a place a probe passes: (node, namespace, interface, direction). Its latency is the
time from the probe's sending (or its first hop) to its sighting there. Rows are in path order:
the median latency of a place that comes after another on every probe is larger, so sorting by
it keeps the order. Loss of a row counts the probes that are due (sent more than the time-out
ago, or seen there).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

COLUMNS = ("Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev")


@dataclass(frozen=True, order=True)
class Place:
    """Where a probe was seen."""

    netns_name: str
    ifname: str
    direction: str  # "request" or "reply"
    netns: int = 0
    node: str = ""

    @property
    def label(self) -> str:
        """``node/namespace`` (without the node when there is none)."""
        return f"{self.node}/{self.netns_name}" if self.node else self.netns_name


@dataclass
class Row:
    """What one place saw of the probes."""

    place: Place
    times: dict[int, float] = field(default_factory=dict)  # probe -> milliseconds since sent
    last_probe: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # reason -> probes dropped here
    explain: str = ""

    @property
    def drop_reason(self) -> str | None:
        """The most frequent reason probes were dropped here, if any were."""
        return self.drops.most_common(1)[0][0] if self.drops else None

    def stats(self, due: set[int], sent: int) -> dict[str, Any]:
        """mtr's columns for this row."""
        seen = [self.times[p] for p in sorted(self.times)]
        counted = due | set(self.times)
        lost = len([p for p in counted if p not in self.times])
        return {
            "Loss%": round(100.0 * lost / len(counted), 1) if counted else 0.0,
            "Snt": sent,
            "Last": round(self.times[self.last_probe], 3) if self.times else 0.0,
            "Avg": round(statistics.fmean(seen), 3) if seen else 0.0,
            "Best": round(min(seen), 3) if seen else 0.0,
            "Wrst": round(max(seen), 3) if seen else 0.0,
            "StDev": round(statistics.pstdev(seen), 3) if seen else 0.0,
        }


@dataclass
class Table:
    """Probes sent and where each was seen."""

    timeout_ns: int = 1_000_000_000
    sent_ns: dict[int, int] = field(default_factory=dict)  # probe -> time sent (CLOCK_MONOTONIC)
    rows: dict[Place, Row] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        """Probes sent."""
        return len(self.sent_ns)

    def probe_sent(self, probe: int, time_ns: int) -> None:
        """Probe number probe left at time_ns."""
        self.sent_ns[probe] = time_ns

    def seen(self, probe: int, place: Place, since_ns: int | None = None, *,
             time_ns: int | None = None, drop_reason: str | None = None,
             explain: str = "") -> None:
        """Probe seen at place: since_ns after its sending (or at time_ns, kernel time)."""
        if since_ns is None:
            start = self.sent_ns.get(probe)
            if start is None or time_ns is None:
                return  # not one of ours (or sent before a reset)
            since_ns = time_ns - start
        row = self.rows.setdefault(place, Row(place))
        if probe not in row.times:
            row.times[probe] = since_ns / 1e6
        row.last_probe = max(row.last_probe, probe)
        if drop_reason:
            row.drops[drop_reason] += 1
            row.explain = explain or row.explain

    def reset(self) -> None:
        """Forget everything (mtr's `r`)."""
        self.sent_ns.clear()
        self.rows.clear()

    def due(self, now_ns: int | None) -> set[int]:
        """Probes whose time-out has passed at now_ns (all of them when now_ns is None)."""
        if now_ns is None:
            return set(self.sent_ns)
        return {p for p, t in self.sent_ns.items() if now_ns - t >= self.timeout_ns}

    def ordered(self) -> list[Row]:
        """Rows in path order."""
        return sorted(self.rows.values(),
                      key=lambda r: (statistics.median(r.times.values()) if r.times else 0.0,
                                     r.place))

    def hubs(self, now_ns: int | None = None) -> list[dict[str, Any]]:
        """The rows as mtr's JSON hubs, with pktpath's own keys."""
        due = self.due(now_ns)
        hubs = []
        for count, row in enumerate(self.ordered(), 1):
            p = row.place
            hub: dict[str, Any] = {"count": count, "host": f"{p.ifname}@{p.label}",
                                   **row.stats(due, self.sent), "netns": p.netns,
                                   "netns_name": p.netns_name, "ifname": p.ifname,
                                   "dir": p.direction}
            if p.node:
                hub["node"] = p.node
            if row.drop_reason:
                hub["drop_reason"] = row.drop_reason
                hub["drops"] = sum(row.drops.values())
                if row.explain:
                    hub["explain"] = row.explain
            hubs.append(hub)
        return hubs
