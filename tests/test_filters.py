"""The filter flags: what they accept, what they refuse, and the config the kernel reads."""

from __future__ import annotations

import ipaddress

import pytest
from pktpath.core.errors import UsageError
from pktpath.core.event import CONFIG_OFFSETS, CONFIG_STRUCT, Proto
from pktpath.core.filters import TraceFilter, parse_host, parse_port, parse_proto


def field(config: bytes, name: str) -> bytes:
    offset, size = CONFIG_OFFSETS[name]
    return config[offset:offset + size]


def test_empty_filter_is_all_zero_but_tracking() -> None:
    assert TraceFilter(track=False).config() == bytes(CONFIG_STRUCT.size)
    assert field(TraceFilter().config(), "track") == b"\x01"
    assert TraceFilter().empty and TraceFilter(track=False).empty


def test_config_fields_land_where_the_kernel_reads_them() -> None:
    f = TraceFilter(hosts=(ipaddress.ip_address("10.200.0.2"), ipaddress.ip_address("fd00:200::2")),
                    proto=Proto.UDP, port=53, netns=4026531840, ifname="eth0")
    c = f.config()
    assert field(c, "host4")[:4] == bytes([10, 200, 0, 2])
    assert field(c, "host6")[:16] == ipaddress.ip_address("fd00:200::2").packed
    assert field(c, "n_host4") == b"\x01" and field(c, "n_host6") == b"\x01"
    assert field(c, "port") == (53).to_bytes(2, "little")
    assert field(c, "proto") == bytes([17])
    assert field(c, "netns") == (4026531840).to_bytes(4, "little")
    assert field(c, "ifname") == b"eth0".ljust(16, b"\0")


@pytest.mark.parametrize("text, proto", [("icmp", Proto.ICMP), ("ICMP6", Proto.ICMP6),
                                         ("icmpv6", Proto.ICMP6), ("tcp", Proto.TCP),
                                         ("udp", Proto.UDP), ("arp", Proto.ARP)])
def test_protocol_names(text: str, proto: Proto) -> None:
    assert parse_proto(text) == proto


@pytest.mark.parametrize("call, arg, message", [
    (parse_proto, "sctp", "unknown protocol 'sctp'"),
    (parse_host, "10.200.0", "is not an IPv4 or IPv6 address"),
    (parse_host, "example.com", "host names are not resolved"),
    (parse_port, "0", "is not a port number"),
    (parse_port, "65536", "is not a port number"),
    (parse_port, "http", "is not a port number"),
])
def test_bad_values_say_what_is_wrong(call: object, arg: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call(arg)  # type: ignore[operator]


@pytest.mark.parametrize("kwargs, message", [
    ({"proto": Proto.ICMP, "port": 80}, "--port applies to tcp and udp"),
    ({"proto": Proto.ICMP, "hosts": (ipaddress.ip_address("fd00::1"),)}, "use --proto icmp6"),
    ({"proto": Proto.ICMP6, "hosts": (ipaddress.ip_address("10.0.0.1"),)}, "use --proto icmp"),
    ({"proto": Proto.ARP, "hosts": (ipaddress.ip_address("fd00::1"),)}, "ARP carries IPv4"),
    ({"hosts": tuple(ipaddress.ip_address(f"10.0.0.{i}") for i in range(9))}, "at most 8"),
])
def test_contradictions_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        TraceFilter(**kwargs).checked()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=message):  # nor loaded when made without the check
        TraceFilter(**kwargs).config()  # type: ignore[arg-type]


def test_describe_reads_like_tcpdump() -> None:
    f = TraceFilter(hosts=(ipaddress.ip_address("10.0.0.2"),), proto=Proto.TCP, port=80,
                    ifname="eth0")
    assert f.describe() == "tcp and host 10.0.0.2 and port 80 on eth0"
    assert TraceFilter().describe() == "every packet"
