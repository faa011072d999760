"""--nf-trace without a kernel: the rules it adds and how it reads nftables' trace lines."""

from __future__ import annotations

import ipaddress

import pytest
from pktpath.core.errors import UsageError
from pktpath.core.event import Proto
from pktpath.core.fate import NfRule
from pktpath.core.filters import TraceFilter
from pktpath.core.packet import Packet
from pktpath.host.nftrace import NfTrace, packet_identity, rules_for


def test_rules_select_what_the_filter_selects() -> None:
    flt = TraceFilter(hosts=(ipaddress.ip_address("10.0.0.2"),), proto=Proto.TCP, port=80)
    assert rules_for(flt) == [
        "meta l4proto tcp ip saddr 10.0.0.2 th sport 80",
        "meta l4proto tcp ip saddr 10.0.0.2 th dport 80",
        "meta l4proto tcp ip daddr 10.0.0.2 th sport 80",
        "meta l4proto tcp ip daddr 10.0.0.2 th dport 80"]
    assert rules_for(TraceFilter(hosts=(ipaddress.ip_address("fd00::2"),))) == [
        "ip6 saddr fd00::2", "ip6 daddr fd00::2"]
    assert rules_for(TraceFilter(port=53)) == [
        "meta l4proto { tcp, udp } th sport 53", "meta l4proto { tcp, udp } th dport 53"]
    assert rules_for(TraceFilter()) == [""]
    with pytest.raises(UsageError, match="cannot trace --proto arp"):
        rules_for(TraceFilter(proto=Proto.ARP))


@pytest.mark.parametrize("kind, rest, expected", [
    ("rule", "meta l4proto icmp counter packets 3 bytes 252 drop # handle 2 (verdict drop)",
     NfRule("ip", "filter", "INPUT", "drop", "meta l4proto icmp counter drop", 2)),
    ("rule", "ip daddr 10.0.0.2 meta nftrace set 1 # handle 2 (verdict continue)", None),
    ("policy", "drop ", NfRule("ip", "filter", "INPUT", "drop")),
    ("policy", "accept ", NfRule("ip", "filter", "INPUT", "accept")),
])
def test_trace_lines(kind: str, rest: str, expected: NfRule | None) -> None:
    assert NfTrace._rule("ip", "filter", "INPUT", kind, rest) == expected


def test_rule_in_words() -> None:
    assert str(NfRule("ip", "filter", "INPUT", "drop", "tcp dport 22 drop", 4)) == (
        "ip filter INPUT rule handle 4: tcp dport 22 drop")
    assert str(NfRule("inet", "fw", "input", "drop")) == "inet fw input policy drop"


def test_identity_matches_trace_fields() -> None:
    p = Packet(src="10.0.0.1", dst="10.0.0.2", icmp_id=8290, icmp_seq=1)
    assert packet_identity(p) == ("10.0.0.1", "10.0.0.2", "8290", "1", None, None)
