"""The packet decoder on golden packets, and fuzzed with arbitrary bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pktpath.core.event import DATA_OFFSET, EVENT_STRUCT
from pktpath.core.packet import Packet, Recent, decode, tcp_flags_text
from pktpath.core.record import decode_event
from pktpath.host.pinger import checksum

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_A, IP_B = bytes([10, 200, 0, 1]), bytes([10, 200, 0, 2])
IP6_A = bytes.fromhex("fd000200000000000000000000000001")
IP6_B = bytes.fromhex("fd000200000000000000000000000002")


def eth(ethertype: int, dst: bytes = MAC_B) -> bytes:
    return dst + MAC_A + struct.pack("!H", ethertype)


def ipv4(proto: int, payload: bytes, *, ihl: int = 5, frag: int = 0, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 1, frag, ttl, proto,
                         0, IP_A, IP_B)
    return header + b"\0" * (ihl * 4 - 20 if ihl > 5 else 0) + payload


def ipv6(nexthdr: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nexthdr, 64, IP6_A, IP6_B) + payload


ECHO = struct.pack("!BBHHH", 8, 0, 0, 17146, 1) + b"x" * 56


def test_icmp_echo_request_over_ethernet() -> None:
    p = decode(eth(0x0800) + ipv4(1, ECHO), l2=True, ethertype=0)
    assert p == Packet(eth_src="02:00:00:00:00:01", eth_dst="02:00:00:00:00:02", ethertype=0x0800,
                       family="ipv4", src="10.200.0.1", dst="10.200.0.2", ttl=64, ip_proto=1,
                       proto="icmp", icmp_type=8, icmp_code=0, icmp_id=17146, icmp_seq=1)


def test_without_ethernet_header_the_ethertype_says_what_follows() -> None:
    reply = struct.pack("!BBHHH", 129, 0, 0, 7, 2)
    p = decode(ipv6(58, reply), l2=False, ethertype=0x86DD)
    assert (p.family, p.proto, p.src, p.dst) == ("ipv6", "icmpv6", "fd00:200::1", "fd00:200::2")
    assert (p.icmp_type, p.icmp_id, p.icmp_seq, p.eth_src) == (129, 7, 2, None)


def test_vlan_tagged_udp() -> None:
    udp = struct.pack("!HHHH", 40000, 53, 8 + 5, 0) + b"hello"
    frame = eth(0x8100) + struct.pack("!HH", 0x2000 | 42, 0x0800) + ipv4(17, udp)
    p = decode(frame, l2=True, ethertype=0)
    assert p.vlans == (42,)
    assert (p.proto, p.sport, p.dport, p.payload_len) == ("udp", 40000, 53, 5)


def test_qinq_two_tags() -> None:
    frame = (eth(0x88A8) + struct.pack("!HH", 100, 0x8100) + struct.pack("!HH", 200, 0x0806)
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + MAC_A + IP_A + bytes(6) + IP_B)
    p = decode(frame, l2=True, ethertype=0)
    assert p.vlans == (100, 200)
    assert (p.family, p.arp_op, p.src, p.dst, p.arp_sha) == (
        "arp", 1, "10.200.0.1", "10.200.0.2", "02:00:00:00:00:01")


def test_ipv6_extension_headers_lead_to_udp() -> None:
    udp = struct.pack("!HHHH", 1000, 2000, 8, 0)
    hop_by_hop = bytes([60, 0]) + bytes(6)  # next: destination options
    dest_opts = bytes([44, 1]) + bytes(14)  # 16 bytes, next: fragment
    fragment = bytes([17, 0]) + struct.pack("!HI", 0x0001, 99)  # offset 0, more fragments
    p = decode(eth(0x86DD) + ipv6(0, hop_by_hop + dest_opts + fragment + udp), True, 0)
    assert (p.proto, p.sport, p.dport, p.fragment, p.truncated) == ("udp", 1000, 2000, False, False)


def test_later_fragment_has_no_ports() -> None:
    p = decode(eth(0x0800) + ipv4(17, b"\x01\x02\x03\x04", frag=185), True, 0)
    assert (p.proto, p.fragment, p.sport) == ("udp", True, None)


def test_tcp_syn_ack() -> None:
    tcp = struct.pack("!HHIIBBHHH", 8080, 43512, 1000, 2000, 5 << 4, 0x12, 65535, 0, 0)
    p = decode(eth(0x0800) + ipv4(6, tcp), True, 0)
    assert (p.sport, p.dport, p.tcp_seq, p.tcp_ack, tcp_flags_text(p.tcp_flags or 0)) == (
        8080, 43512, 1000, 2000, "S.")


def test_tcp_flags_in_tcpdump_notation() -> None:
    assert [tcp_flags_text(f) for f in (0x02, 0x12, 0x18, 0x11, 0x04, 0x14, 0)] == [
        "S", "S.", "P.", "F.", "R", "R.", "none"]


def test_truncated_ipv4_keeps_what_it_has() -> None:
    p = decode(eth(0x0800) + ipv4(1, ECHO)[:10], True, 0)
    assert (p.family, p.src, p.truncated) == ("ipv4", None, True)


def test_ihl_below_five_is_flagged() -> None:
    p = decode(eth(0x0800) + ipv4(6, b"", ihl=3) + bytes(8), True, 0)
    assert (p.src, p.sport, p.truncated) == ("10.200.0.1", None, True)


def test_ip_options_move_the_transport_header() -> None:
    udp = struct.pack("!HHHH", 7, 9, 8, 0)
    p = decode(eth(0x0800) + ipv4(17, udp, ihl=7), True, 0)
    assert (p.sport, p.dport) == (7, 9)


def test_unknown_ethertype() -> None:
    p = decode(eth(0x88CC) + b"lldp", True, 0)
    assert (p.family, p.ethertype, p.truncated) == (None, 0x88CC, False)


def test_checksum_of_an_echo_request_verifies() -> None:
    from pktpath.host.pinger import echo_request

    assert checksum(echo_request(1, 2, v6=False)) == 0


# -- fuzzing ------------------------------------------------------------------------------

ethertypes = st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, 0x1234])


@settings(max_examples=2000)
@given(data=st.binary(max_size=200), l2=st.booleans(), ethertype=ethertypes)
def test_decoder_never_raises_on_arbitrary_bytes(data: bytes, l2: bool, ethertype: int) -> None:
    decode(data, l2, ethertype)


@settings(max_examples=2000)
@given(ethertype=ethertypes, proto=st.sampled_from([1, 6, 17, 58, 0, 43, 44, 60, 51, 255]),
       tail=st.binary(max_size=120), cut=st.integers(0, 200))
def test_decoder_on_plausible_headers_with_random_tails(ethertype: int, proto: int, tail: bytes,
                                                        cut: int) -> None:
    if ethertype == 0x86DD:
        frame = eth(ethertype) + ipv6(proto, tail)
    else:
        frame = eth(ethertype) + ipv4(proto, tail)
    p = decode(frame[:cut], True, 0)
    if cut >= len(frame) and p.family in ("ipv4", "ipv6"):
        assert p.src is not None


@settings(max_examples=500)
@given(record=st.binary(min_size=DATA_OFFSET, max_size=EVENT_STRUCT.size + 16))
def test_event_records_decode_or_say_why(record: bytes) -> None:
    event = decode_event(record)
    assert len(event.data) <= len(record) - DATA_OFFSET


def test_short_event_record_is_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="expected at least"):
        decode_event(b"\0" * (DATA_OFFSET - 1))


@settings(max_examples=500)
@given(data=st.binary(max_size=64))
def test_flow_decoder_never_raises(data: bytes) -> None:
    from pktpath.core.packet import from_flow

    p = from_flow(data)
    assert p.truncated or p.family in ("ipv4", "ipv6")


@given(frames=st.lists(st.tuples(st.binary(max_size=80), st.booleans(), ethertypes),
                       max_size=40))
def test_recent_packets_decode_as_decode_does_and_each_once(
        frames: list[tuple[bytes, bool, int]]) -> None:
    """The tracer's decoder remembers the packets it decoded last (one packet comes at
    several hooks in a row): the same fields as decode(), one Packet for the same bytes."""
    recent = Recent(memory=8)
    for data, l2, ethertype in frames + frames[-3:]:  # repeats: remembered or decoded anew
        packet = recent(data, l2, ethertype)
        assert packet == decode(data, l2, ethertype)
        assert recent(data, l2, ethertype) is packet
