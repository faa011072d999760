"""mtr's shapes of the per-hop statistics (:mod:`pktpath.core.hopstats`): the report as text,
mtr's JSON and CSV, and where probes vanish."""

from __future__ import annotations

import csv
import io
from typing import Any

from pktpath.core.hopstats import COLUMNS, Table


def vanish_index(hubs: list[dict[str, Any]]) -> int | None:
    """Index of the hub where probes vanish: the first with drops, else the last one before
    loss grows; None when nothing is lost."""
    for i, hub in enumerate(hubs):
        if "drop_reason" in hub:
            return i
    for i in range(len(hubs) - 1):
        if hubs[i + 1]["Loss%"] > hubs[i]["Loss%"]:
            return i
    return None


def report_json(table: Table, src: str, dst: str, now_ns: int | None = None) -> dict[str, Any]:
    """``{"report": {"mtr": {...}, "hubs": [...]}}`` as mtr --json writes it."""
    return {"report": {"mtr": {"src": src, "dst": dst, "tos": 0, "tests": table.sent,
                               "psize": "64", "bitpattern": "0x00"},
                       "hubs": table.hubs(now_ns)}}


def report_csv(table: Table, src: str, dst: str, start: int, now_ns: int | None = None) -> str:
    """mtr --csv's columns, then pktpath's (namespace, interface, direction, drop reason)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Mtr_Version", "Start_Time", "Status", "Host", "Hop", "Ip", *COLUMNS,
                     "Netns", "Netns_Name", "Ifname", "Dir", "Drop_Reason"])
    for hub in table.hubs(now_ns):
        writer.writerow(["pktpath", start, "OK", f"{src} -> {dst}", hub["count"], hub["host"],
                         *(hub[c] for c in COLUMNS), hub["netns"], hub["netns_name"],
                         hub["ifname"], hub["dir"], hub.get("drop_reason", "")])
    return out.getvalue()


def report_text(table: Table, src: str, dst: str, start: str, now_ns: int | None = None) -> str:
    """The table as ``mtr --report`` prints it, a row per place."""
    hubs = table.hubs(now_ns)
    width = max([24, *(len(_where(h)) for h in hubs)])
    head = f"HOST: {src} -> {dst}"
    lines = [f"Start: {start}",
             f"{head:<{width + 7}} " + " ".join(f"{c:>7}" for c in COLUMNS)]
    for hub in hubs:
        values = [f"{hub['Loss%']:.1f}%", str(hub["Snt"]),
                  *(f"{hub[c]:.3f}" for c in COLUMNS[2:])]
        line = f"{hub['count']:>3}.|-- {_where(hub):<{width}} " + " ".join(
            f"{v:>7}" for v in values)
        if "drop_reason" in hub:
            line += f"  DROPPED {hub['drop_reason']}"
            if hub.get("explain"):
                line += f" ({hub['explain']})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _where(hub: dict[str, Any]) -> str:
    label = f"{hub['node']}/{hub['netns_name']}" if hub.get("node") else hub["netns_name"]
    return f"{label} {hub['ifname']} {hub['dir']}"
