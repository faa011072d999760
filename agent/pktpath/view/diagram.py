"""The path drawn as boxes: a column per network namespace, the request path left to right on
one line and the reply path under it, as in the article::

            host            |   container
    +-----------------------+----------------+
    | docker0 ---> veth0e65 ---> eth0        |
    | docker0 <--- veth0e65 <--- eth0        |
    +-----------------------+----------------+

Columns are in the order the request crosses them (then any namespace only the reply crosses).
An interface where a packet was dropped is marked ``[X]`` and the reason is written below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pktpath.core.hopstats import Table
from pktpath.core.tracer import Hop

ARROW = 6  # " ---> " between two interfaces


@dataclass(frozen=True)
class Stop:
    """One hop of the path: its column (the namespace's name), interface, direction, drop."""

    column: str
    ifname: str
    direction: str
    drop_reason: str | None = None


def draw(path: Sequence[Stop]) -> str:
    """The diagram of a path (hops in path order); an empty string for no hops."""
    if not path:
        return ""
    columns: list[str] = []
    for stop in sorted(path, key=lambda s: s.direction != "request"):  # stable: requests first
        if stop.column not in columns:
            columns.append(stop.column)
    rows = []
    for direction in ("request", "reply"):
        cells: list[list[str]] = [[] for _ in columns]
        for stop in path:
            if stop.direction == direction:
                cells[columns.index(stop.column)].append(
                    stop.ifname + (" [X]" if stop.drop_reason else ""))
        if any(cells):
            rows.append((direction, [c if direction == "request" else c[::-1] for c in cells]))
    inner = [(" <--- " if d == "reply" else " ---> ").join for d, _ in rows]
    texts = [[join(cell) for cell in cells] for join, (_, cells) in zip(inner, rows, strict=True)]
    widths = [max(len(columns[i]), *(len(t[i]) for t in texts)) for i in range(len(columns))]

    def line(direction: str, cells: list[str]) -> str:
        out = "| "
        for i, cell in enumerate(cells):
            pad = widths[i] - len(cell)
            out += cell
            if i + 1 == len(cells):
                out += " " * pad
            elif cell and cells[i + 1]:
                dashes = "-" * (pad + 3)
                out += f" {dashes}> " if direction == "request" else f" <{dashes} "
            else:
                out += " " * (pad + ARROW)
        return out + " |"

    starts = []
    position = 2
    for width in widths:
        starts.append(position)
        position += width + ARROW
    total = position - ARROW + 2
    bounds = [starts[i] + widths[i] + 3 for i in range(len(widths) - 1)]
    border = "".join("+" if x in (0, total - 1, *bounds) else "-" for x in range(total))
    edges = [0, *bounds, total - 1]
    header = ""
    for i, name in enumerate(columns):
        span = edges[i + 1] - edges[i] - 1
        header += name.center(span) + ("|" if i + 1 < len(columns) else "")
    body = [line(direction, text) for (direction, _), text in zip(rows, texts, strict=True)]
    notes = [f"  [X] {s.ifname} in {s.column}: dropped, {s.drop_reason}"
             for s in path if s.drop_reason]
    return "\n".join([" " + header.rstrip(), border, *body, border, *notes]) + "\n"


def diagram_of(table: Table) -> str:
    """The path diagram of an mtr table's rows (pktpath ping, kubectl pktpath)."""
    return draw([Stop(row.place.label, row.place.ifname, row.place.direction, row.drop_reason)
                 for row in table.ordered()])


class FirstPath:
    """Collects, from hops as they come, the stops of the first packet and of its reply."""

    def __init__(self, names: Callable[[int], str]) -> None:
        self._names = names
        self._first = self._reply = 0
        self._ends: tuple[object, ...] = ()
        self._seq: int | None = None
        self.stops: list[Stop] = []

    def __call__(self, hop: Hop) -> None:
        """Note hop if it belongs to the first packet or its reply."""
        p, packet = hop.packet, hop.event.packet
        if not self._first:
            if p.src is None or not packet or p.family == "arp" or (
                    p.ip_proto == 58 and p.icmp_type in range(133, 138)):
                return  # neighbour discovery is not the packet whose path is wanted
            self._first, self._ends = packet, (p.src, p.sport, p.dst, p.dport)
            self._seq = p.icmp_seq
        if p.icmp_seq != self._seq:
            return  # a later echo (its skb may reuse the first one's address)
        if packet == self._first:
            direction = "request"
        elif not self._reply and (p.dst, p.dport, p.src, p.sport) == self._ends:
            self._reply, direction = packet, "reply"
        elif packet == self._reply:
            direction = "reply"
        else:
            return
        if hop.fate is not None and not hop.fate.drop:
            return
        e = hop.event
        stop = Stop(self._names(e.netns), e.ifname or "-", direction,
                    hop.fate.reason if hop.fate is not None else None)
        for i, seen in enumerate(self.stops):
            if (seen.column, seen.ifname, seen.direction) == (stop.column, stop.ifname,
                                                               stop.direction):
                if stop.drop_reason:  # dropped where it was last seen: mark that place
                    self.stops[i] = stop
                return  # else a place seen again: a later packet reusing the same buffer
        self.stops.append(stop)
