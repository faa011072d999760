"""Time since a packet's first hop.

A packet is known by its skb address (bridges, veths and IP forwarding pass the same struct
sk_buff along) together with its IP protocol and ICMP sequence, within WINDOW_NS: an skb
address is reused once the kernel frees it, so a hop long after the first, or after the
packet was freed, starts a new packet. NAT, tunnels and clones change the skb or the headers;
following a packet through them comes with tracking (not yet).
"""

from __future__ import annotations

from collections import OrderedDict

from pktpath.core.event import Hook
from pktpath.core.packet import Packet
from pktpath.core.record import RawEvent

WINDOW_NS = 1_000_000_000
_KFREE_SKB = int(Hook.KFREE_SKB)  # an int: comparing with the IntEnum costs more, per hop


class SinceFirst:
    """Remembers each packet's first hop; bounded."""

    def __init__(self, memory: int = 65536) -> None:
        self._first: OrderedDict[tuple[int, int | None, int | None], int] = OrderedDict()
        self._memory = memory

    def __call__(self, event: RawEvent, packet: Packet) -> int:
        """Nanoseconds since this packet's first hop (0 for the first)."""
        key = (event.packet or event.skb, packet.ip_proto, packet.icmp_seq)
        first = self._first.get(key)
        if first is None or event.time_ns - first > WINDOW_NS:
            first = event.time_ns
            self._first[key] = first
            if len(self._first) > self._memory:
                self._first.popitem(last=False)
        if event.hook == _KFREE_SKB:
            self._first.pop(key, None)  # the address may now be reused
        return event.time_ns - first
