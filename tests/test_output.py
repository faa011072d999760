"""Text lines and JSON objects for hops, on synthetic events."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pktpath.core.event import EVENT_FIELDS, EVENT_STRUCT, STACK_DEPTH, EventFlag, Hook
from pktpath.core.tracer import hop_from_record
from pktpath.view.hops import json_object, text_line
from test_packet import ECHO, eth, ipv4, ipv6


def record(frame: bytes, *, netns: int = 4026531957, ifname: str | bytes = "docker0",
           hook: Hook = Hook.NET_DEV_QUEUE, flags: int = EventFlag.L2, protocol: int = 0x0800,
           vlan_tci: int = 0, **fields: object) -> bytes:
    values: dict[str, object] = {
        "time_ns": 123456789, "skb": 0xFFFF888012345678, "packet": 0xFFFF888012345678,
        "stack": [0] * STACK_DEPTH, "netns": netns, "ifindex": 3, "len": len(frame), "cpu": 1,
        "cap_len": len(frame), "protocol": struct.unpack("<H", struct.pack("!H", protocol))[0],
        "vlan_tci": vlan_tci, "hook": hook, "flags": flags,
        "ifname": ifname if isinstance(ifname, bytes) else ifname.encode(),
        "data": frame, **fields}
    packed: list[object] = []
    for name, code in EVENT_FIELDS:
        value = values.get(name, b"" if code.endswith("s") else 0)
        packed.extend(value if isinstance(value, list) else [value])
    return EVENT_STRUCT.pack(*packed)


def test_echo_request_line_is_the_articles() -> None:
    hop = hop_from_record(record(eth(0x0800) + ipv4(1, ECHO)))
    assert text_line(hop) == (
        "[  4026531957]          docker0 request #17146.001 10.200.0.1 -> 10.200.0.2")


def test_echo_reply_line() -> None:
    reply = struct.pack("!BBHHH", 0, 0, 0, 17146, 1)
    hop = hop_from_record(record(eth(0x0800) + ipv4(1, reply), netns=4026532258, ifname="eth0"))
    assert text_line(hop) == (
        "[  4026532258]             eth0   reply #17146.001 10.200.0.1 -> 10.200.0.2")


def test_tcp_line_has_ports_and_flags() -> None:
    tcp = struct.pack("!HHIIBBHHH", 43512, 80, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    hop = hop_from_record(record(eth(0x0800) + ipv4(6, tcp), ifname="eth0"))
    assert text_line(hop).endswith(" eth0 tcp 10.200.0.1:43512 -> 10.200.0.2:80 [S]")


def test_ipv6_udp_line_brackets_addresses() -> None:
    udp = struct.pack("!HHHH", 5353, 53, 12, 0) + b"abcd"
    hop = hop_from_record(record(eth(0x86DD) + ipv6(17, udp)))
    assert text_line(hop).endswith("udp [fd00:200::1]:5353 -> [fd00:200::2]:53 len 4")


def test_json_has_the_documented_keys_and_only_those_that_apply() -> None:
    obj = json_object(hop_from_record(record(eth(0x0800) + ipv4(1, ECHO))))
    assert obj == {
        "time_ns": 123456789, "hook": "net_dev_queue", "netns": 4026531957, "ifindex": 3,
        "ifname": "docker0", "skb": "0xffff888012345678", "packet": "0xffff888012345678",
        "cpu": 1, "len": 98,
        "family": "ipv4", "eth_src": "02:00:00:00:00:01", "eth_dst": "02:00:00:00:00:02",
        "proto": "icmp", "src": "10.200.0.1", "dst": "10.200.0.2", "ttl": 64,
        "icmp_type": 8, "icmp_code": 0, "icmp_id": 17146, "icmp_seq": 1,
    }


def test_json_of_a_packet_without_ethernet_with_an_offloaded_vlan_tag() -> None:
    udp = struct.pack("!HHHH", 1, 2, 8, 0)
    obj = json_object(hop_from_record(record(
        ipv4(17, udp), flags=EventFlag.VLAN, vlan_tci=0x2000 | 7, hook=Hook.NETIF_RECEIVE_SKB)))
    assert obj["hook"] == "netif_receive_skb"
    assert (obj["vlan"], obj["sport"], obj["dport"]) == (7, 1, 2)
    assert "eth_src" not in obj and "icmp_type" not in obj


def test_vxlan_is_decoded_both_ways() -> None:
    inner = eth(0x0800) + ipv4(1, ECHO)
    vxlan = bytes([0x08, 0, 0, 0, 0, 0, 1, 0]) + inner
    udp = struct.pack("!HHHH", 51234, 8472, 8 + len(vxlan), 0) + vxlan
    obj = json_object(hop_from_record(record(eth(0x0800) + ipv4(17, udp), ifname="eth0")))
    assert (obj["proto"], obj["icmp_type"], obj["src"], obj["dst"]) == (
        "icmp", 8, "10.200.0.1", "10.200.0.2")
    assert obj["tunnel"] == {"type": "vxlan", "vni": 1, "src": "10.200.0.1", "dst": "10.200.0.2"}


def test_a_status_hop_is_the_json_object_through_the_key_map() -> None:
    from pktpath.core.fate import Fate
    from pktpath.view.hops import status_object

    hop = hop_from_record(record(eth(0x0800) + ipv4(1, ECHO), netns=4026532258, ifname="eth0",
                                 hook=Hook.KFREE_SKB))
    dropped = dataclasses.replace(hop, fate=Fate(True, "NETFILTER_DROP", "nf_hook_slow",
                                                 "netfilter, ip family, input hook"))
    assert status_object(dropped, "shop/db-1") == {
        "netns": "shop/db-1", "netnsInode": 4026532258, "interface": "eth0",
        "hook": "kfree_skb", "drop": True, "dropReason": "NETFILTER_DROP",
        "location": "nf_hook_slow", "explain": "netfilter, ip family, input hook"}
    assert status_object(hop, "node-a") == {"netns": "node-a", "netnsInode": 4026532258,
                                            "interface": "eth0", "hook": "kfree_skb"}


def test_a_service_address_is_named_where_it_is_known() -> None:
    tcp = struct.pack("!HHIIBBHHH", 43512, 5432, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    hop = hop_from_record(record(eth(0x0800) + ipv4(6, tcp), ifname="eth0"))
    names = {"10.200.0.2": "svc shop/db"}
    assert text_line(hop, addresses=names).endswith(
        " eth0 tcp 10.200.0.1:43512 -> svc shop/db:5432 [S]")
    obj = json_object(hop, addresses=names)
    assert (obj["dst"], obj["dst_name"], "src_name" in obj) == ("10.200.0.2", "svc shop/db",
                                                                False)
    assert "dst_name" not in json_object(hop)


def test_a_tracked_connection_and_its_conntrack_entry_in_json_and_text() -> None:
    tcp = struct.pack("!HHIIBBHHH", 43512, 5432, 1, 0, 5 << 4, 0x12, 65535, 0, 0)
    hop = hop_from_record(record(eth(0x0800) + ipv4(6, tcp), ifname="eth0", conn=0xFFFF1,
                                 ct_state=4, ct_zone=7, ct_mark=0x10, ct_nat=2))
    obj = json_object(hop, conn=1)
    assert {k: obj[k] for k in ("conn", "ct_state", "ct_zone", "ct_mark", "ct_nat")} == {
        "conn": 1, "ct_state": "established-reply", "ct_zone": 7, "ct_mark": 16,
        "ct_nat": "DNAT"}
    assert text_line(hop, conn=1).endswith("[S.]  conn 1")
    plain = json_object(hop_from_record(record(eth(0x0800) + ipv4(6, tcp))))
    assert not {"conn", "ct_state", "ct_zone", "ct_mark", "ct_nat"} & set(plain)


def test_names_from_outside_are_escaped_as_json_escapes_them() -> None:
    import json

    from pktpath.view.hops import json_line

    udp = struct.pack("!HHHH", 1, 2, 8, 0)
    hop = hop_from_record(record(eth(0x0800) + ipv4(17, udp), ifname='a"b\\c\x01d'))
    names = {"10.200.0.2": 'svc "shop"/db\u00e9'}
    line = json_line(hop, netns_name="shop/web-0\u2028\n", addresses=names)
    assert line.isascii()  # as json.dumps writes (ensure_ascii), one line
    obj = json.loads(line)
    assert (obj["ifname"], obj["netns_name"], obj["dst_name"]) == (
        'a"b\\c\x01d', "shop/web-0\u2028\n", 'svc "shop"/db\u00e9')


def test_a_streams_writer_writes_each_hop_as_json_line_alone() -> None:
    """The writer remembers the keys of the packet and the fate it wrote last (a packet's
    hops share one Packet, a flood's frees one Fate): each line is still json_line's."""
    from pktpath.cli.stream import formatter
    from pktpath.core.fate import FateJudge
    from pktpath.core.packet import Recent
    from pktpath.core.symbols import Symbols
    from pktpath.view.hops import json_line

    udp = eth(0x0800) + ipv4(17, struct.pack("!HHHH", 1, 2, 8, 0))
    other = udp[:-12] + bytes([10, 200, 0, 9]) + udp[-8:]  # another destination
    arp = eth(0x0806) + bytes.fromhex("0001080006040001") + bytes(20)
    free = {"hook": Hook.KFREE_SKB, "location": 0x10}
    records = [record(udp, packet=1), record(udp, packet=1, hook=Hook.NETIF_RECEIVE_SKB,
                                             ifname="eth0"),
               record(udp, packet=1, reason=2, **free), record(other, packet=2),
               record(other, packet=2, reason=2, **free), record(other, packet=3, reason=3,
                                                                 **free),
               record(arp, packet=4, protocol=0x0806), record(udp, packet=5, vlan_tci=7),
               record(udp, packet=5, reason=3, **free)]
    judge = FateJudge({2: "NO_SOCKET", 3: "NOT_SPECIFIED"}, Symbols("/nonexistent"))
    packets = Recent()
    hops = [hop_from_record(raw, judge, None, packets) for raw in records]
    assert hops[0] and hops[1] and hops[0].packet is hops[1].packet  # shared: remembered
    assert hops[2] and hops[4] and hops[2].fate is hops[4].fate
    write = formatter(True)
    lines = [write(hop) for hop in hops if hop]
    assert lines == [json_line(hop) for hop in hops if hop]
    assert len(set(lines)) == len(lines) == 9


# every key a hop's JSON may have (README.md documents them)
JSON_KEYS = {
    "time_ns", "hook", "netns", "netns_name", "ifindex", "ifname", "skb", "packet", "cpu", "len",
    "family", "eth_src", "eth_dst", "vlan", "proto", "src", "src_name", "dst", "dst_name", "ttl",
    "sport", "dport", "tcp_flags", "icmp_type", "icmp_code", "icmp_id", "icmp_seq", "arp_op",
    "fragment", "truncated", "since_first_ns", "rewrite", "nat", "conn", "ct_state", "ct_zone",
    "ct_mark", "ct_nat", "tunnel", "route", "drop", "drop_reason", "location", "explain",
    "nf_rule", "icmp_sent"}


@settings(max_examples=400)
@given(frame=st.binary(max_size=120), hook=st.sampled_from(list(Hook)),
       flags=st.integers(0, 255), skb=st.integers(0, 2**64 - 1),
       packet=st.integers(0, 2**64 - 1), ct=st.tuples(st.integers(0, 255), st.integers(0, 3)),
       ifname=st.binary(max_size=16))
def test_any_record_is_written_as_valid_json_and_a_line(
        frame: bytes, hook: Hook, flags: int, skb: int, packet: int, ct: tuple[int, int],
        ifname: bytes) -> None:
    import json

    from pktpath.cli.stream import formatter
    from pktpath.core.fate import FateJudge
    from pktpath.core.latency import SinceFirst
    from pktpath.core.symbols import Symbols

    raw = record(frame, hook=hook, flags=flags, skb=skb, packet=packet, ct_state=ct[0],
                 ct_nat=ct[1], ifname=ifname, conn=skb & 1)
    judge = FateJudge({2: "NO_SOCKET"}, Symbols("/nonexistent"))
    for hop in (hop_from_record(raw), hop_from_record(raw, judge, SinceFirst())):
        if hop is None:
            continue
        obj = json.loads(formatter(True, names=lambda inode: f'ns "{inode}"')(hop))
        assert set(obj) <= JSON_KEYS
        assert (obj["skb"], obj["packet"]) == (f"0x{skb:016x}", f"0x{packet:016x}")
        assert obj["ifname"] == hop.event.ifname
        assert formatter(False)(hop).startswith("[")  # and no error


def test_a_reads_lines_are_written_at_once_in_order_before_a_gap() -> None:
    import io
    import threading

    from pktpath.cli.stream import run

    hop = hop_from_record(record(eth(0x0800) + ipv4(1, ECHO)))

    class Reads:
        """Two reads of three hops, each followed by 2 events lost (stopping: each tick then
        checks for losses)."""

        lost_now = 0

        def follow(self, stop: threading.Event, on_hop: Any, tick: Any) -> None:
            stop.set()
            for _ in range(2):
                for _ in range(3):
                    on_hop(hop)
                self.lost_now += 2
                tick()

        def lost(self) -> int:
            return self.lost_now

    class Out(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    out = Out()
    result = run(Reads(), threading.Event(), out, io.StringIO(),  # type: ignore[arg-type]
                 as_json=True)
    kinds = ["gap" if '"gap"' in line else "hop" for line in out.getvalue().splitlines()]
    assert kinds == ["hop"] * 3 + ["gap"] + ["hop"] * 3 + ["gap"]
    assert out.writes == 4  # a write per read's lines and one per gap, not one per line
    assert (result.shown, result.lost) == (6, 4)
