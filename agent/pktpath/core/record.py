"""One ring-buffer record decoded: :class:`RawEvent`, the kernel's fields as it wrote them
(the layout is :mod:`pktpath.core.event`'s).

A module of its own because a start imports the layout before its programs begin to load
and this only after: what a start imports first has no dataclasses (that module costs ~10 ms
of imports; named tuples and plain classes there), while a record is a dataclass with slots,
whose fields are the fastest to read (a named tuple's take longer), and every hop reads many.
"""

from __future__ import annotations

import functools
import itertools
import struct
from dataclasses import dataclass

from pktpath.core.event import (
    CT_STATES,
    DATA_OFFSET,
    EVENT_FIELDS,
    EVENT_OFFSETS,
    NO_NAT,
    SNAPLEN,
    STACK_DEPTH,
    CtNat,
    EventFlag,
    Hook,
)

# The header is everything before data[]: decoded with one unpack (the stack skipped: only a
# free has one), data sliced from the record.
_HEADER = struct.Struct("<" + "".join(
    f"{struct.calcsize(code)}x" if name == "stack" else code
    for name, code in EVENT_FIELDS if name != "data"))
_STACK = struct.Struct(f"<{STACK_DEPTH}Q")


# Not frozen, like the packet and the hop made from it: a frozen dataclass sets each field
# through object.__setattr__, ~2 us per event at ~25 fields. Nothing changes one once made.
@dataclass(slots=True)
class RawEvent:
    """One ring-buffer record, fields as the kernel wrote them (integers in host order)."""

    time_ns: int
    skb: int
    netns: int
    ifindex: int
    len: int
    cpu: int
    protocol: int  # ethertype, host order
    vlan_tci: int | None  # None when the skb carried no offloaded tag
    vlan_proto: int | None
    hook: int
    l2: bool  # data starts with an Ethernet header
    flow: bool  # data is a struct pktpath_flow (a routing lookup), not packet bytes
    ifname: str
    data: bytes
    location: int = 0  # kfree_skb: the address that freed the packet
    reason: int = 0  # kfree_skb: enum skb_drop_reason value
    stack: tuple[int, ...] = ()  # kfree_skb: kernel return addresses, innermost first
    nexthop: bytes = b""  # kfree_skb NEIGH_FAILED: the gateway's address (zeros: on-link)
    packet: int = 0  # the same on every hop of one packet (0: not known)
    first: bool = False  # the packet's first hop seen: its id may have been a freed packet's
    conn: int = 0  # the same on every packet of one connection tracked through NAT (0: none)
    traces: int = 0  # with the filter's trace_set: a bit per trace of the agent it is for
    ct_state: str | None = None  # the packet's conntrack entry here: CT_STATES, None: none
    ct_zone: int = 0
    ct_mark: int = 0
    ct_nat: CtNat = NO_NAT  # what that entry translates


_L2, _VLAN, _FLOW, _FIRST = (int(EventFlag.L2), int(EventFlag.VLAN), int(EventFlag.FLOW),
                             int(EventFlag.FIRST))
_CT_STATE = [None, *CT_STATES, *([None] * (256 - 1 - len(CT_STATES)))]
_CT_NAT = [CtNat(i) for i in range(4)]
_NO_STACK: tuple[int, ...] = ()
_STACK_OFFSET = EVENT_OFFSETS["stack"][0]
_STACK_END, _ZERO_WORD = _STACK_OFFSET + 8, bytes(8)
_KFREE_SKB = int(Hook.KFREE_SKB)


@functools.lru_cache(maxsize=1024)
def _ifname(raw: bytes) -> str:
    """An interface name as the kernel wrote it (NUL-padded); few, and one per event."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def decode_event(record: bytes | memoryview) -> RawEvent:
    """Decode one ring-buffer record; raises ValueError when it is shorter than the header."""
    try:
        (time_ns, skb, packet, conn, traces, location, netns, ifindex, length, cpu, reason,
         ct_mark, cap_len, protocol, vlan_tci, vlan_proto, ct_zone, hook, flags, ct_state,
         ct_nat, _pad, nexthop, ifname) = _HEADER.unpack_from(record)
    except struct.error:
        raise ValueError(f"event record of {len(record)} bytes, expected at least "
                         f"{DATA_OFFSET}") from None
    # only a free has a stack, and most frees none (the kernel writes a zero first word)
    stack = (tuple(itertools.takewhile(bool, _STACK.unpack_from(record, _STACK_OFFSET)))
             if hook == _KFREE_SKB and record[_STACK_OFFSET:_STACK_END] != _ZERO_WORD
             else _NO_STACK)
    # data: cap_len bytes, at most SNAPLEN, as far as the record goes (a slice stops there)
    data = bytes(record[DATA_OFFSET:DATA_OFFSET + (cap_len if cap_len < SNAPLEN else SNAPLEN)])
    vlan = flags & _VLAN
    # protocol and vlan_proto: network order in the kernel, read little-endian: swapped
    return RawEvent(
        time_ns, skb, netns, ifindex, length, cpu, (protocol & 0xFF) << 8 | protocol >> 8,
        vlan_tci if vlan else None, (vlan_proto & 0xFF) << 8 | vlan_proto >> 8 if vlan else None,
        hook,
        (flags & _L2) != 0, (flags & _FLOW) != 0,
        _ifname(ifname),
        data,
        location, reason, stack, nexthop, packet, (flags & _FIRST) != 0, conn, traces,
        _CT_STATE[ct_state], ct_zone, ct_mark, _CT_NAT[ct_nat & 3])
