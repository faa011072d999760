"""The fate of a packet the kernel freed: dropped (why, in words), or delivered after all.

``skb:kfree_skb`` fires whenever the kernel frees a packet with a reason, and not every such
free loses a packet. pktpath decides by evidence, and these are the rules (README "Drops"):

1. ``QUEUE_PURGE``: a socket's queue was purged (an ICMP error handed to the sender's error
   queue, a closing socket). Not a drop.
2. ``NO_SOCKET`` of an ICMP echo reply whose echo request this trace saw leave (same identifier
   and sequence, addresses reversed): a raw socket (ping) received a copy, the original found no
   ICMP socket. Not a drop: delivered.
3. Anything else is a drop, at the hop where it happened, with the kernel's reason and, where
   pktpath knows more than the reason, an explanation: which netfilter hook (from the kernel
   stack), TTL expired, fragmentation needed, and so on.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pktpath.core.packet import Packet
from pktpath.core.symbols import Symbols

# Functions whose frame, just above nf_hook_slow, tells which netfilter hook ran.
NETFILTER_HOOKS = {
    "ip_rcv": "prerouting", "ip_rcv_core": "prerouting", "ipv6_rcv": "prerouting",
    "ip_local_deliver": "input", "ip6_input": "input",
    "ip_forward": "forward", "ip6_forward": "forward",
    "__ip_local_out": "output", "ip_local_out": "output", "__ip6_local_out": "output",
    "ip6_local_out": "output", "ip_send_skb": "output", "raw_send_hdrinc": "output",
    "rawv6_send_hdrinc": "output", "ip_output": "postrouting", "ip6_output": "postrouting",
    "ip_finish_output": "postrouting",
    "br_handle_frame": "bridge prerouting", "br_handle_frame_finish": "bridge input",
    "br_forward": "bridge forward", "__br_forward": "bridge forward",
    "br_dev_queue_push_xmit": "bridge postrouting", "br_pass_frame_up": "bridge input",
    "arp_rcv": "arp input", "arp_xmit": "arp output",
}
FAMILIES = {"ipv4": "ip", "ipv6": "ip6", "arp": "arp"}

EXPLAIN = {
    "NO_SOCKET": "no socket was listening",
    "PKT_TOO_SMALL": "packet too small",
    "TCP_CSUM": "bad TCP checksum",
    "UDP_CSUM": "bad UDP checksum",
    "OTHERHOST": "not addressed to this host (destination MAC)",
    "IP_CSUM": "bad IP checksum",
    "IP_INHDR": "bad IP header (or TTL expired while forwarding)",
    "IP_RPFILTER": "reverse-path filter: the source is not routed back through this interface",
    "UNICAST_IN_L2_MULTICAST": "unicast IP in a link-layer multicast frame",
    "IP_NOPROTO": "no handler for this IP protocol",
    "SOCKET_FILTER": "a socket filter dropped it",
    "SOCKET_RCVBUFF": "the socket's receive buffer was full",
    "PKT_TOO_BIG": "needs fragmentation but DF is set (packet larger than the next link's MTU)",
    "NEIGH_FAILED": "neighbour unreachable (no ARP/ND answer)",
    "NEIGH_QUEUEFULL": "too many packets waiting for the neighbour to answer",
    "IP_OUTNOROUTES": "no route to the destination",
    "IPV6_NOROUTE": "no route to the destination",
    "QDISC_DROP": "dropped by the queueing discipline (qdisc)",
    "TC_INGRESS": "dropped by a tc ingress filter",
    "TC_EGRESS": "dropped by a tc egress filter",
    "XDP": "dropped by an XDP program",
    "DEV_READY": "the device is down",
    "FULL_RING": "the device's ring is full",
    "VXLAN_INVALID_HDR": "bad VXLAN header",
    "VXLAN_VNI_NOT_FOUND": "no VXLAN device for this VNI",
    "TCP_OLD_DATA": "TCP data already received",
    "TCP_INVALID_SEQUENCE": "TCP sequence out of window",
    "TCP_RESET": "TCP reset",
    "NOT_SPECIFIED": "the kernel gave no reason",
}


# Where the reason says nothing (NOT_SPECIFIED), the function that freed the packet often does.
EXPLAIN_BY_LOCATION = {
    "ip_error": "no route: the routing lookup failed (an unreachable, prohibit or blackhole "
                "route); the sender gets an ICMP error",
    "ip6_pkt_drop": "no route: the routing lookup failed; the sender gets an ICMPv6 error",
}


UNREACHABLE_CODES = {0: "network unreachable", 1: "host unreachable",
                     2: "protocol unreachable", 3: "port unreachable",
                     4: "fragmentation needed", 5: "source route failed",
                     9: "network administratively prohibited",
                     10: "host administratively prohibited",
                     13: "communication administratively prohibited"}


def icmp_error_text(kind: int, code: int, mtu: int = 0) -> str:
    """An ICMP error the kernel sent, in words."""
    if kind == 3:
        words = f"destination unreachable ({UNREACHABLE_CODES.get(code, f'code {code}')}"
        return words + (f", next-hop MTU {mtu})" if code == 4 and mtu else ")")
    if kind == 11:
        return "time exceeded (" + ("TTL expired in transit" if code == 0 else
                                    "fragment reassembly") + ")"
    if kind == 12:
        return "parameter problem"
    if kind == 5:
        return "redirect"
    return f"ICMP type {kind} code {code}"


@dataclass(frozen=True)
class IcmpSent:
    """An ICMP error the kernel sent about a packet."""

    type: int
    code: int
    to: str | None
    mtu: int = 0

    @property
    def text(self) -> str:
        """In words, with where it went."""
        to = f" to {self.to}" if self.to else ""
        return f"ICMP {icmp_error_text(self.type, self.code, self.mtu)} sent{to}"


TABLES = {255: "local", 254: "main", 253: "default"}
ROUTE_ERRORS = {113: "unreachable", 13: "prohibit", 22: "blackhole", 101: "no route",
                11: "no route in this table"}


@dataclass(frozen=True)
class Route:
    """A routing decision: which table, where to (or the error)."""

    table: str
    interface: str | None = None
    gateway: str | None = None
    error: str | None = None

    def __str__(self) -> str:
        if self.error:
            return f"{self.error} route (table {self.table})"
        via = f" via {self.gateway}" if self.gateway else ""
        return f"table {self.table}{via} dev {self.interface}"


# fib6 lookups report the route's type instead of an error (RTN_* of rtnetlink.h)
ROUTE6_TYPES = {0: "no route", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}

UNKNOWN = "UNKNOWN"  # the drop reason on a kernel that gives none
ROUTE_WINDOW_NS = 50_000_000  # a lookup belongs to the packet the same CPU handles next


@dataclass(frozen=True)
class NfRule:
    """The rule (or chain policy) that gave a packet its verdict."""

    family: str
    table: str
    chain: str
    verdict: str
    rule: str | None = None  # None: the chain's policy
    handle: int | None = None

    def __str__(self) -> str:
        what = (f"rule handle {self.handle}: {self.rule}" if self.rule is not None
                else f"policy {self.verdict}")
        return f"{self.family} {self.table} {self.chain} {what}"


@dataclass(slots=True)  # not frozen: one per free, made as often as the hop (see RawEvent)
class Fate:
    """What became of a freed packet."""

    drop: bool
    reason: str
    location: str
    explain: str | None = None
    icmp_sent: IcmpSent | None = None
    nf_rule: NfRule | None = None  # with --nf-trace: the nftables rule that decided
    consumed: bool = False  # a free after use that newer kernels report as consume_skb


def _address(raw: bytes, packet: Packet) -> str | None:
    """The next hop in raw (IPv4 in the first 4 bytes), or None when it is all zeros."""
    if not raw.strip(b"\0"):
        return None
    if packet.family == "ipv6" and len(raw) >= 16:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


class FateJudge:
    """Decides the fate of kfree_skb events from the trace's own evidence."""

    def __init__(self, reasons: Mapping[int, str], symbols: Symbols | None = None,
                 memory: int = 4096) -> None:
        self._reasons = reasons
        self._symbols = symbols
        # echo requests and replies seen on their way: (kind, id, sequence, source, dest)
        self._echoes: deque[tuple[str, int, int, str | None, str | None]] = deque(maxlen=memory)
        self._echo_set: set[tuple[str, int, int, str | None, str | None]] = set()
        self._errors: dict[int, IcmpSent] = {}  # by skb address, until its free arrives
        self._routes: dict[tuple[int, str | None, str | None], tuple[int, Route]] = {}
        self._decided: dict[tuple[object, ...], Fate] = {}  # _judge's, for packets not echoes
        self._memory = memory

    @property
    def symbols(self) -> Symbols:
        """/proc/kallsyms, read on first use."""
        if self._symbols is None:
            self._symbols = Symbols()
        return self._symbols

    def observe(self, packet: Packet) -> None:
        """Remember an echo request or reply seen on its way, as evidence for rules 2 and 3."""
        if packet.icmp_id is not None and packet.echo is not None:
            key = (packet.echo, packet.icmp_id, packet.icmp_seq or 0, packet.src, packet.dst)
            if len(self._echoes) == self._echoes.maxlen:
                self._echo_set.discard(self._echoes[0])
            self._echoes.append(key)
            self._echo_set.add(key)

    def _answered(self, packet: Packet, kind: str) -> bool:
        """Whether the echo of the other kind (request for a reply, and back) was seen."""
        return (kind, packet.icmp_id or 0, packet.icmp_seq or 0, packet.dst,
                packet.src) in self._echo_set

    def route_lookup(self, cpu: int, time_ns: int, packet: Packet, table: int, error: int,
                     interface: str, gateway: bytes) -> None:
        """Remember a routing lookup for the packet this CPU handles next."""
        if packet.family == "ipv6":  # error holds the route type
            failed = ROUTE6_TYPES.get(error)
        else:
            errno = (1 << 32) - error if error & 0x80000000 else error  # the u32 of -errno
            failed = ROUTE_ERRORS.get(errno, f"error {errno}") if errno else None
        if failed:  # an error route has no real next hop (IPv6 ones point at lo)
            route = Route(TABLES.get(table, str(table)), error=failed)
        else:
            route = Route(TABLES.get(table, str(table)), interface or None,
                          _address(gateway, packet))
        if len(self._routes) >= self._memory:
            self._routes.pop(next(iter(self._routes)))
        self._routes[(cpu, packet.src, packet.dst)] = (time_ns, route)

    def route_of(self, cpu: int, time_ns: int, packet: Packet) -> Route | None:
        """The routing decision for a packet this CPU handles now, if one was just made."""
        if not self._routes:
            return None  # no lookup waits (routing lookups not traced): the common case
        found = self._routes.pop((cpu, packet.src, packet.dst), None)
        if found is None or time_ns - found[0] > ROUTE_WINDOW_NS:
            return None
        return found[1]

    def icmp_sent(self, skb: int, packet: Packet, type_code: int, mtu: int) -> IcmpSent:
        """Remember that the kernel answered the packet at skb with an ICMP error."""
        sent = IcmpSent(type_code >> 8, type_code & 0xFF, packet.src, mtu)
        if len(self._errors) >= self._memory:
            self._errors.pop(next(iter(self._errors)))
        self._errors[skb] = sent
        return sent

    def judge(self, packet: Packet, reason: int, location: int,
              stack: tuple[int, ...], skb: int = 0, nexthop: bytes = b"",
              route: Route | None = None) -> Fate:
        """The fate of a packet freed with reason at location (with any ICMP error sent, and
        the routing lookup that failed)."""
        fate = self._judge(packet, reason, location, stack)
        if route is not None and route.error and fate.drop:
            fate = replace(fate, explain=f"no route: {route.error} route to {packet.dst} "
                                         f"(table {route.table})")
        if fate.reason == "NEIGH_FAILED":
            neighbour = _address(nexthop, packet) or packet.dst
            fate = replace(fate, explain=f"neighbour {neighbour} unreachable (FAILED: no "
                                         f"{'ND' if packet.family == 'ipv6' else 'ARP'} answer)")
        sent = self._errors.pop(skb, None) if skb else None
        if sent is None:
            return fate
        explain = "; ".join(w for w in (fate.explain, sent.text) if w)
        return Fate(fate.drop, fate.reason, fate.location, explain, sent)

    def _judge(self, packet: Packet, reason: int, location: int,
               stack: tuple[int, ...]) -> Fate:
        if packet.echo is not None:  # the rules on echoes look at what this trace saw
            return self._decide(packet, reason, location, stack)
        # otherwise the fate depends on no more than this, and a flood frees at few places:
        # decided once (a Fate is never changed once made, and hops share it)
        key = (reason, location, stack, packet.family, packet.ttl is not None and packet.ttl <= 1)
        fate = self._decided.get(key)
        if fate is None:
            fate = self._decide(packet, reason, location, stack)
            if len(self._decided) >= self._memory:
                self._decided.clear()
            self._decided[key] = fate
        return fate

    def _decide(self, packet: Packet, reason: int, location: int,
                stack: tuple[int, ...]) -> Fate:
        # a kernel before 5.17 gives no reason (and has no enum skb_drop_reason)
        name = self._reasons.get(reason, f"reason {reason}") if self._reasons else UNKNOWN
        where = self.symbols.name(location)
        if name == "QUEUE_PURGE":
            return Fate(False, name, where, "a socket queue was purged (not a drop)")
        if (name in ("NO_SOCKET", UNKNOWN) and packet.echo == "reply"
                and self._answered(packet, "request")):
            return Fate(False, name, where, "the pinging raw socket received a copy")
        if (name in ("NOT_SPECIFIED", UNKNOWN) and packet.echo == "request"
                and self.symbols.function(location) in ("icmp_rcv", "icmpv6_rcv")
                and self._answered(packet, "reply")):
            # older kernels (6.1, 5.10) free an answered ICMPv6 echo request with kfree_skb
            return Fate(False, name, where, "the kernel answered the echo request",
                        consumed=True)
        return Fate(True, name, where, self._explain(name, packet, stack, location))

    def _explain(self, name: str, packet: Packet, stack: tuple[int, ...],
                 location: int) -> str | None:
        if name == "NETFILTER_DROP":
            hook = self.netfilter_hook(stack)
            family = FAMILIES.get(packet.family or "", "")
            words = ", ".join(w for w in (f"{family} family" if family else "",
                                          f"{hook} hook" if hook else "") if w)
            return f"netfilter, {words}" if words else "netfilter"
        if name == "IP_INHDR" and packet.ttl is not None and packet.ttl <= 1:
            return "TTL expired"
        if name == "NOT_SPECIFIED":
            function = self.symbols.function(location)
            if function in EXPLAIN_BY_LOCATION:
                return EXPLAIN_BY_LOCATION[function]
        return EXPLAIN.get(name)

    def netfilter_hook(self, stack: tuple[int, ...]) -> str | None:
        """Which netfilter hook dropped, from the frame that called nf_hook_slow."""
        functions = [self.symbols.function(address) for address in stack]
        for i, function in enumerate(functions):
            if function == "nf_hook_slow":
                for caller in functions[i + 1:]:
                    if caller in NETFILTER_HOOKS:
                        return NETFILTER_HOOKS[caller]
                return None
        return None
