"""How hops are written: one text line, or one JSON object, per hop.

Text: ``[netns name]        ifname what src -> dst`` (the inode where nothing names it). JSON
keys are documented in README.md; a key is absent when it does not apply.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii as _quote  # a str as json.dumps writes it
from typing import Any

from pktpath.core.event import CtNat, Hook
from pktpath.core.fate import Fate
from pktpath.core.packet import Packet, tcp_flags_text
from pktpath.core.tracer import Hop

ICMP_TYPES = {
    1: {3: "unreachable", 4: "source-quench", 5: "redirect", 11: "time-exceeded",
        12: "parameter-problem", 13: "timestamp", 14: "timestamp-reply"},
    58: {1: "unreachable", 2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem",
         133: "router-solicitation", 134: "router-advertisement",
         135: "neighbor-solicitation", 136: "neighbor-advertisement"},
}
ARP_OPS = {1: "request", 2: "reply"}


def describe(p: Packet, addresses: Mapping[str, str] | None = None) -> str:
    """What the packet is, after the interface column; addresses names some addresses (a
    Service's ClusterIP as ``svc shop/db``)."""
    if addresses and (p.src in addresses or p.dst in addresses):
        p = replace(p, src=addresses.get(p.src or "", p.src),
                    dst=addresses.get(p.dst or "", p.dst))
    if p.family == "arp":
        if p.arp_op == 1:
            return f"arp who-has {p.dst} tell {p.src}"
        if p.arp_op == 2:
            return f"arp reply {p.src} is-at {p.arp_sha}"
        return f"arp op {p.arp_op} {p.src} -> {p.dst}"
    if p.family is None:
        return f"ethertype 0x{p.ethertype or 0:04x}"
    if p.ip_proto in (1, 58) and p.icmp_type is not None:
        echo = p.echo
        if echo and p.icmp_id is not None and p.icmp_seq is not None:
            return f"{echo:>7} #{p.icmp_id}.{p.icmp_seq:03d} {p.src} -> {p.dst}"
        kind = ICMP_TYPES[p.ip_proto].get(p.icmp_type, f"type {p.icmp_type}")
        return f"{p.proto} {kind} code {p.icmp_code} {p.src} -> {p.dst}"
    if p.sport is not None and p.dport is not None:
        src, dst = _endpoint(p.src, p.sport), _endpoint(p.dst, p.dport)
        if p.ip_proto == 6 and p.tcp_flags is not None:
            return f"tcp {src} -> {dst} [{tcp_flags_text(p.tcp_flags)}]"
        return f"{p.proto} {src} -> {dst} len {p.payload_len}"
    return f"{p.proto} {p.src} -> {p.dst}" + (" fragment" if p.fragment else "")


def _endpoint(addr: str | None, port: int) -> str:
    return f"[{addr}]:{port}" if addr and ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True)
class Rewrite:
    """A packet's addresses or ports changed between two of its hops (NAT): which ones
    (``DNAT``, ``SNAT`` or ``SNAT+DNAT``), as ``address:port`` before and after."""

    kind: str
    changes: tuple[tuple[str, str, str], ...]  # (SNAT or DNAT, before, after)

    @property
    def text(self) -> str:
        """``DNAT 10.200.30.5:80 -> 10.200.20.2:80`` (each change, comma-separated)."""
        return ", ".join(f"{kind} {before} -> {after}" for kind, before, after in self.changes)


class Rewrites:
    """Notices when a packet's addresses or ports change between two of its hops (NAT).

    A packet is known by its identity (its first skb's address), which the kernel reuses for
    a later packet once this one is freed: a free ends the packet here, a packet's first hop
    (flagged by the kernel) starts one, and a hop whose protocol or ICMP id/sequence differs
    (NAT changes neither) is another packet.
    """

    def __init__(self, memory: int = 4096) -> None:
        self._last: OrderedDict[int, Packet] = OrderedDict()
        self._memory = memory

    def __call__(self, hop: Hop) -> Rewrite | None:
        """What changed since the packet's previous hop, or None when nothing did."""
        p, packet = hop.packet, hop.event.packet
        if not packet or p.src is None:
            return None
        before = self._last.pop(packet, None)
        if hop.event.first:
            before = None  # a new packet that took a freed one's identity
        if hop.fate is None:
            self._last[packet] = p
            if len(self._last) > self._memory:
                self._last.popitem(last=False)
        if before is None or before is p:  # the same bytes: one Packet (packet.Recent)
            return None
        was, now = _identity(before), _identity(p)
        if was == now or was[4:] != now[4:]:
            return None
        changes = tuple(
            (kind, _endpoint_text(a), _endpoint_text(b))
            for kind, a, b in (("SNAT", was[:2], now[:2]), ("DNAT", was[2:4], now[2:4]))
            if a != b)
        return Rewrite("+".join(kind for kind, _, _ in changes), changes)


def _identity(p: Packet) -> tuple[object, ...]:
    """Source and destination (address, port), then what NAT leaves alone: protocol, ICMP id
    and sequence."""
    return (p.src, p.sport, p.dst, p.dport, p.ip_proto, p.icmp_id, p.icmp_seq)


def _endpoint_text(endpoint: tuple[object, ...]) -> str:
    addr, port = endpoint
    return _endpoint(str(addr), port) if isinstance(port, int) else str(addr)


class Connections:
    """Numbers the connections followed through NAT (1, 2, ...) in the order they appear: the
    kernel's identity of one is an address, meaningless to a reader."""

    def __init__(self, memory: int = 4096) -> None:
        self._numbers: OrderedDict[int, int] = OrderedDict()
        self._next = 1
        self._memory = memory

    def __call__(self, hop: Hop) -> int | None:
        """The hop's connection number, None when it belongs to no tracked connection."""
        conn = hop.event.conn
        if not conn:
            return None
        number = self._numbers.get(conn)
        if number is None:
            number = self._numbers[conn] = self._next
            self._next += 1
            if len(self._numbers) > self._memory:
                self._numbers.popitem(last=False)
        return number


def text_line(hop: Hop, latency: bool = False, rewrite: Rewrite | None = None,
              netns_name: str | None = None, conn: int | None = None,
              addresses: Mapping[str, str] | None = None) -> str:
    """The hop as one line of text; a free ends with DROPPED (why) or delivered.

    With latency, the time since the packet's first hop follows the addresses (+0.021ms); a
    rewrite (``DNAT 10.200.30.5:80 -> 10.200.20.2:80``) is marked after them, then the
    connection the packet belongs to (``conn 1``), and an encapsulated packet shows its tunnel.
    """
    e = hop.event
    line = (f"[{netns_name or e.netns:>12}] {e.ifname or '-':>16} "
            f"{describe(hop.packet, addresses)}")
    tunnel = hop.packet.tunnel
    if tunnel is not None:
        line += f" (in {tunnel.type} vni {tunnel.vni} {tunnel.src} -> {tunnel.dst})"
    if rewrite:
        line += f"  {rewrite.text}"
    if conn is not None:
        line += f"  conn {conn}"
    if latency and hop.since_first_ns is not None:
        line += f" +{hop.since_first_ns / 1e6:.3f}ms"
    if hop.fate is not None:
        if hop.fate.drop:
            line += f"  DROPPED {hop.fate.reason}"
        else:
            line += "  delivered"
        if hop.fate.explain:
            line += f" ({hop.fate.explain})"
    return line


# The PacketTrace status carries some of a hop's JSON keys, named as Kubernetes spells them:
# a status hop is the JSON object through this map (plus where and which probe), never a
# second serialiser
STATUS_KEYS = {"netns_name": "netns", "netns": "netnsInode", "ifname": "interface",
               "hook": "hook", "drop": "drop", "drop_reason": "dropReason",
               "location": "location", "explain": "explain"}


def status_object(hop: Hop, netns_name: str) -> dict[str, Any]:
    """The hop's keys of a PacketTrace status hop (:data:`STATUS_KEYS`)."""
    obj = json_object(hop, netns_name=netns_name)
    return {STATUS_KEYS[key]: value for key, value in obj.items() if key in STATUS_KEYS}


# "SNAT+DNAT" and the like, once: iterating the flags for every hop costs more than the rest
CT_NAT_TEXT = {nat: "+".join(f.name or "" for f in CtNat if f in nat) or None
               for nat in (CtNat(i) for i in range(4))}


# Hook numbers to their tracepoint names, once (an enum lookup per hop costs more)
HOOK_NAMES = {hook.value: hook.tracepoint for hook in Hook}
_encode = json.JSONEncoder(separators=(",", ":")).encode  # the nested objects, rare


def json_line(hop: Hop, rewrite: Rewrite | None = None,
              netns_name: str | None = None, conn: int | None = None,
              addresses: Mapping[str, str] | None = None,
              last: LastKeys | None = None) -> str:
    """The hop as one line of JSON, the one serialisation of a hop (keys documented in
    README.md, absent when they do not apply); addresses names some addresses (``src_name``,
    ``dst_name``); last remembers the keys of the packet and the fate it wrote last (a
    stream's writer keeps one: a packet's hops come in a row, a flood's frees share a fate).

    Written as text, not built as a dict and encoded: ~4 times faster, and a flood's every
    event comes through here. Strings that come from outside pktpath (interface, namespace and
    Service names, kernel symbols) are quoted and escaped as json quotes them; the rest are
    numbers, addresses and pktpath's own words.
    """
    e, p = hop.event, hop.packet
    hook = HOOK_NAMES.get(e.hook) or f"hook-{e.hook}"
    named = f',"netns_name":{_quote(netns_name)}' if netns_name else ""
    # 0x and 16 hex digits each: what hex() writes for a kernel address, 3 times faster
    ids = (f'"skb":"{hex(e.skb)}","packet":"{hex(e.packet)}"' if (e.skb & e.packet) >> 60
           else f'"skb":"0x{e.skb:016x}","packet":"0x{e.packet:016x}"')
    link, upper = (last.packet if last else _packet_keys)(p, e.protocol, addresses)
    line = (f'{{"time_ns":{e.time_ns},"hook":"{hook}","netns":{e.netns}{named},'
            f'"ifindex":{e.ifindex},"ifname":{_quote(e.ifname)},{ids},"cpu":{e.cpu},'
            f'"len":{e.len}{link}')
    vlan = e.vlan_tci & 0x0FFF if e.vlan_tci is not None else (p.vlans[0] if p.vlans else None)
    if vlan is not None:
        line += f',"vlan":{vlan}'
    line += upper
    if hop.since_first_ns is not None:
        line += f',"since_first_ns":{hop.since_first_ns}'
    if rewrite:
        nat = [{"type": kind, "from": before, "to": after}
               for kind, before, after in rewrite.changes]
        line += f',"rewrite":"{rewrite.kind}","nat":{_encode(nat)}'
    if conn is not None:
        line += f',"conn":{conn}'
    if e.ct_state:
        line += f',"ct_state":"{e.ct_state}","ct_zone":{e.ct_zone},"ct_mark":{e.ct_mark}'
    if e.ct_nat:
        line += f',"ct_nat":"{CT_NAT_TEXT[e.ct_nat]}"'
    if p.tunnel is not None:
        t = p.tunnel
        line += ',"tunnel":' + _encode({"type": t.type, "vni": t.vni, "src": t.src,
                                        "dst": t.dst})
    if hop.route is not None:
        r = hop.route
        line += ',"route":' + _encode({k: v for k, v in (
            ("table", r.table), ("interface", r.interface), ("gateway", r.gateway),
            ("error", r.error)) if v})
    if hop.fate is not None:
        line += last.fate(hop.fate) if last else _fate(hop.fate)
    return line + "}"


def _packet_keys(p: Packet, protocol: int,
                 addresses: Mapping[str, str] | None) -> tuple[str, str]:
    """A packet's own keys, in two parts (the hop's vlan goes between them): family, eth_src
    and eth_dst; then proto, src, dst and their names, ttl, ports, TCP flags, ICMP, ARP,
    fragment and truncated, those that apply (protocol: the hop's ethertype, for a packet
    of another family)."""
    family = p.family or f"ethertype-0x{p.ethertype or protocol:04x}"
    link = f',"family":"{family}"'
    if p.eth_src is not None:
        link += f',"eth_src":"{p.eth_src}","eth_dst":"{p.eth_dst}"'
    upper = f',"proto":"{p.proto}"' if p.proto is not None else ""
    if p.src is not None:
        upper += f',"src":"{p.src}"'
        if addresses and p.src in addresses:
            upper += f',"src_name":{_quote(addresses[p.src])}'
    if p.dst is not None:
        upper += f',"dst":"{p.dst}"'
        if addresses and p.dst in addresses:
            upper += f',"dst_name":{_quote(addresses[p.dst])}'
    if p.ttl is not None:
        upper += f',"ttl":{p.ttl}'
    if p.sport is not None:
        upper += f',"sport":{p.sport},"dport":{p.dport}'
    if p.tcp_flags is not None:
        upper += f',"tcp_flags":"{tcp_flags_text(p.tcp_flags)}"'
    if p.icmp_type is not None:
        upper += f',"icmp_type":{p.icmp_type},"icmp_code":{p.icmp_code}'
        if p.icmp_id is not None:
            upper += f',"icmp_id":{p.icmp_id},"icmp_seq":{p.icmp_seq}'
    if p.arp_op is not None:
        op = ARP_OPS.get(p.arp_op)
        upper += f',"arp_op":"{op}"' if op else f',"arp_op":{p.arp_op}'
    if p.fragment:
        upper += ',"fragment":true'
    if p.truncated:
        upper += ',"truncated":true'
    return link, upper


class LastKeys:
    """The JSON keys of the packet and of the fate written last, remembered: one packet's hops
    come in a row and share one Packet (packet.Recent), and a flood's frees share a Fate
    (fate.FateJudge); neither is changed once made. A flood's packet is then written once
    for its three hops, and its fate once for all its frees."""

    __slots__ = ("_addresses", "_fate", "_fate_keys", "_keys", "_packet", "_protocol")

    def __init__(self) -> None:
        self._packet: Packet | None = None
        self._protocol = -1
        self._addresses: Mapping[str, str] | None = None
        self._keys = ("", "")
        self._fate: Fate | None = None
        self._fate_keys = ""

    def packet(self, p: Packet, protocol: int,
               addresses: Mapping[str, str] | None) -> tuple[str, str]:
        """What _packet_keys(p, protocol, addresses) returns."""
        if p is not self._packet or protocol != self._protocol or addresses is not self._addresses:
            self._keys = _packet_keys(p, protocol, addresses)
            self._packet, self._protocol, self._addresses = p, protocol, addresses
        return self._keys

    def fate(self, fate: Fate) -> str:
        """What _fate(fate) returns."""
        if fate is not self._fate:
            self._fate_keys, self._fate = _fate(fate), fate
        return self._fate_keys


def _fate(fate: Fate) -> str:
    """A free's keys: drop, drop_reason, location, explain, nf_rule, icmp_sent."""
    keys = ',"drop":true' if fate.drop else ',"drop":false'
    for key, text in (("drop_reason", fate.reason), ("location", fate.location),
                      ("explain", fate.explain)):
        if text is not None:
            keys += f',"{key}":{_quote(text)}'
    rule = fate.nf_rule
    if rule is not None:
        keys += ',"nf_rule":' + _encode({"family": rule.family, "table": rule.table,
                                         "chain": rule.chain, "handle": rule.handle,
                                         "rule": rule.rule, "verdict": rule.verdict})
    sent = fate.icmp_sent
    if sent is not None:
        keys += ',"icmp_sent":' + _encode({"type": sent.type, "code": sent.code, "to": sent.to,
                                           **({"mtu": sent.mtu} if sent.mtu else {}),
                                           "text": sent.text})
    return keys


def json_object(hop: Hop, rewrite: Rewrite | None = None,
                netns_name: str | None = None, conn: int | None = None,
                addresses: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The hop's :func:`json_line` as a dict (a PacketTrace status hop is made from it)."""
    obj: dict[str, Any] = json.loads(json_line(hop, rewrite, netns_name, conn, addresses))
    return obj
