"""Python mirror of ``bpf/event.h``: the event record and the filter config.

Each layout is a list of (field, struct format) pairs in C order. ``tests/test_event_layout.py``
compares the offsets and sizes derived here with the BTF of the shipped object.
"""

from __future__ import annotations

import enum
import struct

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
    ("track_slots", "I"),
]
CONFIG_STRUCT, CONFIG_OFFSETS = _layout(CONFIG_FIELDS)
