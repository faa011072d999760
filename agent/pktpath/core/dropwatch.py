"""The drop watch: every drop on the host counted in the kernel, read as totals per place.

One program on ``skb:kfree_skb`` (bpf/dropwatch.h) counts each real drop in a per-CPU map keyed
by (network namespace, device, drop reason, code location): no ring-buffer record and no
Python work per packet. Reading the map gives running totals; two readings give the counts of
an interval. The map holds a bounded number of keys; a drop whose key finds no room is counted
in the ``DROPS_OVERFLOW`` counter instead.

Frees that are part of delivery are left out in the kernel (the fate rules of
:mod:`pktpath.core.fate`): ``QUEUE_PURGE``, and ``NO_SOCKET`` of an ICMP echo reply (a ping's raw
socket got its copy). What the kernel side cannot tell apart: on kernels before 5.17
``kfree_skb`` has no reason, so every free through it counts, with reason ``UNKNOWN`` — there an
answered ICMP echo request is also freed through it (by ``icmp_rcv``), and user space cannot
tell it from a drop without the packet; the location column shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pktpath.core.event import DROP_KEY_STRUCT, Counter, Hook
from pktpath.core.filters import TraceFilter
from pktpath.core.loader import Probes

DEFAULT_MAP_ENTRIES = 4096


@dataclass(frozen=True, order=True)
class DropPlace:
    """Where and why packets were dropped: a key of the drop watch's map."""

    netns: int  # namespace inode, 0 when the packet had no device
    ifindex: int  # 0 when the packet had no device
    reason: int  # enum skb_drop_reason (0: the kernel gave none)
    location: int  # kernel code address that freed it

    @classmethod
    def unpack(cls, raw: bytes) -> DropPlace:
        """From a raw struct pktpath_drop_key."""
        netns, ifindex, reason, _pad, location = DROP_KEY_STRUCT.unpack(raw)
        return cls(netns, ifindex, reason, location)


@dataclass(frozen=True)
class DropCounts:
    """One reading: the total per place since the watch started, and drops not counted."""

    totals: Mapping[DropPlace, int]
    overflow: int

    def since(self, before: DropCounts) -> dict[DropPlace, int]:
        """The counts of the interval from before to this reading (places with drops only)."""
        return {place: total - before.totals.get(place, 0)
                for place, total in self.totals.items()
                if total > before.totals.get(place, 0)}


class DropWatch:
    """The drop-counting program, attached. Use as a context manager."""

    def __init__(self, map_entries: int = DEFAULT_MAP_ENTRIES, hook_type: str = "auto") -> None:
        self._probes = Probes(TraceFilter(track=False).config(), hooks=(Hook.DROP_COUNT,),
                              hook_type=hook_type, ring_bytes=4096,
                              map_entries={"drop_counts": map_entries})
        self._totals: dict[DropPlace, int] = {}

    def __enter__(self) -> DropWatch:
        self._probes.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hook_type(self) -> str:
        """tp_btf or raw_tp: the program type the kernel took."""
        return self._probes.report.attached[0].hook_type or ""

    @property
    def notes(self) -> list[str]:
        """What the counts lack on this kernel (e.g. no drop reasons before 5.17)."""
        return [s.note for s in self._probes.report.attached if s.note]

    def read(self) -> DropCounts:
        """The totals now (never below an earlier reading's: drops moving inside the kernel
        between two reads may hide from one reading, and show in the next)."""
        for place, n in ((DropPlace.unpack(raw), n)
                         for raw, n in self._probes.drop_counts().items()):
            if n > self._totals.get(place, 0):
                self._totals[place] = n
        overflow = self._probes.counters()[Counter.DROPS_OVERFLOW]
        return DropCounts(dict(self._totals), overflow)

    def close(self) -> None:
        """Detach and free the program and its maps."""
        self._probes.close()
