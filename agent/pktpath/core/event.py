"""Python mirror of ``bpf/event.h``: the event record and the filter config.

Each layout is a list of (field, struct format) pairs in C order. ``tests/test_event_layout.py``
compares the offsets and sizes derived here with the BTF of the shipped object.
"""

from __future__ import annotations

import enum
import functools
import itertools
import struct
from typing import NamedTuple

SNAPLEN = 192
IFNAMSIZ = 16
MAX_HOSTS = 8
STACK_DEPTH = 12
EXPR_SNAP = 256  # bytes of a view a tcpdump expression reads
EXPR_SLOTS = 2048  # eBPF instructions reserved for a translated expression
EXPR_MARK = 0x7E7E7E7E  # imm of each reserved "r0 = imm"


class Hook(enum.IntEnum):
    """Which tracepoint saw the packet (enum pktpath_hook)."""

    NET_DEV_QUEUE = 1
    NETIF_RECEIVE_SKB = 2
    KFREE_SKB = 3
    ICMP_SEND = 4
    FIB_TABLE_LOOKUP = 5
    FIB6_TABLE_LOOKUP = 6
    CONSUME_SKB = 7
    DROP_COUNT = 8  # skb:kfree_skb for the drop watch: counted in a map, no event

    @property
    def tracepoint(self) -> str:
        """The tracepoint's name, as in /sys/kernel/tracing/events/net/."""
        return "kfree_skb" if self is Hook.DROP_COUNT else self.name.lower()

    @property
    def program(self) -> str:
        """Its program's name in the object, after the program type (tp_btf_<program>)."""
        return self.name.lower()


class EventFlag(enum.IntFlag):
    """pktpath_event.flags (enum pktpath_event_flag)."""

    L2 = 1
    VLAN = 2
    FLOW = 4
    FIRST = 8


class CtNat(enum.IntFlag):
    """What a packet's conntrack entry translates (enum pktpath_ct_nat)."""

    SNAT = 1
    DNAT = 2


NO_NAT = CtNat(0)

# enum ip_conntrack_info, as pktpath_event.ct_state holds it (+ 1; 0: no entry)
CT_STATES = ("established", "related", "new", "established-reply", "related-reply")


class Proto(enum.IntEnum):
    """The protocol filter (enum pktpath_proto)."""

    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    ICMP6 = 58
    ARP = 254


class Counter(enum.IntEnum):
    """Indexes of the per-CPU counters map (enum pktpath_counter)."""

    EMITTED = 0
    LOST = 1
    DROPS_OVERFLOW = 2  # drops the drop watch could not count: its map was full


def _layout(fields: list[tuple[str, str]]) -> tuple[struct.Struct, dict[str, tuple[int, int]]]:
    """The struct for fields, and each field's (offset, size)."""
    offsets: dict[str, tuple[int, int]] = {}
    fmt = "<"
    for name, code in fields:
        offsets[name] = (struct.calcsize(fmt), struct.calcsize("<" + code))
        fmt += code
    return struct.Struct(fmt), offsets


EVENT_FIELDS = [
    ("time_ns", "Q"),
    ("skb", "Q"),
    ("packet", "Q"),
    ("conn", "Q"),
    ("traces", "Q"),
    ("location", "Q"),
    ("stack", f"{STACK_DEPTH}Q"),
    ("netns", "I"),
    ("ifindex", "I"),
    ("len", "I"),
    ("cpu", "I"),
    ("reason", "I"),
    ("ct_mark", "I"),
    ("cap_len", "H"),
    ("protocol", "H"),
    ("vlan_tci", "H"),
    ("vlan_proto", "H"),
    ("ct_zone", "H"),
    ("hook", "B"),
    ("flags", "B"),
    ("ct_state", "B"),
    ("ct_nat", "B"),
    ("pad", "2s"),
    ("nexthop", "16s"),
    ("ifname", f"{IFNAMSIZ}s"),
    ("data", f"{SNAPLEN}s"),
]
EVENT_STRUCT, EVENT_OFFSETS = _layout(EVENT_FIELDS)
# The header is everything before data[]: decoded with one unpack (the stack skipped: only a
# free has one), data sliced from the record.
_HEADER = struct.Struct("<" + "".join(
    f"{struct.calcsize(code)}x" if name == "stack" else code
    for name, code in EVENT_FIELDS if name != "data"))
_STACK = struct.Struct(f"<{STACK_DEPTH}Q")
DATA_OFFSET = EVENT_OFFSETS["data"][0]

FLOW_FIELDS = [
    ("saddr", "16s"),
    ("daddr", "16s"),
    ("sport", "2s"),
    ("dport", "2s"),
    ("proto", "B"),
    ("family", "B"),
    ("pad", "2s"),
]
FLOW_STRUCT, FLOW_OFFSETS = _layout(FLOW_FIELDS)

# struct pktpath_conn: a tracked connection, the value of map conn_flows
CONN_FIELDS = [
    ("conn", "Q"),
    ("last_ns", "Q"),
    ("traces", "Q"),
]
CONN_STRUCT, CONN_OFFSETS = _layout(CONN_FIELDS)

# struct pktpath_addr_bloom (map trace_bloom): a bit per hash of each of the agent's traces'
# addresses, PKTPATH_ADDR_HASH of the XOR of the address's four 32-bit words (host order)
ADDR_BLOOM_WORDS = 256
ADDR_BLOOM_FIELDS = [("bits", f"{ADDR_BLOOM_WORDS}Q")]
ADDR_BLOOM_STRUCT, ADDR_BLOOM_OFFSETS = _layout(ADDR_BLOOM_FIELDS)
_WORDS = struct.Struct("=4I")


def addr_hash(address16: bytes) -> int:
    """The trace_bloom bit of a 16-byte address (PKTPATH_ADDR_HASH in bpf/event.h)."""
    a, b, c, d = _WORDS.unpack(address16)
    folded: int = a ^ b ^ c ^ d
    return ((folded * 0x9E3779B1) & 0xFFFFFFFF) >> 18


# struct pktpath_drop_key: the drop watch's map key
DROP_KEY_FIELDS = [
    ("netns", "I"),
    ("ifindex", "I"),
    ("reason", "I"),
    ("pad", "I"),
    ("location", "Q"),
]
DROP_KEY_STRUCT, DROP_KEY_OFFSETS = _layout(DROP_KEY_FIELDS)

# struct pktpath_drop_slot: a CPU's last drop place and its drops not yet in drop_counts
DROP_SLOT_FIELDS = [
    ("key", f"{DROP_KEY_STRUCT.size}s"),
    ("count", "Q"),
    ("dev", "Q"),
]
DROP_SLOT_STRUCT, DROP_SLOT_OFFSETS = _layout(DROP_SLOT_FIELDS)

EXPR_SCRATCH_FIELDS = [
    ("pkt", f"{EXPR_SNAP}s"),
    ("mem", "16I"),
]
EXPR_SCRATCH_STRUCT, EXPR_SCRATCH_OFFSETS = _layout(EXPR_SCRATCH_FIELDS)
EXPR_MEM_OFFSET = EXPR_SCRATCH_OFFSETS["mem"][0]

CONFIG_FIELDS = [
    ("host6", f"{16 * MAX_HOSTS}s"),
    ("host4", f"{4 * MAX_HOSTS}s"),
    ("ifname", f"{IFNAMSIZ}s"),
    ("netns", "I"),
    ("port", "H"),
    ("proto", "B"),
    ("n_host4", "B"),
    ("n_host6", "B"),
    ("netns_set", "B"),
    ("track", "B"),
    ("trace_set", "B"),
    ("cbpf_len_l2", "H"),
    ("cbpf_len_l3", "H"),
]
CONFIG_STRUCT, CONFIG_OFFSETS = _layout(CONFIG_FIELDS)


# Named tuples and plain classes, not dataclasses, in what a start imports before its programs
# begin to load: the dataclasses module costs ~10 ms of imports (inspect, ast, ...)
class RawEvent(NamedTuple):
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
    stack = (tuple(itertools.takewhile(bool, _STACK.unpack_from(record, _STACK_OFFSET)))
             if hook == _KFREE_SKB else _NO_STACK)
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
